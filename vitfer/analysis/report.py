"""``vitfer report``: the figures of one or more run folders, and a report that shows them.

    from vitfer.analysis import write_report
    out = write_report(["study/ckplus48/convit_tiny", "study/ckplus48/resnet18d"], "report")
    out["markdown"], out["html"], out["figures"]

For every run: learning curves, the confusion matrix (counts and row-normalised), t-SNE of the
pre-logit test features in 2-D and 3-D, and attention on sample test faces (rollout for ViT and
the hybrid; rollout and attention distances for ConViT; the class tokens'
cross-attention for CrossViT; Grad-CAM for CNNs, at the deepest layer whose map is at least 6x6
for the run's input size, and for the hybrid when its token grid is coarser). For ConViT also
what its GPSA gates learned (:mod:`vitfer.analysis.gates`): a layer x head table, the verdict on
the ConViT paper's finding (later layers less positional), a figure and the numbers as JSON; it
needs the checkpoint only, so it is there with ``attention=False`` too. For several runs
also the learning curves overlaid and a comparison table in the study's format. A
cross-validation folder (``fold-K/`` and summary.json) is reported pooled, then fold by fold.
Every figure is titled with the model, dataset, split and test accuracy and written as a PNG and
a PDF; an attention map that is constant over a face is reported as a defect, not drawn.
``report.md`` links the PNGs (and PDFs); ``report.html`` embeds the PNGs (one self-contained file).

The test set is rebuilt from the run's config (same data, split, fold and seed), so the figures
are of exactly the images the run was tested on.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["load_run", "run_test_set", "write_report", "most_confused", "markdown_to_html", "run_title", "load_cv",
           "is_cv_folder", "has_gpsa_gates"]

_logger = logging.getLogger(__name__)


def load_run(run_dir: Union[str, os.PathLike]) -> dict[str, Any]:
    """A finished run folder's ``config``, ``metrics`` (metrics.json) and ``history`` (one record
    an epoch, from metrics.jsonl), with a ``label`` and ``tag`` (file-name safe)."""
    out = Path(run_dir).expanduser()
    if not out.is_dir():
        raise FileNotFoundError(f"run folder {out} does not exist")
    mfile = out / "metrics.json"
    if not mfile.is_file():
        raise FileNotFoundError(f"{out} holds no finished run (no metrics.json); finish or resume it first")
    try:
        metrics = json.loads(mfile.read_text())
    except ValueError as e:
        raise ValueError(f"{mfile} is not valid JSON ({e})") from e
    history = metrics.get("history") or []
    jl = out / "metrics.jsonl"
    if jl.is_file():
        history = [json.loads(line) for line in jl.read_text().splitlines() if line.strip()] or history
    cfg = metrics.get("config") or {}
    model = metrics.get("model") or cfg.get("model", "model")
    label = f"{model} on {cfg.get('dataset', '?')}"
    if cfg.get("split") in ("kfold", "subject-kfold"):
        label += f" (fold {cfg.get('fold')})"
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{out.parent.name}-{out.name}" if out.name.startswith("fold-") else out.name)
    return {"dir": out, "config": cfg, "metrics": metrics, "history": history, "label": label, "tag": tag}


def run_test_set(run: dict[str, Any], data_dir: Optional[str] = None, device: str = "cpu"):
    """``(model, test_set)`` of a run: its best checkpoint and the test part of its split, rebuilt
    from the run's recorded config as training built it (:func:`vitfer.data.runs.run_data`: the
    run's image size, face crops, split, fold and seed), checked against the test images the run
    recorded, with the model's eval transform."""
    import vitfer
    from vitfer.data import build_transforms
    from vitfer.data.runs import check_split, run_data

    ckpt = run["dir"] / "model.safetensors"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run['dir']} holds no model.safetensors")
    model = vitfer.load(ckpt, map_location=device)
    config = dict(run["config"])
    if data_dir is not None:
        config["data_dir"] = data_dir
    data, split = run_data(config, image_size=int(model.pretrained_cfg["input_size"][-1]))
    check_split(data, split, run["metrics"].get("split_record"), "test")
    test = data.subset(split["test"], transform=build_transforms(model.pretrained_cfg, train=False))
    return model, test


