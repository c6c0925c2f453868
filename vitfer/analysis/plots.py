"""The report's figures, as matplotlib ``Figure`` objects (no pyplot, no display needed).

    fig = plot_confusion(metrics["confusion"], metrics["class_names"])
    save_figure(fig, "confusion.png")

Every function takes plain arrays / lists (what ``metrics.json`` and :mod:`vitfer.analysis`
return) and needs the ``plots`` extra (matplotlib).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._deps import figure

__all__ = [
    "plot_learning_curves", "plot_confusion", "plot_tsne", "plot_attention", "plot_gating",
    "plot_attention_distance", "save_figure",
]


def save_figure(fig: Any, path: Union[str, os.PathLike], dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG (Agg canvas) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def plot_learning_curves(runs: Sequence[Mapping[str, Any]]) -> Any:
    """Train and validation accuracy (left) and loss (right) per epoch; the test accuracy of each
    run marked (a star at its best epoch and a dotted line).

    ``runs``: one mapping a run with ``label``, ``history`` (the ``metrics.jsonl`` records:
    ``epoch``, ``train_accuracy``, ``train_loss``, optional ``val_accuracy``, ``val_loss``), and
    optional ``test_accuracy`` and ``best_epoch``. Several runs are overlaid, one colour each.
    """
    if not runs:
        raise ValueError("plot_learning_curves needs at least one run")
    fig = figure(figsize=(11, 4.2))
    ax_acc, ax_loss = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, c in zip(runs, colors):
        hist = list(run.get("history") or [])
        if not hist:
            continue
        ep = [r["epoch"] for r in hist]
        label = run.get("label", "run")
        ax_acc.plot(ep, [100 * r["train_accuracy"] for r in hist], "-o", color=c, ms=3, label=f"{label} train")
        ax_loss.plot(ep, [r["train_loss"] for r in hist], "-o", color=c, ms=3, label=f"{label} train")
        if any("val_accuracy" in r for r in hist):
            vep = [r["epoch"] for r in hist if "val_accuracy" in r]
            ax_acc.plot(vep, [100 * r["val_accuracy"] for r in hist if "val_accuracy" in r], "--s", color=c, ms=3,
                        label=f"{label} val")
            ax_loss.plot(vep, [r["val_loss"] for r in hist if "val_loss" in r], "--s", color=c, ms=3,
                         label=f"{label} val")
        test = run.get("test_accuracy")
        if test is not None:
            best = run.get("best_epoch") or ep[-1]
            ax_acc.axhline(100 * test, color=c, ls=":", lw=1)
            ax_acc.plot([best], [100 * test], "*", color=c, ms=13, mec="black",
                        label=f"{label} test {100 * test:.1f}% (epoch {best})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(0, 101))
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize=7, loc="lower right")
    ax_loss.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Any:
    """The confusion matrix twice: counts (left) and row-normalised, i.e. per-class recall (right);
    rows are the true classes, columns the predicted ones, class names on both axes."""
    conf = np.asarray(confusion, dtype=np.int64)
    k = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] != k or len(class_names) != k:
        raise ValueError(f"confusion {conf.shape} does not fit {len(class_names)} class names")
    rows = conf.sum(1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros(conf.shape, dtype=np.float64), where=rows > 0)
    fig = figure(figsize=(12, 5.2))
    for ax, data, what in zip(fig.subplots(1, 2), (conf, norm), ("counts", "row-normalised (recall)")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(1, data.max()) if what == "counts" else 1.0)
        ax.set_xticks(range(k), class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), class_names)
        ax.set(xlabel="predicted", ylabel="true", title=f"{title} {what}".strip())
        hi = data.max() / 2 if data.max() else 0.5
        for i in range(k):
            for j in range(k):
                txt = f"{data[i, j]:d}" if what == "counts" else f"{data[i, j]:.2f}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                        color="white" if data[i, j] > hi else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_tsne(embedding: np.ndarray, labels: Sequence[int], class_names: Sequence[str], title: str = "") -> Any:
    """A 2-D or 3-D scatter of a t-SNE embedding (N, 2 | 3), one colour a class."""
    emb = np.asarray(embedding)
    lab = np.asarray(labels)
    if emb.ndim != 2 or emb.shape[1] not in (2, 3) or emb.shape[0] != lab.shape[0]:
        raise ValueError(f"plot_tsne needs (N, 2|3) points and N labels, got {emb.shape} and {lab.shape}")
    three = emb.shape[1] == 3
    fig = figure(figsize=(7.5, 6.5))
    if three:
        import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3d projection)

        ax = fig.add_subplot(projection="3d")
    else:
        ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        pts = emb[lab == c]
        if len(pts):
            ax.scatter(*pts.T, s=18, color=f"C{c % 10}", label=f"{name} ({len(pts)})", alpha=0.85,
                       edgecolors="black" if not three else None, linewidths=0.3)
    ax.set_title(title or f"t-SNE ({emb.shape[1]}-D) of the pre-logit features")
    ax.legend(fontsize=8, loc="best", markerscale=1.3)
    if three:
        ax.view_init(elev=20, azim=35)
    fig.tight_layout()
    return fig


def plot_attention(
    images: np.ndarray, maps: Mapping[str, np.ndarray], titles: Optional[Sequence[str]] = None, alpha: float = 0.5
) -> Any:
    """Sample faces (top row) and, one row a map kind, each map upsampled to the face and laid over
    it (jet colours, ``alpha``).

    Args:
        images: (B, H, W, 3) or (B, H, W) in [0, 1].
        maps: name -> (B, h, w) in [0, 1] (any grid; bilinear upsampling).
        titles: one a face (e.g. "true / predicted").
    """
    import torch
    import torch.nn.functional as F

    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim == 3:
        imgs = np.repeat(imgs[..., None], 3, axis=-1)
    b, h, w = imgs.shape[:3]
    fig = figure(figsize=(1.9 * b, 2.0 * (1 + len(maps))))
    axes = np.asarray(fig.subplots(1 + len(maps), b, squeeze=False))
    for i in range(b):
        axes[0, i].imshow(np.clip(imgs[i], 0, 1))
        if titles:
            axes[0, i].set_title(titles[i], fontsize=8)
    for r, (name, m) in enumerate(maps.items(), start=1):
        up = F.interpolate(torch.as_tensor(np.asarray(m, dtype=np.float32))[:, None], size=(h, w), mode="bilinear",
                           align_corners=False)[:, 0].numpy()
        for i in range(b):
            axes[r, i].imshow(np.clip(imgs[i], 0, 1).mean(-1), cmap="gray")
            axes[r, i].imshow(up[i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_gating(gating: np.ndarray) -> Any:
    """ConViT's GPSA gates (layers, heads) as an annotated heat map, and per layer the mean gate
    with the spread over the heads (1: positional, 0: content)."""
    g = np.asarray(gating, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"plot_gating needs (layers, heads) gates, got shape {g.shape}")
    fig = figure(figsize=(11, 4))
    ax_map, ax_line = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    im = ax_map.imshow(g, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            ax_map.text(j, i, f"{g[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if g[i, j] > 0.5 else "white")
    ax_map.set(xlabel="head", ylabel="GPSA layer", title="gating sigmoid(lambda): 1 = positional, 0 = content")
    ax_map.set_xticks(range(g.shape[1]))
    ax_map.set_yticks(range(g.shape[0]), [str(i + 1) for i in range(g.shape[0])])
    fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04)
    layers = np.arange(1, g.shape[0] + 1)
    ax_line.plot(layers, g.mean(1), "-o", label="mean over heads")
    ax_line.fill_between(layers, g.min(1), g.max(1), alpha=0.25, label="min - max over heads")
    ax_line.set(xlabel="GPSA layer", ylabel="gate", ylim=(0, 1), title="how positional each layer still is")
    ax_line.set_xticks(layers)
    ax_line.grid(alpha=0.3)
    ax_line.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_attention_distance(distances: np.ndarray, n_local: int = 0) -> Any:
    """Mean attention distance (patches) of every head (dots) and layer (line: the mean over
    heads); the first ``n_local`` layers (ConViT's GPSA layers) shaded."""
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"plot_attention_distance needs (layers, heads) distances, got shape {d.shape}")
    fig = figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    layers = np.arange(1, d.shape[0] + 1)
    for h in range(d.shape[1]):
        ax.scatter(layers, d[:, h], s=16, color=f"C{h % 10}", alpha=0.8, label=f"head {h}" if d.shape[1] <= 12 else None)
    ax.plot(layers, d.mean(1), "-k", lw=1.5, label="mean")
    if n_local:
        ax.axvspan(0.5, n_local + 0.5, color="grey", alpha=0.15, label="GPSA layers")
    ax.set(xlabel="layer", ylabel="mean attention distance (patches)", title="attention distance per head and layer")
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
