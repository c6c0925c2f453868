"""``vitfer report``: the figures of one or more run folders, and a report that shows them.

    from vitfer.analysis import write_report
    out = write_report(["study/ckplus48/convit_tiny", "study/ckplus48/resnet18d"], "report")
    out["markdown"], out["html"], out["figures"]

For every run: learning curves, the confusion matrix (counts and row-normalised), t-SNE of the
pre-logit test features in 2-D and 3-D, and attention on sample test faces (rollout for ViT and
the hybrid; rollout, GPSA gating and attention distances for ConViT; the class tokens'
cross-attention for CrossViT; Grad-CAM for CNNs). For several runs also the learning curves
overlaid and a comparison table in the study's format. ``report.md`` links the PNGs;
``report.html`` embeds them (one self-contained file).

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

__all__ = ["load_run", "run_test_set", "write_report", "most_confused", "markdown_to_html"]

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


def _sample_indices(labels: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` test items, one class after the other (round robin), so every expression shows."""
    by_class = {c: list(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))}
    out: list[int] = []
    while len(out) < n and any(by_class.values()):
        for c in by_class:
            if by_class[c] and len(out) < n:
                out.append(int(by_class[c].pop(0)))
    return out


def _display_images(x: torch.Tensor, pcfg: dict[str, Any]) -> np.ndarray:
    """Normalised (B, C, H, W) model inputs back to (B, H, W, 3) in [0, 1] for display."""
    mean = torch.tensor(pcfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pcfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, -1, 1, 1)
    img = (x.float().cpu() * std[:, : x.shape[1]] + mean[:, : x.shape[1]]).clamp(0, 1)
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    return img.permute(0, 2, 3, 1).numpy()


def _fig(fig: Any, path: Path, figures: list[Path]) -> str:
    from .plots import save_figure

    save_figure(fig, path)
    figures.append(path)
    fig.clf()
    return path.name


def _run_section(run: dict[str, Any], out: Path, figures: list[Path], *, samples: int, device: str,
                 data_dir: Optional[str], do_tsne: bool, do_attention: bool) -> list[str]:
    from .attention import attention_distances, attention_heatmaps, gpsa_gating, model_kind
    from .features import extract_features, tsne
    from .plots import (plot_attention, plot_attention_distance, plot_confusion, plot_gating,
                        plot_learning_curves, plot_tsne)

    m, cfg, tag = run["metrics"], run["config"], run["tag"]
    classes = list(m.get("class_names") or m.get("classes") or [])
    test = m.get("test", {})
    lines = [f"## {run['label']}", "",
             f"Run folder `{run['dir']}`: {cfg.get('split')} split, seed {cfg.get('seed')}, recipe "
             f"`{cfg.get('recipe')}`, {'pretrained' if cfg.get('pretrained') else 'from scratch'}, "
             f"{cfg.get('epochs')} epochs, {m.get('params_m', 0):.2f} M parameters. Test accuracy "
             f"**{100 * m['test_accuracy']:.2f}%** (UAR {100 * test.get('uar', float('nan')):.1f}%, macro-F1 "
             f"{100 * test.get('macro_f1', float('nan')):.1f}%, {test.get('n', '?')} images), best epoch "
             f"{m.get('best_epoch')}, training time {m.get('train_time_s', m.get('seconds', 0)):.0f} s.", ""]
    name = _fig(plot_learning_curves([{"label": m.get("model", "run"), "history": run["history"],
                                       "test_accuracy": m["test_accuracy"], "best_epoch": m.get("best_epoch")}]),
                out / f"{tag}_curves.png", figures)
    lines += ["### Learning curves", "", f"![learning curves]({name})", ""]
    name = _fig(plot_confusion(m["confusion"], classes, title=m.get("model", "")), out / f"{tag}_confusion.png", figures)
    conf_pairs = most_confused(m["confusion"], classes)
    lines += ["### Confusion matrix", "", f"![confusion matrix]({name})", "",
              "Most confused (true -> predicted): " + ("; ".join(
                  f"{t} -> {p}: {n} ({100 * s:.0f}% of {t})" for t, p, n, s in conf_pairs) or "none") + ".", ""]
    per_class = m.get("per_class_accuracy") or {}
    if per_class:
        lines += ["Per-class accuracy: " + ", ".join(
            f"{c} {'-' if a is None else f'{100 * a:.0f}%'}" for c, a in per_class.items()) + ".", ""]
    if not (do_tsne or do_attention):
        return lines
    model, test_set = run_test_set(run, data_dir=data_dir, device=device)
    kind = model_kind(model)
    labels = np.asarray(test_set.labels)
    if do_tsne:
        feats = extract_features(model, test_set, device=device)
        agree = float((feats["predictions"] == feats["labels"]).mean())
        lines += ["### t-SNE of the pre-logit test features", "",
                  f"{feats['features'].shape[0]} test images, {feats['features'].shape[1]}-d features "
                  f"(the checkpoint re-scores them at {100 * agree:.1f}% accuracy).", ""]
        for dim in (2, 3):
            emb = tsne(feats["features"], dim=dim, seed=0)
            name = _fig(plot_tsne(emb, feats["labels"], classes, title=f"{m.get('model')}: t-SNE {dim}-D, test features"),
                        out / f"{tag}_tsne{dim}d.png", figures)
            lines += [f"![t-SNE {dim}-D]({name})", ""]
    if do_attention:
        idx = _sample_indices(labels, samples)
        x = torch.stack([test_set[i][0] for i in idx]).to(device)
        with torch.no_grad():
            pred = model(x).argmax(-1).cpu().tolist()
        titles = [f"{classes[labels[i]]}\n-> {classes[p]}" for i, p in zip(idx, pred)]
        maps = {k: v.cpu().numpy() for k, v in attention_heatmaps(model, x).items()}
        name = _fig(plot_attention(_display_images(x, model.pretrained_cfg), maps, titles), out / f"{tag}_attention.png",
                    figures)
        what = {"vit": "attention rollout (class token over the patches, heads averaged, residual mixed in)",
                "convit": "attention rollout through the GPSA and self-attention blocks",
                "crossvit": "each branch's class token attending to the other branch's patches (last fusion, heads "
                            "averaged)",
                "cnn": "Grad-CAM of the predicted class"}[kind]
        lines += ["### Attention on sample test faces", "", f"Top row: the faces (true -> predicted); below: {what}.",
                  "", f"![attention]({name})", ""]
        if kind == "convit":
            g = gpsa_gating(model).numpy()
            name = _fig(plot_gating(g), out / f"{tag}_gpsa_gating.png", figures)
            means = ", ".join(f"{v:.2f}" for v in g.mean(1))
            lines += ["### GPSA gating", "", f"Mean gate per GPSA layer (1 = positional, 0 = content): {means}.", "",
                      f"![GPSA gating]({name})", ""]
        if kind in ("vit", "convit"):
            d = attention_distances(model, x).numpy()
            n_local = len(getattr(model, "gpsa_layers", []))
            name = _fig(plot_attention_distance(d, n_local), out / f"{tag}_attention_distance.png", figures)
            lines += ["### Mean attention distance", "",
                      "Mean distance (patches) per layer, over the heads: " + ", ".join(f"{v:.2f}" for v in d.mean(1))
                      + ".", "", f"![attention distance]({name})", ""]
    return lines