def most_confused(confusion: Sequence[Sequence[int]], class_names: Sequence[str], k: int = 3) -> list[tuple[str, str, int, float]]:
    """The ``k`` largest off-diagonal cells: (true class, predicted class, count, share of the true class)."""
    conf = np.asarray(confusion)
    cells = []
    for i in range(conf.shape[0]):
        for j in range(conf.shape[1]):
            if i != j and conf[i, j] > 0:
                cells.append((class_names[i], class_names[j], int(conf[i, j]), float(conf[i, j] / conf[i].sum())))
    return sorted(cells, key=lambda c: (-c[2], -c[3]))[:k]


_DATASET_NAMES = {"synthetic": "synthetic faces", "ckplus48": "CK+48", "jaffe": "JAFFE", "fer2013": "FER2013"}


def _dataset_name(cfg: dict[str, Any]) -> str:
    ds = cfg.get("dataset", "?")
    if ds == "folder" and cfg.get("data_dir"):
        return Path(str(cfg["data_dir"])).name
    return _DATASET_NAMES.get(ds, str(ds))


def _split_name(cfg: dict[str, Any], fold_dir: Optional[Path] = None) -> str:
    split = cfg.get("split", "?")
    if split in ("kfold", "subject-kfold"):
        named = fold_dir is not None and fold_dir.name.startswith("fold-")
        where = fold_dir.name if named else f"fold {cfg.get('fold')}"
        return f"{split} split, {where} of {cfg.get('n_folds', '?')}"
    return f"{split} split"


def run_title(run: dict[str, Any]) -> str:
    """The title every figure of a run gets: ``model · dataset · split · test accuracy``."""
    m, cfg = run["metrics"], run["config"]
    return (f"{m.get('model') or cfg.get('model', '?')} · {_dataset_name(cfg)} · {_split_name(cfg, run['dir'])} · "
            f"test accuracy {100 * m['test_accuracy']:.1f}%")


def _fig(fig: Any, path: Path, figures: list[Path]) -> str:
    from .plots import save_figure

    save_figure(fig, path)
    figures.append(path)
    fig.clf()
    return path.name


def _show(alt: str, name: str) -> list[str]:
    """A figure in report.md: the PNG, and a link to its vector copy."""
    pdf = Path(name).with_suffix(".pdf").name
    return [f"![{alt}]({name})", "", f"Vector copy: [{pdf}]({pdf}).", ""]


def _attention_lines(run: dict[str, Any], model: Any, test_set: Any, classes: list[str], out: Path,
                     figures: list[Path], *, samples: int, device: str, cam_layer: Optional[str]) -> list[str]:
    from .attention import FLAT_RTOL, attention_distances, model_kind
    from .plots import plot_attention_distance, plot_model_attention

    tag, title = run["tag"], run_title(run)
    kind = model_kind(model)
    labels = np.asarray(test_set.labels)
    idx = _sample_indices(labels, samples)
    x = torch.stack([test_set[i][0] for i in idx]).to(device)
    with torch.no_grad():
        pred = model(x).argmax(-1).cpu().tolist()
    titles = [f"{classes[labels[i]]}\n-> {classes[p]}" for i, p in zip(idx, pred)]
    fig, hms = plot_model_attention(model, x, titles, title=title, layer=cam_layer)
    what = {"vit": "attention rollout (class token over the patches, heads averaged, residual mixed in)",
            "convit": "attention rollout through the GPSA and self-attention blocks",
            "crossvit": "each branch's class token attending to the other branch's patches (last fusion, heads "
                        "averaged)",
            "cnn": "Grad-CAM of the predicted class"}[kind]
    if hms and hms[0].name == "Grad-CAM" and kind != "cnn":
        what = "Grad-CAM of the predicted class, taken in the CNN backbone"
    lines = ["### Attention on sample test faces", "",
             f"Top row: the faces (true -> predicted); below: {what}. Each row names the map and its grid "
             f"({', '.join(f'{h.title}' for h in hms)}); the map is upsampled to the "
             f"{x.shape[-2]}x{x.shape[-1]} px face (bicubic) and scaled to its own minimum-maximum, so colours "
             "compare places within a face, not faces.", ""]
    lines += [f"Note: {h.title}: {h.note}." for h in hms if h.note]
    for h in hms:
        n_flat, n_bad = int(h.flat.sum()), int((~h.finite).sum())
        why = (f"constant (its range below {100 * FLAT_RTOL:g}% of its value)" if not n_bad else
               "constant or not finite (NaN or inf)")
        if n_flat == len(idx):
            lines.append(f"**Defect:** {h.title} is {why} over every sample face: not drawn.")
            continue
        if n_flat:
            lines.append(f"**Defect:** {h.title} is {why} over {n_flat} of the {len(idx)} faces (marked "
                         "'constant map' in the figure).")
    if lines[-1] != "":
        lines.append("")
    if fig is not None:
        lines += _show("attention", _fig(fig, out / f"{tag}_attention.png", figures))
    if kind in ("vit", "convit"):
        d = attention_distances(model, x).numpy()
        n_local = len(getattr(model, "gpsa_layers", []))
        name = _fig(plot_attention_distance(d, n_local, title=title), out / f"{tag}_attention_distance.png", figures)
        lines += ["### Mean attention distance", "",
                  "Mean distance (patches) per layer, over the heads: " + ", ".join(f"{v:.2f}" for v in d.mean(1))
                  + ".", ""]
        lines += _show("attention distance", name)
    return lines


