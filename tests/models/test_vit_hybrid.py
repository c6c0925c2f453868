"""ViT-R50 hybrid against timm with identical weights (fp32, num_classes=7)."""
from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from parity import (
    NUM_CLASSES,
    assert_close,
    assert_logits_close,
    assert_same_state_dict_layout,
    copy_weights,
    randomize_,
    train_step_diffs,
)
from timm.layers.hybrid_embed import HybridEmbed as TimmHybridEmbed
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from timm.models.vision_transformer_hybrid import _resnetv2
from timm.models.vision_transformer_hybrid import checkpoint_filter_fn as timm_filter_fn

from vitfer.models import create_model, get_model_spec
from vitfer.models.vit_hybrid import (
    HybridViTConfig,
    HybridVisionTransformer,
    checkpoint_filter_fn,
    vit_base_r50_s16_224,
    vit_base_resnet50_384,
)


@pytest.fixture(scope="module")
def pair224():
    ref = randomize_(timm.create_model("vit_base_r50_s16_224", num_classes=NUM_CLASSES), 0).eval()
    ours = vit_base_r50_s16_224(num_classes=NUM_CLASSES).eval()
    copy_weights(ref, ours)
    return ours, ref


@pytest.fixture(scope="module")
def pair384(pair224):
    """The 384 models, each loaded from the 224 weights through its own checkpoint filter
    (position embeddings resampled from 14x14 to 24x24)."""
    sd = pair224[1].state_dict()
    ref = timm.create_model("vit_base_r50_s16_384", num_classes=NUM_CLASSES).eval()
    ref.load_state_dict(timm_filter_fn(sd, ref))
    ours = vit_base_resnet50_384(num_classes=NUM_CLASSES).eval()
    ours.load_state_dict(checkpoint_filter_fn(sd, ours))
    return ours, ref


def test_state_dict_keys_and_shapes_match_timm(pair224):
    # same names and shapes; patch_embed.proj is registered before patch_embed.backbone here
    assert_same_state_dict_layout(*pair224, ordered=False)
    assert {"patch_embed.backbone.stem.conv.weight", "patch_embed.proj.weight"} <= set(pair224[0].state_dict())


# Tokens (and the class token taken as pre-logits) in the default channels-last backbone: the
# convolutions sum in another order than timm's NCHW run, and with random weights the difference
# grows to about 1.2e-4 relative by the tokens (timm against itself, NCHW against channels-last
# input, shows the same); the logits keep the standard bound. In NCHW (``channels_last=False``)
# the backbone is timm's arithmetic and the tokens agree to 1e-5 relative.
TOKEN_RTOL_CHANNELS_LAST = 3e-4
TOKEN_RTOL_NCHW = 1e-5


def _eval_parity(ours, ref, x, what, token_rtol=TOKEN_RTOL_CHANNELS_LAST):
    with torch.no_grad():
        fo, fr = ours.forward_features(x), ref.forward_features(x)
        feat = assert_close(fo, fr, token_rtol * max(1.0, fr.abs().max().item()), f"{what} tokens")
        po, pr = ours.forward_head(fo, pre_logits=True), ref.forward_head(fr, pre_logits=True)
        pre = assert_close(po, pr, token_rtol * max(1.0, pr.abs().max().item()), f"{what} pre_logits")
        lo, lr = ours.forward_head(fo), ref.forward_head(fr)
        d = assert_logits_close(lo, lr, f"{what} logits")
        assert_close(ours(x), lo, 0.0)
    print(f"{what}: logits {d:.2e} (max|ref| {lr.abs().max():.2f}), tokens {feat:.2e} (max|ref| "
          f"{fr.abs().max():.2f}), pre_logits {pre:.2e}")


def test_eval_parity_224(pair224):
    ours, ref = pair224
    x = torch.randn(2, 3, 224, 224)
    _eval_parity(ours, ref, x, "vit_base_r50_s16_224 eval 224")
    ours.patch_embed.backbone.channels_last = False
    try:
        _eval_parity(ours, ref, x, "vit_base_r50_s16_224 eval 224 NCHW", TOKEN_RTOL_NCHW)
    finally:
        ours.patch_embed.backbone.channels_last = True


