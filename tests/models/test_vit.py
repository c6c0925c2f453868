"""ViT tiny/small/base against timm with identical weights (fp32, eval), and the registry."""
from __future__ import annotations

import pytest
import timm
import torch
from parity import assert_close, assert_logits_close, copy_weights, max_abs_diff, randomize_
from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter

from vitfer.models import create_model, get_pretrained_cfg, list_models, vit_tiny_patch16_224
from vitfer.models.vit import VisionTransformer, checkpoint_filter_fn

VARIANTS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"]


@pytest.fixture(scope="module", params=VARIANTS)
def pair(request):
    """(name, timm model, vitfer model) at 224 with the same random weights, 7 classes."""
    name = request.param
    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=7).eval()
    randomize_(ref, seed=1)  # zero biases / tiny cls token of the default init would hide bugs
    ours = create_model(name, num_classes=7).eval()
    copy_weights(ref, ours)
    return name, ref, ours


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_logits_and_features_at_224(pair, impl):
    name, ref, ours = pair
    ours.set_attn_impl(impl)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f_ref, f_ours = ref.forward_features(x), ours.forward_features(x)
        l_ref, l_ours = ref.forward_head(f_ref), ours.forward_head(f_ours)
        p_ref, p_ours = ref.forward_head(f_ref, pre_logits=True), ours.forward_head(f_ours, pre_logits=True)
    d_logits = assert_logits_close(l_ours, l_ref)
    d_feat = assert_close(f_ours, f_ref, 1e-5, "features")
    assert_logits_close(p_ours, p_ref, "pre-logits")
    assert l_ours.shape == (2, 7)
    print(f"\n{name} 224 {impl}: logits {d_logits:.2e} features {d_feat:.2e} (max|ref| {l_ref.abs().max():.2f})")
    ours.set_attn_impl("auto")


@pytest.mark.parametrize("size", [160, 384])
def test_other_sizes_resample_like_timm(pair, size):
    """timm: ``img_size=`` + its checkpoint filter; vitfer: ``set_input_size`` on a copy."""
    name, ref, ours = pair
    if name == "vit_base_patch16_224" and size == 384:
        batch = 1
    else:
        batch = 2
    ref_s = timm.create_model(name, num_classes=7, img_size=size).eval()
    ref_s.load_state_dict(timm_filter(ref.state_dict(), ref_s), strict=True)
    ours_s = ours.copy()
    ours_s.set_input_size(size)
    assert ours_s.pretrained_cfg["input_size"] == (3, size, size)
    # the same thing through the filter function and a model built at that size
    built = create_model(name, num_classes=7, img_size=size).eval()
    built.load_state_dict(checkpoint_filter_fn(ours.state_dict(), built), strict=True)
    assert torch.equal(built.pos_embed, ours_s.pos_embed)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        l_ref, l_ours = ref_s(x), ours_s(x)
        f_ref, f_ours = ref_s.forward_features(x), ours_s.forward_features(x)
    d = assert_logits_close(l_ours, l_ref)
    assert_close(f_ours, f_ref, 1e-5, "features")
    print(f"\n{name} {size}: logits {d:.2e} features {max_abs_diff(f_ours, f_ref):.2e}")


def test_train_mode_gradients_match_timm():
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=7, img_size=64).train()
    randomize_(ref, seed=4)
    ours = create_model("vit_tiny_patch16_224", num_classes=7, img_size=64).train()
    copy_weights(ref, ours)
    x = torch.randn(3, 3, 64, 64)
    y = torch.tensor([0, 3, 6])
    for m in (ref, ours):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    gr = dict(ref.named_parameters())
    worst = 0.0
    for n, p in ours.named_parameters():
        worst = max(worst, assert_close(p.grad, gr[n].grad, 1e-5, f"grad {n}"))
    print(f"\nvit_tiny train grads max diff {worst:.2e}")


def test_input_errors_name_expected_and_actual():
    m = vit_tiny_patch16_224(num_classes=7, img_size=64).eval()
    with pytest.raises(ValueError, match="expects input size 64x64, got 96x96"):
        m(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        m(torch.randn(1, 1, 64, 64))
    grey = vit_tiny_patch16_224(num_classes=7, img_size=64, in_chans=1).eval()
    assert grey(torch.randn(2, 1, 64, 64)).shape == (2, 7)


def test_uniform_api():
    m = vit_tiny_patch16_224(num_classes=7, img_size=64, drop_path_rate=0.1, drop_rate=0.1)
    assert isinstance(m, VisionTransformer)
    assert m.model_name == "vit_tiny_patch16_224"
    assert m.num_features == 192 and m.get_classifier().out_features == 7
    cfg = m.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert cfg["input_size"] == (3, 64, 64) and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["crop_pct"] == 0.9
    assert m.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    m.reset_classifier(3)
    assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 192)
    assert {"pos_embed", "cls_token"} <= m.no_weight_decay()
    maps = m.attention_maps(torch.randn(2, 3, 64, 64))
    assert len(maps) == 12 and maps[0].shape == (2, 3, 17, 17)
    assert_close(maps[5].sum(-1), torch.ones(2, 3, 17), 1e-5, "attention rows sum to 1")
    assert sum(p.numel() for p in create_model("vit_tiny_patch16_224").parameters()) == 5_717_416


def test_registry():
    assert set(VARIANTS) <= set(list_models())
    assert list_models("vit_*_patch16_224") == sorted(VARIANTS)
    assert get_pretrained_cfg("vit_base_patch16_224").tag == "augreg2_in21k_ft_in1k"
    with pytest.raises(KeyError, match="did you mean.*vit_tiny_patch16_224"):
        create_model("vit_tiny_patch16_244")
    with pytest.raises(TypeError, match=r"unknown override\(s\) \['num_clases'\]"):
        create_model("vit_tiny_patch16_224", num_clases=7)
    assert create_model("vit_tiny_patch16_224.augreg_in21k", num_classes=2, img_size=32).num_classes == 2
    with pytest.raises(ValueError, match="global_pool"):
        create_model("vit_tiny_patch16_224", global_pool="max")