def _run_section(run: dict[str, Any], out: Path, figures: list[Path], data: list[Path], *, samples: int,
                 device: str, data_dir: Optional[str], do_tsne: bool, do_attention: bool,
                 cam_layer: Optional[str] = None) -> list[str]:
    from .attention import model_kind
    from .features import extract_features, tsne
    from .plots import plot_confusion, plot_learning_curves, plot_tsne

    m, cfg, tag = run["metrics"], run["config"], run["tag"]
    title = run_title(run)
    classes = list(m.get("class_names") or m.get("classes") or [])
    test = m.get("test", {})
    lines = [f"## {run['label']}", "",
             f"Run folder `{run['dir']}`: {_split_name(cfg, run['dir'])}, seed {cfg.get('seed')}, recipe "
             f"`{cfg.get('recipe')}`, {'pretrained' if cfg.get('pretrained') else 'from scratch'}, "
             f"{cfg.get('epochs')} epochs, {m.get('params_m', 0):.2f} M parameters. Test accuracy "
             f"**{100 * m['test_accuracy']:.2f}%** (UAR {100 * test.get('uar', float('nan')):.1f}%, macro-F1 "
             f"{100 * test.get('macro_f1', float('nan')):.1f}%, {test.get('n', '?')} images), best epoch "
             f"{m.get('best_epoch')}, training time {m.get('train_time_s', m.get('seconds', 0)):.0f} s.", ""]
    name = _fig(plot_learning_curves([{"label": m.get("model", "run"), "history": run["history"],
                                       "test_accuracy": m["test_accuracy"], "best_epoch": m.get("best_epoch")}],
                                     title=title),
                out / f"{tag}_curves.png", figures)
    lines += ["### Learning curves", ""] + _show("learning curves", name)
    name = _fig(plot_confusion(m["confusion"], classes, title=title), out / f"{tag}_confusion.png", figures)
    conf_pairs = most_confused(m["confusion"], classes)
    lines += ["### Confusion matrix", ""] + _show("confusion matrix", name) + [
        "Most confused (true -> predicted): " + ("; ".join(
            f"{t} -> {p}: {n} ({100 * s:.0f}% of {t})" for t, p, n, s in conf_pairs) or "none") + ".", ""]
    per_class = m.get("per_class_accuracy") or {}
    if per_class:
        lines += ["Per-class accuracy: " + ", ".join(
            f"{c} {'-' if a is None else f'{100 * a:.0f}%'}" for c, a in per_class.items()) + ".", ""]
    model = None
    if do_tsne or do_attention:
        model, test_set = run_test_set(run, data_dir=data_dir, device=device)
    elif has_gpsa_gates(run["dir"] / "model.safetensors"):
        import vitfer

        model = vitfer.load(run["dir"] / "model.safetensors", map_location=device)
    if model is None:
        return lines
    if do_tsne:
        feats = extract_features(model, test_set, device=device)
        agree = float((feats["predictions"] == feats["labels"]).mean())
        lines += ["### t-SNE of the pre-logit test features", "",
                  f"{feats['features'].shape[0]} test images, {feats['features'].shape[1]}-d features "
                  f"(the checkpoint re-scores them at {100 * agree:.1f}% accuracy).", ""]
        for dim in (2, 3):
            emb = tsne(feats["features"], dim=dim, seed=0)
            name = _fig(plot_tsne(emb, feats["labels"], classes,
                                  title=f"{title}\nt-SNE {dim}-D of the pre-logit test features"),
                        out / f"{tag}_tsne{dim}d.png", figures)
            lines += _show(f"t-SNE {dim}-D", name)
    if do_attention:
        lines += _attention_lines(run, model, test_set, classes, out, figures, samples=samples, device=device,
                                  cam_layer=cam_layer)
    if model_kind(model) == "convit" and model.gpsa_layers:
        lines += _gates_lines(run, model, out, figures, data)
    return lines


