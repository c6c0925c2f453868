"""Attention rollout, GPSA gating, attention distances, CrossViT cross-attention and Grad-CAM."""
from __future__ import annotations

import pytest
import torch

from vitfer.analysis import (
    Heatmap, attention_distances, attention_heatmaps, attention_rollout, choose_cam_layer, crossvit_cls_attention,
    gpsa_gating, grad_cam, heatmaps, map_contrast, rollout_map,
)

from analysis_helpers import tiny


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_base_r50_s16_224", "convit_tiny"])
def test_rollout_rows_sum_to_one(name):
    m = tiny(name)
    x = torch.randn(2, 3, 32, 32)
    R = attention_rollout(m, x)
    n = 16 if name != "vit_base_r50_s16_224" else 4  # 4x4 patches; the hybrid's backbone: 32 / 16 = 2x2
    assert R.shape == (2, n + 1, n + 1)
    torch.testing.assert_close(R.sum(-1), torch.ones(2, n + 1))
    assert (R >= 0).all()
    heat = rollout_map(m, x)
    assert heat.shape == (2, int(n**0.5), int(n**0.5))
    assert heat.min() >= 0 and heat.max() <= 1 and torch.isclose(heat.amax((1, 2)), torch.ones(2)).all()


def test_rollout_leaves_the_model_as_it_was():
    """Capturing attention runs the same layers: logits and train/eval mode are unchanged."""
    m = tiny("convit_tiny").train()
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        before = m(x)
    m.train()
    attention_rollout(m, x)
    assert m.training
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), before, rtol=0, atol=0)


def test_rollout_of_one_block_is_its_mixed_attention():
    m = tiny("vit_tiny_patch16_224", depth=1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        (w,) = m.attention_maps(x)
    eye = torch.eye(w.shape[-1])
    torch.testing.assert_close(attention_rollout(m, x, residual=0.5)[0], 0.5 * eye + 0.5 * w[0].mean(0))


def test_gpsa_gating_in_unit_interval():
    m = tiny("convit_tiny")
    with torch.no_grad():
        m.gpsa_layers[0].gating_param.copy_(torch.tensor([-20.0, 0.0, 1.0, 20.0]))
    g = gpsa_gating(m)
    assert g.shape == (2, 4)  # 2 GPSA layers, convit_tiny's 4 heads
    assert ((g >= 0) & (g <= 1)).all()
    torch.testing.assert_close(g[0], torch.sigmoid(torch.tensor([-20.0, 0.0, 1.0, 20.0])))
    with pytest.raises(ValueError, match="ConViT"):
        gpsa_gating(tiny("vit_tiny_patch16_224"))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convit_tiny"])
def test_attention_distances(name):
    m = tiny(name)
    d = attention_distances(m, torch.randn(2, 3, 32, 32))
    assert d.shape == (m.cfg.depth, m.cfg.num_heads)
    # on a 4x4 grid no distance exceeds the diagonal
    assert (d >= 0).all() and (d <= 18**0.5).all()


def test_crossvit_cross_attention_maps():
    m = tiny("crossvit_tiny_240")
    maps = crossvit_cls_attention(m, torch.randn(2, 3, 48, 48))
    # each branch's class token attends to the other branch's patch grid
    grids = [tuple(pe.grid_size) for pe in m.patch_embed]
    assert [tuple(t.shape) for t in maps] == [(2, *grids[1]), (2, *grids[0])]
    assert all(t.min() >= 0 and t.max() <= 1 for t in maps)


@pytest.mark.parametrize("name", ["resnet18d", "vgg16"])
def test_grad_cam(name):
    m = tiny(name)
    x = torch.randn(3, 3, 64, 64)
    cam = grad_cam(m, x)
    assert cam.ndim == 3 and cam.shape[0] == 3 and cam.shape[1] >= 2
    assert cam.min() >= 0 and cam.max() <= 1
    assert all(p.grad is None for p in m.parameters())  # no gradients left in the model


def test_heatmaps_name_the_family_method_and_where_it_is_taken():
    x = torch.randn(1, 3, 32, 32)
    assert list(attention_heatmaps(tiny("vit_tiny_patch16_224"), x)) == ["attention rollout, 2 blocks (4x4)"]
    # at 32 px ResNet-D's layer1 is 8x8, layer2 4x4: Grad-CAM at layer1
    assert list(attention_heatmaps(tiny("resnet18d"), x)) == ["Grad-CAM, layer1 (8x8)"]
    with pytest.raises(ValueError, match="rollout"):
        attention_rollout(tiny("resnet18d"), x)


@pytest.mark.parametrize("name, size, layer, grid", [
    ("resnet18d", 48, "layer2", (6, 6)),    # layer3 3x3, layer4 2x2 (the old default: a flat tint)
    ("resnet18d", 224, "layer4", (7, 7)),
    ("resnet18d", 64, "layer2", (8, 8)),
    ("vgg16", 48, "features.10", (6, 6)),   # tiny VGG: ReLUs at 48, 24, 12, 6 px
    ("vit_base_r50_s16_224", 48, "patch_embed.backbone.stages.1", (6, 6)),  # tokens 3x3: backbone Grad-CAM
])
def test_grad_cam_layer_is_the_deepest_at_least_6x6(name, size, layer, grid):
    m = tiny(name, **({"img_size": size} if name.startswith("vit") else {}))
    x = torch.randn(2, 3, size, size)
    (h,) = heatmaps(m, x)
    assert (h.name, h.source, h.grid) == ("Grad-CAM", layer, grid)
    assert choose_cam_layer(m, x)[0] == layer and choose_cam_layer(m, x)[2] == grid
    assert grad_cam(m, x).shape == (2, *grid)


def test_grad_cam_layer_can_be_named():
    m = tiny("resnet18d")
    x = torch.randn(1, 3, 48, 48)
    assert grad_cam(m, x, layer="layer3").shape == (1, 3, 3)
    assert heatmaps(m, x, layer="layer4")[0].title == "Grad-CAM, layer4 (2x2)"
    assert grad_cam(m, x, layer=m.layer1).shape == (1, 12, 12)
    with pytest.raises(ValueError, match="layer='layer9'"):
        grad_cam(m, x, layer="layer9")


def test_constant_maps_are_flagged():
    raw = torch.stack([torch.full((6, 6), 0.3), torch.zeros(6, 6), torch.arange(36.0).view(6, 6)])
    h = Heatmap("test", "here", raw)
    assert h.flat.tolist() == [True, True, False]
    assert map_contrast(raw).tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert h.subset(slice(2, 3)).flat.tolist() == [False] and h.subset(0).raw.shape == (1, 6, 6)
