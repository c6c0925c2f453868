"""The small from-scratch hybrids against timm, identical weights, fp32: the ViTs on a
convolutional stem (backbone "convstem": timm's VisionTransformer + HybridEmbed(ConvStem)) and on
ResNet-18-D's first stages (backbone "resnetd": HybridEmbed(resnet18d features_only))."""
from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from parity import (
    NUM_CLASSES,
    assert_logits_close,
    assert_same_state_dict_layout,
    copy_weights,
    randomize_,
    train_step_diffs,
)
from timm.layers.hybrid_embed import HybridEmbed as TimmHybridEmbed
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from timm.models.vision_transformer_hybrid import ConvStem as TimmConvStem

from vitfer.layers import ConvStem
from vitfer.models import create_model, get_model_spec
from vitfer.models.vit_hybrid import HybridViTConfig, ResNetDStages


def _timm_twin(model, cfg: HybridViTConfig) -> TimmVisionTransformer:
    if cfg.backbone == "resnetd":
        stem = timm.create_model("resnet18d", features_only=True, out_indices=(len(cfg.resnet_layers),),
                                 in_chans=cfg.in_chans)
    else:
        stem = TimmConvStem(in_chans=cfg.in_chans, depth=len(cfg.stem_channels), channels=cfg.stem_channels,
                            kernel_size=cfg.stem_kernel_size, stride=cfg.stem_stride)
    return TimmVisionTransformer(
        img_size=cfg.img_size, patch_size=1, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        global_pool=cfg.global_pool, embed_layer=partial(TimmHybridEmbed, backbone=stem, proj=cfg.embed_proj),
    )


@pytest.fixture(scope="module", params=["vit_tiny_cs_48", "vit_small_cs_48", "vit_tiny_r18d_48"])
def pair(request):
    # NCHW backbones, the arithmetic timm runs (channels-last sums in another order; see test_vit_hybrid)
    ours = create_model(request.param, num_classes=NUM_CLASSES, in_chans=3, channels_last=False)
    ref = randomize_(_timm_twin(ours, ours.cfg), 0).eval()
    copy_weights(ref, ours)
    return ours.eval(), ref


@pytest.mark.parametrize("name, backbone", [("vit_tiny_cs_48", ConvStem), ("vit_tiny_r18d_48", ResNetDStages)])
def test_registered_and_sized_for_small_faces(name, backbone):
    spec = get_model_spec(name)
    assert spec.family == "vit_hybrid"
    m = create_model(name, num_classes=NUM_CLASSES)
    assert m.patch_embed.grid_size == (6, 6) and m.pos_embed.shape[1] == 37
    assert isinstance(m.patch_embed.backbone, backbone)
    assert m.pretrained_cfg["input_size"] == (3, 48, 48) and spec.pretrained_cfg.hf_hub_id is None
    assert m(torch.zeros(2, 3, 48, 48)).shape == (2, NUM_CLASSES)


def test_channels_last_backbone_is_close_to_timm():
    ours = create_model("vit_tiny_r18d_48", num_classes=NUM_CLASSES).eval()
    ref = randomize_(_timm_twin(ours, ours.cfg), 0).eval()
    copy_weights(ref, ours)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_logits_close(ours(x), ref(x))


def test_state_dict_layout_matches_timm(pair):
    assert_same_state_dict_layout(*pair, ordered=False)
    sd = pair[0].state_dict()
    if pair[0].cfg.backbone == "convstem":
        assert {"patch_embed.backbone.0.conv.weight", "patch_embed.backbone.0.bn.running_mean"} <= set(sd)
    else:
        assert {"patch_embed.backbone.conv1.0.weight", "patch_embed.backbone.layer2.1.bn2.running_mean",
                "patch_embed.proj.weight"} <= set(sd)


def test_eval_logits_and_features_match_timm(pair):
    ours, ref = pair
    x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_logits_close(ours.forward_features(x), ref.forward_features(x), "features")
        assert_logits_close(ours(x), ref(x))


def test_train_step_matches_timm(pair):
    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 3])
    train_step_diffs(*pair, x, target, "vit_cs", channels_last=False)


@pytest.mark.parametrize("img, stride, want", [(48, (2, 2, 2, 1), (6, 6)), (50, (2, 2, 2, 1), (7, 7)), (64, (2, 2, 1), (16, 16))])
def test_feature_grid_matches_the_convolutions(img, stride, want):
    stem = ConvStem(1, (8, 8, 16, 16)[-len(stride):], (3,) * (len(stride) - 1) + (1,), stride)
    assert stem.feature_size((img, img)) == want
    assert tuple(stem(torch.zeros(1, 1, img, img)).shape[-2:]) == want


def test_bad_stem_settings_are_named():
    with pytest.raises(ValueError, match="as many channels"):
        ConvStem(3, (8, 16), (3,), (2, 2))
    with pytest.raises(ValueError, match="stem_channels"):
        create_model("vit_tiny_cs_48", embed_dim=128)
    with pytest.raises(ValueError, match="backbone"):
        create_model("vit_tiny_cs_48", backbone="vgg")
    with pytest.raises(ValueError, match="resnet_layers"):
        create_model("vit_tiny_r18d_48", resnet_layers=())