def has_gpsa_gates(checkpoint: Union[str, os.PathLike]) -> bool:
    """Whether a safetensors checkpoint holds GPSA gating parameters (a ConViT), read from its
    header alone (no tensor is loaded); False for a missing file, and (logged) for one that is not
    safetensors: a report of curves alone does not depend on the checkpoint."""
    from safetensors import SafetensorError, safe_open

    path = Path(checkpoint)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.endswith("gating_param") for k in f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        _logger.warning("%s: not a readable safetensors file (%s); no GPSA gates reported", path, e)
        return False


def _gates_lines(run: dict[str, Any], model: Any, out: Path, figures: list[Path], data: list[Path]) -> list[str]:
    """ConViT: the GPSA gates as a layer x head table, the verdict on the paper's finding, the
    figure (init level dashed) and the numbers as JSON."""
    from vitfer.weights.io import atomic_write_text

    from .gates import GATE_ATOL, POSITIONAL, gpsa_gates
    from .plots import plot_gating

    tag = run["tag"]
    s = gpsa_gates(model)
    n_layers, n_heads = s.gates.shape
    name = _fig(plot_gating(s.gates, title=run_title(run), init=s.init_level), out / f"{tag}_gpsa_gating.png",
                figures)
    jpath = out / f"{tag}_gpsa_gates.json"
    atomic_write_text(jpath, json.dumps(s.to_dict(), indent=1) + "\n")
    data.append(jpath)
    lines = ["### GPSA gates: what ConViT learned", "",
             f"Each head of the {n_layers} GPSA layers mixes positional and content attention with the gate "
             "sigmoid(gating_param) (1 = by position only, convolution-like; 0 = by content only). Every gate "
             f"starts at {s.init_level:.3f} (a freshly built model's); the ConViT paper (d'Ascoli et al. 2021) found "
             "that training leaves the early GPSA layers positional and makes the later ones less positional.", ""]
    if run["config"].get("pretrained"):
        lines += ["This run started from pretrained weights: the gates left their initial value during that "
                  "pretraining as well as during this fine-tuning.", ""]
    lines += ["| GPSA layer | " + " | ".join(f"head {h}" for h in range(n_heads)) + " | mean | change |",
              "|---|" + "---:|" * (n_heads + 2)]
    for i, (row, init) in enumerate(zip(s.gates, s.init)):
        lines.append(f"| {i + 1} | " + " | ".join(f"{v:.2f}" for v in row)
                     + f" | {row.mean():.3f} | {row.mean() - init.mean():+.3f} |")
    lines += ["", f"**Verdict:** {s.verdict}", "",
              f"Rules: the gates moved if some head changed by more than {GATE_ATOL:g}; the mean gate falls (rises) "
              f"with depth if its least-squares fit and its last-minus-first layer difference both fall (rise) by more "
              f"than {GATE_ATOL:g} over the GPSA layers; without such a trend, a middle layer whose mean gate is above "
              f"every later layer's and the earlier layers' average by more than {GATE_ATOL:g} is named as a peak; "
              f"a layer is positional at a mean gate of at least "
              f"{POSITIONAL:g}. The numbers: [{jpath.name}]({jpath.name}).", ""]
    return lines + _show("GPSA gates", name)


