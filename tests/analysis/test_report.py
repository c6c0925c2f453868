"""vitfer report / write_report on two finished runs."""
from __future__ import annotations

import re
from pathlib import Path

from vitfer.analysis import load_run, most_confused, write_report
from vitfer.cli import main

from analysis_helpers import png_variance


def test_report_of_two_runs(tiny_runs, tmp_path):
    out = tmp_path / "report"
    res = write_report(tiny_runs, out, samples=4)
    names = sorted(p.name for p in res["figures"])
    for tag in ("convit", "resnet"):
        for kind in ("curves", "confusion", "tsne2d", "tsne3d", "attention"):
            assert f"{tag}_{kind}.png" in names
    assert {"convit_gpsa_gating.png", "convit_attention_distance.png", "curves_overlay.png"} <= set(names)
    for p in res["figures"]:
        assert png_variance(p) > 100.0, p.name
    md = res["markdown"].read_text()
    assert set(re.findall(r"\]\((.+?\.png)\)", md)) == set(names)  # every figure shown, none missing
    assert "## Comparison" in md and "| Model (ours) |" in md and "convit_tiny" in md and "resnet18d" in md
    resnet_part = md[md.index("## resnet18d on"):]
    assert md.count("### GPSA gates: what ConViT learned") == 1 and "GPSA" not in resnet_part  # ConViT's only
    page = res["html"].read_text()
    assert page.count("data:image/png;base64,") == len(names) and "<table>" in page


def test_report_cli_one_run(tiny_runs, capsys):
    assert main(["report", str(tiny_runs[1]), "--no-tsne", "--samples", "2"]) == 0
    out = tiny_runs[1] / "report"
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert (out / "resnet_attention.png").is_file() and not (out / "resnet_tsne2d.png").exists()
    assert "figures in" in capsys.readouterr().out


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_most_confused_and_load_run(tiny_runs):
    run = load_run(tiny_runs[0])
    assert run["history"] and len(run["history"]) == 2 and run["label"].startswith("convit_tiny on synthetic")
    pairs = most_confused([[5, 2, 0], [0, 3, 4], [1, 0, 6]], ["a", "b", "c"], k=2)
    assert pairs == [("b", "c", 4, 4 / 7), ("a", "b", 2, 2 / 7)]


def test_report_without_matplotlib_names_the_extra(tiny_runs, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["report", str(tiny_runs[0]), "--out", str(tiny_runs[0] / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'vitfer[plots]'" in err[0]


def test_every_figure_has_a_title_and_a_vector_copy(tiny_runs, tmp_path, monkeypatch):
    """Each figure names the model, dataset, split and test accuracy, and has a PDF beside its PNG."""
    import json

    import vitfer.analysis.plots as plots

    titles = {}
    save = plots.save_figure

    def recording(fig, path, *a, **k):
        sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
        titles[Path(path).name] = sup or " / ".join(ax.get_title() for ax in fig.axes)
        return save(fig, path, *a, **k)

    monkeypatch.setattr(plots, "save_figure", recording)
    res = write_report(tiny_runs, tmp_path / "r", samples=3)
    assert set(titles) == {p.name for p in res["figures"]}
    for run in tiny_runs:
        m = json.loads((run / "metrics.json").read_text())
        acc = f"test accuracy {100 * m['test_accuracy']:.1f}%"
        mine = [n for n in titles if n.startswith(run.name + "_")]
        assert len(mine) >= 5
        for n in mine:
            assert m["model"] in titles[n] and "synthetic faces" in titles[n] and "random split" in titles[n], n
            assert acc in titles[n], (n, titles[n])
    assert "test accuracy in the legend" in titles["curves_overlay.png"]
    for p in res["figures"]:
        pdf = p.with_suffix(".pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, pdf
    md = res["markdown"].read_text()
    assert md.count(".pdf](") == len(res["figures"])
    assert "<a href='convit_attention.pdf'>" in res["html"].read_text()


def test_report_names_the_device_instead_of_an_unnamed_machine(tiny_runs, tmp_path):
    md = write_report(tiny_runs, tmp_path / "r", tsne=False, attention=False)["markdown"].read_text()
    assert "machine named above" not in md
    assert "device `auto` in every run's config" in md and "do not record the machine" in md


def test_report_attention_layer_and_defects_are_said(tiny_runs, tmp_path):
    md = write_report([tiny_runs[1]], tmp_path / "r", tsne=False, samples=3)["markdown"].read_text()
    assert "Grad-CAM, layer1 (8x8)" in md  # resnet18d at 32 px: layer1 is 8x8, layer2 4x4
    md = write_report([tiny_runs[1]], tmp_path / "r4", tsne=False, samples=3, cam_layer="layer4")["markdown"]
    text = md.read_text()  # at 32 px layer4 is 1x1: one value a face, constant: reported, not drawn
    assert "**Defect:** Grad-CAM, layer4 (1x1) is constant" in text and "resnet_attention.png" not in text


def test_report_of_a_cross_validation_folder(tiny_cv, tmp_path, capsys):
    import json

    out = tmp_path / "cvreport"
    assert main(["report", str(tiny_cv), "--out", str(out), "--no-tsne", "--samples", "2"]) == 0
    md = (out / "report.md").read_text()
    summary = json.loads((tiny_cv / "summary.json").read_text())
    acc = summary["accuracy"]
    assert "(cross-validation)" in md and f"{100 * acc['mean']:.1f} +- {100 * acc['std']:.1f}%" in md
    for k in range(3):  # a table row and a section a fold
        assert f"| fold-{k} |" in md and f"synth-cv-fold-{k}_confusion.png" in md
        assert f"synth-cv-fold-{k}_attention.png" in md
    for name in ("synth-cv_folds.png", "synth-cv_confusion_pooled.png", "synth-cv_curves_folds.png"):
        assert (out / name).is_file() and png_variance(out / name) > 100 and (out / name).with_suffix(".pdf").is_file()
    pooled = summary["pooled"]["confusion"]
    assert sum(map(sum, pooled)) == 42  # every image tested once, over the folds
    assert "GPSA" not in md and not list(out.glob("*gpsa*"))  # ViT folds: no gates section, no error
    assert "figures in" in capsys.readouterr().out


def test_unfinished_cross_validation_is_one_clear_error(tiny_cv, tmp_path, capsys):
    import shutil

    cv = tmp_path / "cv"
    shutil.copytree(tiny_cv, cv)
    (cv / "summary.json").unlink()
    (cv / "fold-2" / "metrics.json").unlink()
    assert main(["report", str(cv), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cross-validation folder" in err[0] and "fold-2" in err[0]