def test_eval_parity_384(pair384):
    ours, ref = pair384
    assert ours.model_name == "vit_base_r50_s16_384" and ours.pos_embed.shape == (1, 577, 768)
    assert_close(ours.pos_embed, ref.pos_embed, 0.0)
    _eval_parity(ours, ref, torch.randn(1, 3, 384, 384), "vit_base_r50_s16_384 eval 384")


def test_train_step_224(pair224):
    ours, ref = pair224
    x = torch.randn(2, 3, 224, 224)
    diffs = train_step_diffs(ours, ref, x, torch.tensor([3, 0]), "vit_base_r50_s16_224", True, copy_models=False)
    print(f"vit_base_r50_s16_224 train step 224: {diffs}")


def test_wrong_input_size_and_channels(pair224):
    ours, _ = pair224
    with pytest.raises(ValueError, match="expects input size 224x224, got 240x240"):
        ours(torch.randn(1, 3, 240, 240))
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        ours(torch.randn(1, 1, 224, 224))


def test_small_hybrid_odd_size_patch2_and_set_input_size():
    """A small hybrid (1/1/1 stages, D 64) at 72x72 (a 5x5 feature map: odd sizes, asymmetric
    SAME padding) with 1x1 and 2x2 projections, against timm's VisionTransformer + HybridEmbed,
    then both moved to another input size."""
    for patch, size, new_size in [(1, 72, 100), (2, 128, 192)]:
        torch.manual_seed(0)
        ref = TimmVisionTransformer(
            img_size=size, patch_size=patch, embed_dim=64, depth=1, num_heads=2, num_classes=NUM_CLASSES,
            embed_layer=partial(TimmHybridEmbed, backbone=_resnetv2((1, 1, 1))),
        )
        randomize_(ref, 1)
        cfg = HybridViTConfig(
            img_size=size, patch_size=patch, embed_dim=64, depth=1, num_heads=2, num_classes=NUM_CLASSES,
            backbone_layers=(1, 1, 1),
        )
        ours = HybridVisionTransformer(cfg)
        copy_weights(ref, ours)
        ours.eval(), ref.eval()
        assert ours.patch_embed.grid_size == ref.patch_embed.grid_size
        _eval_parity(ours, ref, torch.randn(2, 3, size, size), f"small hybrid p{patch} {size}")
        ours.set_input_size(new_size)
        ref.set_input_size(img_size=(new_size, new_size))
        assert ours.pos_embed.shape == ref.pos_embed.shape
        _eval_parity(ours, ref, torch.randn(1, 3, new_size, new_size), f"small hybrid p{patch} {new_size}")
        assert ours.pretrained_cfg == {} and ours.img_size == (new_size, new_size)


def test_registry_alias_and_pretrained_cfg(pair224, pair384):
    assert get_model_spec("vit_base_resnet50_384").name == "vit_base_r50_s16_384"
    ours, _ = pair224
    cfg = ours.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/vit_base_r50_s16_224.orig_in21k" and cfg["num_classes"] == NUM_CLASSES
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.9 and cfg["fixed_input_size"]
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["first_conv"] == "patch_embed.backbone.stem.conv"
    cfg384 = pair384[0].pretrained_cfg
    assert cfg384["hf_hub_id"] == "timm/vit_base_r50_s16_384.orig_in21k_ft_in1k"
    assert cfg384["input_size"] == (3, 384, 384) and cfg384["crop_pct"] == 1.0
    assert ours.no_weight_decay() == {"pos_embed", "cls_token"}
    assert len(ours.attention_maps(torch.randn(1, 3, 224, 224))) == 12
    with pytest.raises(TypeError, match="unknown override"):
        create_model("vit_base_r50_s16_224", stem_type="deep")