def _fold_number(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def is_cv_folder(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a cross-validation folder (``fold-K/`` run folders, no metrics.json)."""
    p = Path(path).expanduser()
    return p.is_dir() and not (p / "metrics.json").is_file() and any(
        d.is_dir() and _fold_number(d) >= 0 for d in p.glob("fold-*"))


def load_cv(cv_dir: Union[str, os.PathLike]) -> dict[str, Any]:
    """A finished cross-validation folder (``vitfer finetune --all-folds``, :mod:`vitfer.engine.cv`):
    its ``summary`` (summary.json) and its ``folds`` (:func:`load_run` of every ``fold-K``, in order)."""
    out = Path(cv_dir).expanduser()
    sfile = out / "summary.json"
    folds = sorted((d for d in out.glob("fold-*") if d.is_dir() and _fold_number(d) >= 0), key=_fold_number)
    if not sfile.is_file():
        unfinished = [d.name for d in folds if not (d / "metrics.json").is_file()]
        raise FileNotFoundError(
            f"{out} is a cross-validation folder whose summary.json is missing"
            + (f" (unfinished: {', '.join(unfinished)})" if unfinished else "")
            + ": rerun the same command to finish the folds")
    try:
        summary = json.loads(sfile.read_text())
    except ValueError as e:
        raise ValueError(f"{sfile} is not valid JSON ({e})") from e
    n = summary.get("n_folds", len(folds))
    if len(folds) != n:
        raise FileNotFoundError(f"{sfile} summarises {n} folds but {out} holds {len(folds)} fold folders "
                                f"({', '.join(d.name for d in folds) or 'none'})")
    runs = [load_run(d) for d in folds]
    cfg = summary.get("config") or runs[0]["config"]
    return {"dir": out, "summary": summary, "folds": runs, "config": cfg,
            "tag": re.sub(r"[^A-Za-z0-9_.-]+", "_", out.name) or "cv",
            "label": f"{summary.get('model') or cfg.get('model', '?')} on {cfg.get('dataset', '?')}: "
                     f"{cfg.get('split', '?')}, {n} folds"}


def _cv_section(cv: dict[str, Any], out: Path, figures: list[Path]) -> list[str]:
    """The pooled part of a cross-validation: per-fold table, accuracy per fold, overlaid curves
    and the pooled confusion matrix."""
    from .plots import plot_confusion, plot_fold_accuracy, plot_learning_curves

    s, cfg, tag = cv["summary"], cv["config"], cv["tag"]
    model = s.get("model") or cfg.get("model", "?")
    acc, uar, f1, pooled = s["accuracy"], s["uar"], s["macro_f1"], s["pooled"]
    title = (f"{model} · {_dataset_name(cfg)} · {cfg.get('split')} split, {s['n_folds']} folds · test accuracy "
             f"{100 * acc['mean']:.1f} +- {100 * acc['std']:.1f}% (pooled {100 * pooled['accuracy']:.1f}%)")
    lines = [f"## {cv['label']} (cross-validation)", "",
             f"Folder `{cv['dir']}`: {s['n_folds']} folds, each tested on its own images, so every image is "
             f"tested once. Test accuracy **{100 * acc['mean']:.1f} +- {100 * acc['std']:.1f}%** (mean +- std over "
             f"the folds), UAR {100 * uar['mean']:.1f} +- {100 * uar['std']:.1f}%, macro-F1 {100 * f1['mean']:.1f} "
             f"+- {100 * f1['std']:.1f}%; pooled over the folds: accuracy {100 * pooled['accuracy']:.1f}%, UAR "
             f"{100 * pooled['uar']:.1f}% ({sum(f['n'] for f in s['folds'])} images). Training time "
             f"{s.get('train_time_s', 0):.0f} s in all.", "",
             "| fold folder | test subjects | images | accuracy % | UAR % | macro-F1 % | best epoch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for f, run in zip(s["folds"], cv["folds"]):
        subj = ", ".join(f.get("test_subjects") or []) or "-"
        lines.append(f"| {run['dir'].name} | {subj} | {f['n']} | {100 * f['accuracy']:.1f} | {100 * f['uar']:.1f} | "
                     f"{100 * f['macro_f1']:.1f} | {f.get('best_epoch')} |")
    lines.append("")
    names = [r["dir"].name for r in cv["folds"]]
    name = _fig(plot_fold_accuracy(names, [f["accuracy"] for f in s["folds"]], [f["n"] for f in s["folds"]],
                                   title=title), out / f"{tag}_folds.png", figures)
    lines += ["### Accuracy per fold", ""] + _show("accuracy per fold", name)
    name = _fig(plot_confusion(pooled["confusion"], list(s["classes"]), title=f"{title}\npooled over the folds"),
                out / f"{tag}_confusion_pooled.png", figures)
    classes = list(s["classes"])
    pairs = most_confused(pooled["confusion"], classes)
    lines += ["### Pooled confusion matrix", ""] + _show("pooled confusion matrix", name) + [
        "Most confused, pooled (true -> predicted): " + ("; ".join(
            f"{t} -> {p}: {n} ({100 * sh:.0f}% of {t})" for t, p, n, sh in pairs) or "none") + ".", ""]
    name = _fig(plot_learning_curves([{"label": r["dir"].name, "history": r["history"],
                                       "test_accuracy": r["metrics"]["test_accuracy"],
                                       "best_epoch": r["metrics"].get("best_epoch")} for r in cv["folds"]],
                                     title=title),
                out / f"{tag}_curves_folds.png", figures)
    lines += ["### Learning curves of the folds", ""] + _show("learning curves of the folds", name)
    return lines


def _sample_indices(labels: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` test items, one class after the other (round robin), so every expression shows."""
    by_class = {c: list(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))}
    out: list[int] = []
    while len(out) < n and any(by_class.values()):
        for c in by_class:
            if by_class[c] and len(out) < n:
                out.append(int(by_class[c].pop(0)))
    return out


def _where_trained(runs: Sequence[dict[str, Any]]) -> str:
    """What the run folders say about where each run trained: the config's ``device`` (a run folder
    does not record the machine itself)."""
    by_dev: dict[str, list[str]] = {}
    for r in runs:
        by_dev.setdefault(str(r["config"].get("device", "?")), []).append(r["metrics"].get("model", "?"))
    if len(by_dev) == 1:
        return f"device `{next(iter(by_dev))}` in every run's config"
    return "device " + "; ".join(f"`{d}` for {', '.join(ms)}" for d, ms in by_dev.items())


def _comparison(runs: Sequence[dict[str, Any]]) -> list[str]:
    from vitfer.study_tables import STUDY_MODELS, run_table_row, tables_markdown

    order = {s: i for i, (s, _) in enumerate(STUDY_MODELS)}
    rows = [run_table_row(r["metrics"], run_dir=str(r["dir"])) for r in runs]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    rows.sort(key=lambda r: (datasets.index(r["dataset"]), order.get(r["study_model"] or "", len(order))))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["dataset"]] = r["no"] = counts.get(r["dataset"], 0) + 1
    md = [ln.replace("## ", "### ", 1) for ln in tables_markdown(rows).splitlines()[2:]]
    # the study's tables name the machine in their header; a report of run folders has only the configs
    md = [ln for ln in md if not ln.startswith("Training time:")]
    md.append("Training time: the training epochs of each run (the optimiser steps: validation and test excluded), "
              "as measured "
              f"where it ran ({_where_trained(runs)}; the run folders do not record the machine, so compare "
              "times only between runs made on one machine).")
    return ["## Comparison", ""] + md + [""]


