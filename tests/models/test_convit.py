"""ConViT against timm 1.0.31 with identical weights (fp32, CPU, eval, num_classes=7).

Other input sizes: timm has no checkpoint filter for ConViT, so ``timm.create_model(name,
img_size=X)`` cannot load 224 weights. The tests build timm's model with ``img_size=X``, resample
the 224 state dict with ``vitfer.models.convit.checkpoint_filter_fn`` (bicubic, no class slot,
the same function ViT uses) and load that one resampled dict into timm's model and into ours
(built at X, or moved there with ``set_input_size``).
"""
from __future__ import annotations

import pytest
import timm
import torch
from parity import assert_close, assert_logits_close, copy_weights, max_abs_diff, randomize_

import vitfer.models.convit  # noqa: F401  (registers the convit names)
from vitfer.models import create_model, get_pretrained_cfg
from vitfer.models.convit import ConViT, checkpoint_filter_fn, convit_base, convit_small, convit_tiny

VARIANTS = ["convit_tiny", "convit_small", "convit_base"]
HEADS = {"convit_tiny": 4, "convit_small": 9, "convit_base": 16}
FACTORIES = {"convit_tiny": convit_tiny, "convit_small": convit_small, "convit_base": convit_base}
OTHER = 112  # 7x7 patches
FEAT_ATOL = 1e-5


@pytest.fixture(scope="module")
def pairs():
    """``pairs(name)`` -> (ours, timm), randomized identical weights at 224, built once per module."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            ref = timm.create_model(name, num_classes=7).eval()
            randomize_(ref, VARIANTS.index(name))
            with torch.no_grad():  # gates spread around 0.5: both terms of every GPSA mix matter
                for blk in ref.blocks[: ref.local_up_to_layer]:
                    blk.attn.gating_param.copy_(torch.linspace(-1.5, 1.5, blk.attn.num_heads))
            ours = FACTORIES[name](num_classes=7).eval()
            assert isinstance(ours, ConViT) and ours.model_name == name
            copy_weights(ref, ours)
            cache[name] = (ours, ref)
        return cache[name]

    yield get
    cache.clear()


def _x(size: int, seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_and_features_224(pairs, name):
    ours, ref = pairs(name)
    x = _x(224, 0)
    with torch.no_grad():
        f_o, f_r = ours.forward_features(x), ref.forward_features(x)
        d_f = assert_close(f_o, f_r, FEAT_ATOL, "features")
        d_l = assert_logits_close(ours.forward_head(f_o), ref.forward_head(f_r))
        d_p = assert_close(ours.forward_head(f_o, pre_logits=True), ref.forward_head(f_r, pre_logits=True), FEAT_ATOL)
    print(f"\n{name} @224: logits {d_l:.1e}, features {d_f:.1e}, pre_logits {d_p:.1e}")


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_other_size(pairs, name):
    """timm's ``img_size=112`` model vs ours moved with ``set_input_size``, same resampled weights."""
    ours224, ref224 = pairs(name)
    ours = ours224.copy()
    ours.set_input_size(OTHER)
    assert ours.img_size == (OTHER, OTHER) and ours.pretrained_cfg["input_size"] == (3, OTHER, OTHER)
    assert all(m.rel_indices.shape == (49, 49, 3) for m in ours.gpsa_layers)
    sd = checkpoint_filter_fn(ref224.state_dict(), ours)
    assert sd["pos_embed"].shape == (1, 49, ours.embed_dim)
    assert torch.equal(sd["pos_embed"], ours.pos_embed)  # set_input_size resamples the same way
    ref = timm.create_model(name, num_classes=7, img_size=OTHER).eval()
    ref.load_state_dict(sd, strict=True)
    x = _x(OTHER, 2)
    with torch.no_grad():
        d_f = assert_close(ours.forward_features(x), ref.forward_features(x), FEAT_ATOL, "features")
        d_l = assert_logits_close(ours(x), ref(x))
    print(f"\n{name} @{OTHER}: logits {d_l:.1e}, features {d_f:.1e}")


def test_built_at_other_size_loads_resampled_checkpoint(pairs):
    """``create_model(img_size=112)`` + ``checkpoint_filter_fn`` equals ``set_input_size(112)``;
    the original repository's ``{"model": ...}`` wrapper is unwrapped."""
    ours224, ref224 = pairs("convit_tiny")
    built = create_model("convit_tiny", num_classes=7, img_size=OTHER).eval()
    built.load_state_dict(checkpoint_filter_fn({"model": ref224.state_dict()}, built), strict=True)
    moved = ours224.copy()
    moved.set_input_size(OTHER)
    x = _x(OTHER, 3)
    with torch.no_grad():
        assert torch.equal(built(x), moved(x))


def test_gating_values_and_attention_distances(pairs):
    ours, ref = pairs("convit_tiny")
    g = ours.gating_values()
    assert g.shape == (10, 4)
    assert torch.equal(g, torch.stack([torch.sigmoid(b.attn.gating_param) for b in ref.blocks[:10]]))
    x = _x(224, 1)
    with torch.no_grad():
        maps = ours.attention_maps(x)
        dist = ours.attention_distances(x)
        # timm: get_attention_map of every GPSA block on that block's input
        h = ref.pos_drop(ref.patch_embed(x) + ref.pos_embed)
        ref_dist = []
        for blk in ref.blocks[:10]:
            ref_dist.append(blk.attn.get_attention_map(blk.norm1(h)))
            h = blk(h)
    assert dist.shape == (12, 4) and (dist > 0).all()
    d = assert_close(dist[:10], torch.stack(ref_dist), 1e-5 * max(1.0, dist.abs().max().item()), "distances")
    assert [tuple(m.shape) for m in maps] == [(2, 4, 196, 196)] * 10 + [(2, 4, 197, 197)] * 2
    for m in maps:
        assert_close(m.sum(-1), torch.ones(m.shape[:-1]), 1e-5, "attention rows sum to 1")
    print(f"\nconvit_tiny mean attention distances vs timm get_attention_map: {d:.1e}")


