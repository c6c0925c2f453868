"""Features, t-SNE and every figure: written and not blank."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from vitfer.analysis import (
    extract_features, plot_attention, plot_attention_distance, plot_confusion, plot_gating, plot_learning_curves,
    plot_tsne, save_figure, tsne,
)

from analysis_helpers import png_variance, tiny

CLASSES = ["anger", "disgust", "fear", "happy", "neutral", "sadness", "surprise"]


def test_extract_features_and_tsne_shapes():
    from vitfer.data import SyntheticFaces, build_transforms

    m = tiny("convit_tiny")
    data = SyntheticFaces(n=30, image_size=32, seed=0)
    ds = data.subset(list(range(30)), transform=build_transforms(m.pretrained_cfg, train=False))
    f = extract_features(m, ds, batch_size=8)
    assert f["features"].shape == (30, m.num_features) and f["logits"].shape == (30, 7)
    assert f["labels"].shape == (30,) and f["predictions"].shape == (30,)
    assert np.array_equal(f["labels"], np.asarray(ds.labels))
    for dim in (2, 3):
        emb = tsne(f["features"], dim=dim)
        assert emb.shape == (30, dim) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match="2 or 3"):
        tsne(f["features"], dim=4)


def _figures():
    rng = np.random.default_rng(0)
    hist = [{"epoch": e, "train_accuracy": 0.2 + 0.1 * e, "train_loss": 2 - 0.2 * e, "val_accuracy": 0.15 + 0.1 * e,
             "val_loss": 2.1 - 0.2 * e} for e in range(1, 6)]
    conf = rng.integers(0, 9, size=(7, 7)) + np.diag([20] * 7)
    labels = np.repeat(np.arange(7), 6)
    yield "curves", plot_learning_curves([{"label": "a", "history": hist, "test_accuracy": 0.61, "best_epoch": 4},
                                          {"label": "b", "history": hist[:3], "test_accuracy": 0.4}])
    yield "confusion", plot_confusion(conf, CLASSES)
    yield "tsne2d", plot_tsne(rng.normal(size=(42, 2)), labels, CLASSES)
    yield "tsne3d", plot_tsne(rng.normal(size=(42, 3)), labels, CLASSES)
    faces = rng.random((3, 32, 32, 3))
    yield "attention", plot_attention(faces, {"rollout": rng.random((3, 4, 4))}, ["a", "b", "c"])
    yield "gating", plot_gating(rng.random((10, 4)))
    yield "distance", plot_attention_distance(rng.random((12, 4)) * 3, n_local=10)


@pytest.mark.parametrize("which", ["curves", "confusion", "tsne2d", "tsne3d", "attention", "gating", "distance"])
def test_every_figure_is_written_and_not_blank(which, tmp_path):
    fig = dict(_figures())[which]
    path = save_figure(fig, tmp_path / f"{which}.png")
    assert png_variance(path) > 100.0  # a white page with a frame is far below this


def test_blank_figure_has_low_variance(tmp_path):
    """The check above tells a blank figure from a drawn one."""
    from vitfer.analysis._deps import figure

    fig = figure(figsize=(4, 3))
    fig.add_subplot().axis("off")
    assert png_variance(save_figure(fig, tmp_path / "blank.png")) < 1.0


def test_confusion_checks_class_names():
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(np.eye(3, dtype=int), ["a", "b"])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"vitfer\[plots\]"):
        plot_confusion(np.eye(2, dtype=int), ["a", "b"])


def test_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(ImportError, match=r"vitfer\[plots\]"):
        tsne(torch.randn(10, 4).numpy())