def write_report(
    run_dirs: Sequence[Union[str, os.PathLike]],
    out_dir: Union[str, os.PathLike],
    *,
    samples: int = 7,
    device: str = "cpu",
    data_dir: Optional[str] = None,
    tsne: bool = True,
    attention: bool = True,
    cam_layer: Optional[str] = None,
) -> dict[str, Any]:
    """Write the figures, ``report.md`` and ``report.html`` of ``run_dirs`` into ``out_dir``.

    ``run_dirs``: finished run folders and cross-validation folders (``fold-K/`` run folders and
    summary.json, :mod:`vitfer.engine.cv`), the latter reported pooled (per-fold table, accuracy
    per fold, pooled confusion matrix, the folds' curves) and then fold by fold.

    Returns ``{"markdown": path, "html": path, "figures": [PNG paths], "data": [JSON paths]}`` (the
    data: the GPSA gates of each ConViT run, ``TAG_gpsa_gates.json``); every figure has a PDF
    copy beside its PNG and a title naming the model, dataset, split and test accuracy.
    ``data_dir`` overrides the runs' dataset folder (t-SNE and attention need the test images; the
    curves and confusion matrices only the run folder). ``cam_layer`` names the Grad-CAM layer
    (e.g. ``"layer3"``); by default the deepest whose map is at least 6x6 at the run's input size.
    """
    from ._deps import figure
    from .plots import plot_learning_curves

    figure()  # fail early, naming the extra, when matplotlib is missing
    if not run_dirs:
        raise ValueError("report needs at least one run folder")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    units: list[tuple[str, dict[str, Any]]] = [("cv", load_cv(d)) if is_cv_folder(d) else ("run", load_run(d))
                                               for d in run_dirs]
    runs = [u for k, u in units if k == "run"]
    seen: dict[str, int] = {}
    for r in [u for _, u in units] + [f for k, u in units if k == "cv" for f in u["folds"]]:  # unique file-name tags
        n = seen[r["tag"]] = seen.get(r["tag"], 0) + 1
        if n > 1:
            r["tag"] = f"{r['tag']}-{n}"
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    data: list[Path] = []
    lines = ["# vitfer report", "", _contents(units), ""]
    if len(runs) > 1:
        datasets = ", ".join(dict.fromkeys(_dataset_name(r["config"]) for r in runs))
        splits = ", ".join(dict.fromkeys(_split_name(r["config"], r["dir"]) for r in runs))
        name = _fig(plot_learning_curves([{"label": r["label"], "history": r["history"],
                                           "test_accuracy": r["metrics"]["test_accuracy"],
                                           "best_epoch": r["metrics"].get("best_epoch")} for r in runs],
                                         title=f"{len(runs)} runs · {datasets} · {splits} · test accuracy in the "
                                               "legend"),
                    out / "curves_overlay.png", figures)
        lines += _comparison(runs) + ["### Learning curves, overlaid", ""] + _show("learning curves", name)
    dev = str(torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device)))
    for kind, u in units:
        _logger.info("report: %s", u["dir"])
        if kind == "cv":
            lines += _cv_section(u, out, figures)
        for r in (u["folds"] if kind == "cv" else [u]):
            lines += _run_section(r, out, figures, data, samples=samples, device=dev, data_dir=data_dir,
                                  do_tsne=tsne, do_attention=attention, cam_layer=cam_layer)
    from vitfer.weights.io import atomic_write_text

    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", markdown_to_html(md, out))
    return {"markdown": out / "report.md", "html": out / "report.html", "figures": figures, "data": data}