def test_sdpa_impl_matches_timm(pairs):
    """The CUDA formulation forced on CPU for the whole model (GPSA split form, MHSA SDPA)."""
    ours, ref = pairs("convit_tiny")
    ours = ours.copy()
    ours.set_attn_impl("sdpa")
    assert all(m.impl == "sdpa" for m in ours.gpsa_layers) and ours.blocks[11].attn.impl == "sdpa"
    x = _x(224, 4)
    with torch.no_grad():
        d = assert_logits_close(ours(x), ref(x))
    print(f"\nconvit_tiny impl=sdpa @224: logits {d:.1e}")


def test_training_gradients_match_timm(pairs):
    ours, ref = pairs("convit_tiny")
    ours.train(), ref.train()
    try:
        x, y = _x(224, 5), torch.tensor([1, 5])
        for m in (ours, ref):
            m.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()
        worst = 0.0
        ref_params = dict(ref.named_parameters())
        for name, p in ours.named_parameters():
            q = ref_params[name].grad
            d = max_abs_diff(p.grad, q)
            assert d <= 1e-5 * max(1.0, q.abs().max().item()), f"grad of {name}: {d:.2e}"
            worst = max(worst, d)
    finally:
        ours.eval(), ref.eval()
        ours.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
    print(f"\nconvit_tiny parameter gradients (cross-entropy, train mode): max diff {worst:.1e}")


def test_fresh_init_matches_timm_local_init():
    """GPSA's convolutional init in a fresh model (v = I, pos_proj offsets, gates of ones) is timm's."""
    ref = timm.create_model("convit_tiny", num_classes=7, locality_strength=0.5)
    ours = create_model("convit_tiny", num_classes=7, locality_strength=0.5)
    ref_sd = ref.state_dict()
    for i, m in enumerate(ours.gpsa_layers):
        assert m.locality_strength == 0.5
        for key in ("v.weight", "pos_proj.weight", "pos_proj.bias", "gating_param"):
            assert torch.equal(m.state_dict()[key], ref_sd[f"blocks.{i}.attn.{key}"]), (i, key)
    assert torch.equal(ours.gpsa_layers[0].v.weight, torch.eye(192))
    # structure: the same keys in the same order, the same shapes
    ours_sd = ours.state_dict()
    assert list(ours_sd) == list(ref_sd) and all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    assert ours.pos_embed.shape == (1, 196, 192) and "blocks.10.attn.qkv.weight" in ours_sd
    assert "blocks.10.attn.qkv.bias" not in ours_sd and "blocks.0.attn.qk.bias" not in ours_sd
    assert ours.num_params() == sum(p.numel() for p in ref.parameters())
    assert ours.no_weight_decay() == ref.no_weight_decay()


@pytest.mark.parametrize("name", VARIANTS)
def test_pretrained_cfg(name):
    cfg = get_pretrained_cfg(name)
    ref_cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.hf_hub_id == f"timm/{name}.fb_in1k"
    assert cfg.input_size == ref_cfg.input_size == (3, 224, 224)
    assert cfg.crop_pct == ref_cfg.crop_pct and cfg.interpolation == ref_cfg.interpolation
    assert cfg.mean == ref_cfg.mean and cfg.std == ref_cfg.std and cfg.fixed_input_size
    assert cfg.first_conv == ref_cfg.first_conv and cfg.classifier == ref_cfg.classifier


def test_overrides_head_and_drop_rates():
    m = convit_tiny(num_classes=0, drop_rate=0.1, drop_path_rate=0.2, attn_drop_rate=0.1, proj_drop_rate=0.1)
    ref = timm.create_model("convit_tiny", num_classes=0, drop_rate=0.1, drop_path_rate=0.2)
    assert m.embed_dim == m.num_features == 192 and m.head_drop.p == 0.1
    rate = lambda mod: getattr(mod, "drop_prob", 0.0)  # noqa: E731  (Identity when 0)
    ours_rates = [rate(b.drop_path if hasattr(b, "drop_path") else b.drop_path1) for b in m.blocks]
    assert ours_rates == pytest.approx([rate(b.drop_path) for b in ref.blocks])
    assert m.blocks[0].attn.attn_drop.p == 0.1 and m.blocks[11].attn.attn_drop.p == 0.1
    m.eval()
    with torch.no_grad():
        assert m(_x(224, 6, 1)).shape == (1, 192)
    m.reset_classifier(7)
    assert m.get_classifier().out_features == 7 and m.num_classes == 7
    assert m.pretrained_cfg["num_classes"] == 7  # the model's own (issue 18, item 19)
    with pytest.raises(TypeError, match="unknown override"):
        convit_tiny(embed_dim=64)


def test_input_checks(pairs):
    m, _ = pairs("convit_tiny")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        m(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match="224x224, got 160x160"):
        m(torch.randn(1, 3, 160, 160))


def test_non_square_grid_is_a_clear_error(pairs):
    with pytest.raises(ValueError, match=r"convit_tiny needs a square patch grid.*14x10 patches"):
        create_model("convit_tiny", img_size=(224, 160))
    m = pairs("convit_tiny")[0].copy()
    with pytest.raises(ValueError, match="square patch grid"):
        m.set_input_size((224, 160))
    assert m.img_size == (224, 224) and m.pos_embed.shape == (1, 196, 192)
    assert all(g.grid_size == (14, 14) for g in m.gpsa_layers)
