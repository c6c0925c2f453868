"""The report's figures, as matplotlib ``Figure`` objects (no pyplot, no display needed).

    fig = plot_confusion(metrics["confusion"], metrics["class_names"])
    save_figure(fig, "confusion.png")

Every function takes plain arrays / lists (what ``metrics.json`` and :mod:`vitfer.analysis`
return) and needs the ``plots`` extra (matplotlib). Each takes a ``title`` (the report gives every
figure one naming the model, dataset, split and test accuracy); :func:`save_figure` writes a PDF
beside the PNG, for papers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._deps import figure

__all__ = [
    "plot_learning_curves", "plot_confusion", "plot_tsne", "plot_attention", "plot_gating",
    "plot_attention_distance", "plot_fold_accuracy", "plot_model_attention", "save_figure", "display_images",
    "upsample_maps",
]


def save_figure(fig: Any, path: Union[str, os.PathLike], dpi: int = 110, vector: Optional[str] = "pdf") -> Path:
    """Write ``fig`` as a PNG and, unless ``vector`` is None, a vector copy beside it
    (``vector`` is the format: ``pdf`` or ``svg``; same name, that suffix); returns the PNG's
    path. Each file is written to a temporary name and renamed, so a reader never sees half a
    figure."""
    path = Path(path)
    if vector not in (None, "pdf", "svg"):
        raise ValueError(f"vector must be 'pdf', 'svg' or None, got {vector!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [(path, {"format": "png", "dpi": dpi})]
    if vector:
        targets.append((path.with_suffix(f".{vector}"), {"format": vector}))
    for target, kw in targets:
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            fig.savefig(tmp, bbox_inches="tight", facecolor="white", **kw)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _suptitle(fig: Any, title: str) -> None:
    if title:
        fig.suptitle(title, fontsize=10)


def plot_learning_curves(runs: Sequence[Mapping[str, Any]], title: str = "") -> Any:
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
    _suptitle(fig, title)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Any:
    """The confusion matrix twice: counts (left) and row-normalised, i.e. per-class recall (right);
    rows are the true classes, columns the predicted ones, class names on both axes; ``title``
    above both."""
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
        ax.set(xlabel="predicted", ylabel="true", title=what)
        hi = data.max() / 2 if data.max() else 0.5
        for i in range(k):
            for j in range(k):
                txt = f"{data[i, j]:d}" if what == "counts" else f"{data[i, j]:.2f}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                        color="white" if data[i, j] > hi else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _suptitle(fig, title)
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
    ax.set_title(title or f"t-SNE ({emb.shape[1]}-D) of the pre-logit features", fontsize=10)
    ax.legend(fontsize=8, loc="best", markerscale=1.3)
    if three:
        ax.view_init(elev=20, azim=35)
    fig.tight_layout()
    return fig


def display_images(x: Any, pcfg: Mapping[str, Any]) -> np.ndarray:
    """Normalised (B, C, H, W) model inputs back to (B, H, W, 3) in [0, 1] for display
    (``pcfg``: the model's ``pretrained_cfg`` with its ``mean`` and ``std``)."""
    import torch

    x = torch.as_tensor(x)
    mean = torch.tensor(pcfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pcfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, -1, 1, 1)
    img = (x.float().cpu() * std[:, : x.shape[1]] + mean[:, : x.shape[1]]).clamp(0, 1)
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    return img.permute(0, 2, 3, 1).numpy()


def upsample_maps(maps: Any, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) maps to (B, H, W), as the figures draw them: bicubic upsampling (smooth, no
    blocks) and each map scaled to [0, 1] on its own (min to max). A constant map gives zeros."""
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if m.ndim != 3:
        raise ValueError(f"upsample_maps needs (B, h, w) maps, got shape {tuple(m.shape)}")
    up = F.interpolate(m[:, None], size=tuple(size), mode="bicubic", align_corners=False)[:, 0]
    flat = up.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(up).numpy()


def plot_attention(
    images: np.ndarray, maps: Mapping[str, Any], titles: Optional[Sequence[str]] = None, alpha: float = 0.5,
    title: str = "",
) -> Any:
    """Sample faces (top row) and, one row a map kind, each map upsampled to the face (bicubic),
    scaled to [0, 1] per image and laid over the face (``alpha``), with a colour bar a row.

    Args:
        images: (B, H, W, 3) or (B, H, W) in [0, 1].
        maps: row label -> (B, h, w) maps (any grid), or -> :class:`~vitfer.analysis.attention.Heatmap`
            (labelled with its title, e.g. "Grad-CAM, layer2 (6x6)"). A map constant over its
            face (:data:`~vitfer.analysis.attention.FLAT_RTOL`) is not drawn: its cell says so.
        titles: one a face (e.g. "true -> predicted").
        title: the figure's title.

    The drawn maps are ``fig.vitfer_drawn``: row label -> (B, H, W) (NaN where not drawn).
    """
    from .attention import FLAT_RTOL, map_contrast

    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim == 3:
        imgs = np.repeat(imgs[..., None], 3, axis=-1)
    b, h, w = imgs.shape[:3]
    rows = []
    for label, m in maps.items():
        if hasattr(m, "raw") and hasattr(m, "flat"):
            raw, flat, label = np.asarray(m.raw, dtype=np.float32), np.asarray(m.flat), m.title.replace(", ", "\n", 1)
        else:
            import torch

            raw = np.asarray(m, dtype=np.float32)
            flat = (map_contrast(torch.as_tensor(raw)) < FLAT_RTOL).numpy()
        if raw.ndim != 3 or raw.shape[0] != b:
            raise ValueError(f"map {label!r} has shape {raw.shape}, expected ({b}, h, w) for {b} faces")
        up = upsample_maps(raw, (h, w))
        up[flat] = np.nan
        rows.append((label, up, flat))
    fig = figure(figsize=(1.9 * b + 1.0, 2.0 * (1 + len(rows)) + (0.4 if title else 0)), layout="constrained")
    axes = np.asarray(fig.subplots(1 + len(rows), b, squeeze=False))
    fig.vitfer_drawn = {}
    for i in range(b):
        axes[0, i].imshow(np.clip(imgs[i], 0, 1))
        if titles:
            axes[0, i].set_title(titles[i], fontsize=8)
    axes[0, 0].set_ylabel("face", fontsize=8)
    for r, (label, up, flat) in enumerate(rows, start=1):
        im = None
        for i in range(b):
            axes[r, i].imshow(np.clip(imgs[i], 0, 1).mean(-1), cmap="gray", vmin=0, vmax=1)
            if flat[i]:
                axes[r, i].text(0.5, 0.5, "constant map:\nnot drawn", transform=axes[r, i].transAxes, ha="center",
                                va="center", fontsize=7, color="black", bbox={"facecolor": "white", "alpha": 0.85})
            else:
                im = axes[r, i].imshow(up[i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
        axes[r, 0].set_ylabel(label, fontsize=8)
        fig.vitfer_drawn[label] = up
        if im is not None:
            cb = fig.colorbar(im, ax=list(axes[r]), shrink=0.9, pad=0.02, aspect=12)
            cb.set_label("per image: min - max", fontsize=7)
            cb.set_ticks([0, 0.5, 1])
            cb.ax.tick_params(labelsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _suptitle(fig, title)
    return fig


def plot_model_attention(
    model: Any, x: Any, titles: Optional[Sequence[str]] = None, title: str = "", layer: Any = None,
    maps: Optional[Sequence[Any]] = None,
) -> tuple[Any, list[Any]]:
    """The attention figure of the report and the demo: the faces ``x`` (B, C, H, W, normalised
    model inputs) and, one row each, the :func:`~vitfer.analysis.attention.heatmaps` of
    ``model``'s family (Grad-CAM at ``layer``, default the deepest at least 6x6).

    Returns ``(figure, heatmaps)``; a map kind constant over every face gets no row, and the
    figure is ``None`` when no row is left (the heat maps say why: ``flat``). ``maps``: heat maps
    already computed for ``x`` (then ``model`` only gives the display mean/std).
    """
    from .attention import heatmaps

    hms = list(maps) if maps is not None else heatmaps(model, x, layer=layer)
    rows = {h.title: h for h in hms if not bool(h.flat.all())}
    if not rows:
        return None, hms
    return plot_attention(display_images(x, model.pretrained_cfg), rows, titles, title=title), hms


def plot_gating(gating: np.ndarray, title: str = "", init: Optional[float] = None) -> Any:
    """ConViT's GPSA gates (layers, heads) as an annotated heat map (left) and as lines (right):
    one line a head over the GPSA layers and the mean over the heads (1: positional, 0: content).

    ``init``: the gate every head started at (:func:`vitfer.analysis.gpsa_gates` gives it, 0.731
    for ConViT): drawn dashed on the right, and the heat map's colours then diverge from it (white =
    unchanged, red = more positional, blue = more by content than at the start)."""
    g = np.asarray(gating, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"plot_gating needs (layers, heads) gates, got shape {g.shape}")
    centred = init is not None and 0.0 < float(init) < 1.0
    if init is not None and not centred:
        raise ValueError(f"plot_gating: init must be a gate in (0, 1), got {init}")
    fig = figure(figsize=(11, 4))
    ax_map, ax_line = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    if centred:
        from matplotlib.colors import TwoSlopeNorm

        norm = TwoSlopeNorm(vcenter=float(init), vmin=0.0, vmax=1.0)
        im = ax_map.imshow(g, cmap="RdBu_r", norm=norm, aspect="auto")
        dark = np.abs(norm(g) - 0.5) > 0.3
        map_title = f"gate sigmoid(lambda): white = initial {init:.2f}, red = more positional, blue = more content"
    else:
        im = ax_map.imshow(g, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        dark = g <= 0.5
        map_title = "gating sigmoid(lambda): 1 = positional, 0 = content"
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            ax_map.text(j, i, f"{g[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark[i, j] else "black")
    ax_map.set(xlabel="head", ylabel="GPSA layer")
    ax_map.set_title(map_title, fontsize=9)
    ax_map.set_xticks(range(g.shape[1]))
    ax_map.set_yticks(range(g.shape[0]), [str(i + 1) for i in range(g.shape[0])])
    fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04)
    layers = np.arange(1, g.shape[0] + 1)
    for h in range(g.shape[1]):
        ax_line.plot(layers, g[:, h], "-", lw=0.9, alpha=0.55, color=f"C{h % 10}",
                     label=(f"head {h}" if g.shape[1] <= 8 else ("heads" if h == 0 else None)))
    ax_line.plot(layers, g.mean(1), "-o", color="black", lw=2, label="mean over heads")
    if init is not None:
        ax_line.axhline(float(init), ls="--", color="grey", lw=1.2, label=f"initial gate {init:.3f}")
    ax_line.set(xlabel="GPSA layer", ylabel="gate", ylim=(0, 1), title="how positional each layer still is")
    ax_line.set_xticks(layers)
    ax_line.grid(alpha=0.3)
    ax_line.legend(fontsize=7, ncol=2 if g.shape[1] > 4 else 1)
    _suptitle(fig, title)
    fig.tight_layout()
    return fig


def plot_attention_distance(distances: np.ndarray, n_local: int = 0, title: str = "") -> Any:
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
    _suptitle(fig, title)
    fig.tight_layout()
    return fig


def plot_fold_accuracy(folds: Sequence[str], accuracy: Sequence[float], n: Optional[Sequence[int]] = None,
                       title: str = "") -> Any:
    """Test accuracy of every fold of a cross-validation (bars, in %), with the mean +- std
    over the folds (line and band); ``n`` (test images a fold) is written above each bar."""
    acc = 100 * np.asarray(accuracy, dtype=np.float64)
    if acc.ndim != 1 or len(acc) != len(folds) or not len(acc):
        raise ValueError(f"plot_fold_accuracy needs one accuracy a fold, got {len(acc)} for {len(folds)} folds")
    fig = figure(figsize=(max(6.0, 0.7 * len(acc) + 2.5), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(acc))
    ax.bar(x, acc, color="C0", alpha=0.8)
    mean, std = acc.mean(), (acc.std(ddof=1) if len(acc) > 1 else 0.0)
    ax.axhline(mean, color="black", lw=1.2, label=f"mean {mean:.1f}%")
    ax.axhspan(mean - std, mean + std, color="grey", alpha=0.2, label=f"+- std {std:.1f}")
    if n is not None:
        for xi, a, k in zip(x, acc, n):
            ax.text(xi, a + 1, f"n={k}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(folds), rotation=45 if len(acc) > 6 else 0, ha="right" if len(acc) > 6 else "center")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 105), title="test accuracy per fold")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _suptitle(fig, title)
    fig.tight_layout()
    return fig