def _contents(units: Sequence[tuple[str, dict[str, Any]]]) -> str:
    runs = [u for k, u in units if k == "run"]
    parts = []
    if runs:
        parts.append(f"{len(runs)} run(s): " + ", ".join(f"`{r['dir']}`" for r in runs))
    parts += [f"cross-validation `{u['dir']}` ({len(u['folds'])} folds)" for k, u in units if k == "cv"]
    return "; ".join(parts) + "."


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", r"<a href='\2'>\1</a>", t)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def markdown_to_html(md: str, base: Union[str, os.PathLike, None] = None, title: str = "vitfer report") -> str:
    """The small markdown subset the report writes (headings, paragraphs, quotes, tables, images)
    as one self-contained HTML page: images found under ``base`` are embedded (base64 PNG)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%}"
           "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #bbb;padding:3px 6px}"
           "blockquote{border-left:4px solid #c60;margin-left:0;padding-left:1em}</style></head><body>"]
    table: list[list[str]] = []

    def flush() -> None:
        if not table:
            return
        head, *body = [r for r in table if not re.fullmatch(r"[\s|:-]+", "|".join(r))]
        out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
        out.append("</table>")
        table.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|"):
            table.append([c.strip() for c in s.strip("|").split("|")])
            continue
        flush()
        img = re.fullmatch(r"!\[(.*?)\]\((.+?)\)", s)
        if not s:
            continue
        if img:
            src = img.group(2)
            p = Path(base) / src if base is not None else Path(src)
            if p.is_file():
                src = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{html.escape(img.group(1))}' src='{src}'></p>")
        elif s.startswith("#"):
            level = min(6, len(s) - len(s.lstrip("#")))
            out.append(f"<h{level}>{_inline(s[level:].strip())}</h{level}>")
        elif s.startswith(">"):
            out.append(f"<blockquote>{_inline(s[1:].strip())}</blockquote>")
        else:
            out.append(f"<p>{_inline(s)}</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"
