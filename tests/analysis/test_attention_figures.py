"""The report's attention figure, family by family at 48 px: maps fine enough to carry
information (6x6 cells or more, Grad-CAM at the deepest such layer), upsampled to the face,
varying over it, labelled with their layer, with a colour bar; constant maps reported, not drawn."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitfer.analysis import Heatmap, plot_attention, plot_model_attention, save_figure, upsample_maps

from analysis_helpers import FAMILIES_48, drawn_overlays, face_std, family_48, png_variance, synthetic_batch

#: CrossViT-Ti's second branch sees the face at 224/240 of its size (44 px at 48): 5x5 large patches.
MIN_GRID = {"crossvit": 5}


@pytest.mark.parametrize("family", list(FAMILIES_48))
def test_attention_figure_at_48px_varies_over_the_face(family, tmp_path):
    model = family_48(family)
    x, names = synthetic_batch(model)
    fig, hms = plot_model_attention(model, x, names, title=f"{family} at 48 px")
    assert fig is not None and hms
    for h in hms:
        assert min(h.grid) >= MIN_GRID.get(family, 6), (h.title, h.grid)
        assert not h.flat.any(), h.title
    overlays = drawn_overlays(fig)
    assert len(overlays) == len(hms) * len(x)  # one drawn map a face and a map kind
    for m in overlays:
        assert m.shape == (48, 48)  # upsampled to the face
        assert face_std(m) > 0.05, f"{family}: the drawn map is (nearly) constant over the face"
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    for h in hms:  # each row says what the map is and where it is taken
        assert any(h.source in lab and f"{h.grid[0]}x{h.grid[1]}" in lab for lab in labels), (h.title, labels)
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == len(hms)  # a colour bar a row
    png = save_figure(fig, tmp_path / f"{family}.png")
    assert png_variance(png) > 100 and png.with_suffix(".pdf").stat().st_size > 1000


def test_grad_cam_at_the_old_default_layer_is_coarse():
    """What the issue saw: at 48 px ResNet-D's last stage is 2x2; the figure's default is 6x6."""
    model = family_48("resnet")
    x, _ = synthetic_batch(model, n=2)
    _, (old,) = plot_model_attention(model, x, layer="layer4")
    _, (new,) = plot_model_attention(model, x)
    assert old.grid == (2, 2) and new.grid == (6, 6)


def test_constant_maps_are_not_drawn():
    faces = np.random.default_rng(0).random((3, 48, 48))
    raw = torch.rand(3, 6, 6)
    raw[1] = 0.25  # constant over the face
    fig = plot_attention(faces, {"m": Heatmap("rollout", "2 blocks", raw)})
    drawn = drawn_overlays(fig)
    assert len(drawn) == 2  # the constant one is not drawn
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("constant map:\nnot drawn") == 1
    assert np.isnan(fig.vitfer_drawn["rollout\n2 blocks (6x6)"][1]).all()
    # every face constant: no figure at all, the heat maps say why
    model = family_48("vit")
    x, _ = synthetic_batch(model, n=2)
    flat = Heatmap("attention rollout", "2 blocks", torch.ones(2, 6, 6))
    fig, hms = plot_model_attention(model, x, maps=[flat])
    assert fig is None and hms[0].flat.all()


def test_upsampling_is_smooth_and_per_image():
    m = np.zeros((2, 6, 6), dtype=np.float32)
    m[0, 2, 3] = 1.0
    m[1] = 5.0 + np.arange(36).reshape(6, 6)
    up = upsample_maps(m, (48, 48))
    assert up.shape == (2, 48, 48)
    assert np.allclose(up.min((1, 2)), 0) and np.allclose(up.max((1, 2)), 1)  # scaled per image
    # bicubic: many grey levels, not 36 flat blocks
    assert len(np.unique(np.round(up[1], 3))) > 200
    assert np.unravel_index(up[0].argmax(), (48, 48)) in [(y, x) for y in (19, 20) for x in (27, 28)]  # cell (2, 3)
