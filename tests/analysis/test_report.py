"""vitfer report / write_report on two finished runs."""
from __future__ import annotations

import re

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