def _comparison(runs: Sequence[dict[str, Any]]) -> list[str]:
    from vitfer.engine.study import run_table_row, tables_markdown

    from vitfer.engine.study import STUDY_MODELS

    order = {s: i for i, (s, _) in enumerate(STUDY_MODELS)}
    rows = [run_table_row(r["metrics"], run_dir=str(r["dir"])) for r in runs]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    rows.sort(key=lambda r: (datasets.index(r["dataset"]), order.get(r["study_model"] or "", len(order))))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["dataset"]] = r["no"] = counts.get(r["dataset"], 0) + 1
    md = tables_markdown(rows).splitlines()
    return ["## Comparison", ""] + [ln.replace("## ", "### ", 1) for ln in md[2:]] + [""]


def write_report(
    run_dirs: Sequence[Union[str, os.PathLike]],
    out_dir: Union[str, os.PathLike],
    *,
    samples: int = 7,
    device: str = "cpu",
    data_dir: Optional[str] = None,
    tsne: bool = True,
    attention: bool = True,
) -> dict[str, Any]:
    """Write the figures, ``report.md`` and ``report.html`` of ``run_dirs`` into ``out_dir``.

    Returns ``{"markdown": path, "html": path, "figures": [paths]}``. ``data_dir`` overrides the
    runs' dataset folder (t-SNE and attention need the test images; the curves and confusion
    matrices only the run folder).
    """
    from ._deps import figure
    from .plots import plot_learning_curves

    figure()  # fail early, naming the extra, when matplotlib is missing
    if not run_dirs:
        raise ValueError("report needs at least one run folder")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for r in runs:  # unique file-name tags
        n = seen[r["tag"]] = seen.get(r["tag"], 0) + 1
        if n > 1:
            r["tag"] = f"{r['tag']}-{n}"
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    lines = ["# vitfer report", "", f"{len(runs)} run(s): " + ", ".join(f"`{r['dir']}`" for r in runs) + ".", ""]
    if len(runs) > 1:
        name = _fig(plot_learning_curves([{"label": r["label"], "history": r["history"],
                                           "test_accuracy": r["metrics"]["test_accuracy"],
                                           "best_epoch": r["metrics"].get("best_epoch")} for r in runs]),
                    out / "curves_overlay.png", figures)
        lines += _comparison(runs) + ["### Learning curves, overlaid", "", f"![learning curves]({name})", ""]
    dev = str(torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device)))
    for r in runs:
        _logger.info("report: %s", r["dir"])
        lines += _run_section(r, out, figures, samples=samples, device=dev, data_dir=data_dir, do_tsne=tsne,
                              do_attention=attention)
    from vitfer.weights.io import atomic_write_text

    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", markdown_to_html(md, out))
    return {"markdown": out / "report.md", "html": out / "report.html", "figures": figures}


def _inline(text: str) -> str:
    t = html.escape(text)
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
