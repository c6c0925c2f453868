"""CrossViT, all eleven timm variants, against timm with identical weights (fp32, eval, 7 classes).

Sizes. timm offers two ways to another size, both checked:

* ``img_size=S`` at construction: the branches run at ``int(S * scale)`` with position embeddings
  of that grid. Every variant is checked built at a small size (120, or 204 for the 408 models).
* any input size at run time: each branch whose size (``img_size_scaled``: 240/224, or 408/384)
  differs from the input's gets it bicubic-resized (``align_corners=False``, no antialias), so an
  input of another size costs as much as a native one. Checked on three variants (224, 256, 384)
  and, for crossvit_tiny_240, at 256, 200x264 and with ``crop_scale``.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from parity import assert_close, assert_logits_close, max_abs_diff
from timm.layers import resample_abs_pos_embed as timm_resample

import vitfer.models.crossvit  # noqa: F401  (registers the family)
from vitfer.models import create_model, get_pretrained_cfg, list_models
from vitfer.models.crossvit import CROSSVIT_VARIANTS, CrossViT, checkpoint_filter_fn, crossvit_tiny_240

VARIANTS = list(CROSSVIT_VARIANTS)
TIMM_NAMES = sorted(n for n in timm.list_models("crossvit*"))
# Native-size checks run at batch 2, at batch 1 for the variants of 9 GMACs and more per image.
HEAVY = {"crossvit_base_240", "crossvit_18_240", "crossvit_18_dagger_240", "crossvit_15_dagger_408",
         "crossvit_18_dagger_408"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two OpenMP threads run these models
    up to 10x slower (barrier waits); the numbers compared do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_fill_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (norm weights around 1, the rest uniform with std 0.02), fast."""
    g = torch.Generator().manual_seed(seed)
    half_width = 0.02 * 3**0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.uniform_(0.8, 1.2, generator=g)
            else:
                p.uniform_(-half_width, half_width, generator=g)
    return model


def _timm_random(name: str, seed: int, **kw) -> torch.nn.Module:
    """timm model with random weights, built without timm's (slow) init: meta -> uniform noise."""
    ref = timm.create_model(name, num_classes=7, device="meta", **kw).to_empty(device="cpu")
    return _random_fill_(ref, seed).eval()


def _ours_like(ref: torch.nn.Module, name: str, **kw) -> CrossViT:
    """vitfer model holding ``ref``'s weights (built on the meta device; tensors shared with ``ref``)."""
    with torch.device("meta"):
        ours = create_model(name, num_classes=7, **kw)
    sd = ref.state_dict()
    assert set(sd) == set(ours.state_dict()), sorted(set(sd) ^ set(ours.state_dict()))[:10]
    for k, v in ours.state_dict().items():
        assert v.shape == sd[k].shape, f"{k}: {tuple(v.shape)} vs timm {tuple(sd[k].shape)}"
    ours.load_state_dict(sd, strict=True, assign=True)
    return ours.eval()


def _x(batch: int, size: int | tuple[int, int], seed: int) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _compare(ref, ours, x, what: str, check_forward: bool = False) -> dict[str, float]:
    """Logits, per-branch features and pre-logits of ``ours`` against ``ref`` on ``x``."""
    with torch.no_grad():
        f_ref = ref.forward_features(x)
        f_ours = ours.forward_features(x)
        l_ref, l_ours = ref.forward_head(f_ref), ours.forward_head(f_ours)
        p_ref, p_ours = ref.forward_head(f_ref, pre_logits=True), ours.forward_head(f_ours, pre_logits=True)
        if check_forward:  # forward() normalises only the class tokens
            assert_logits_close(ours(x), l_ref, f"{what} forward()")
    d = {"logits": assert_logits_close(l_ours, l_ref, f"{what} logits")}
    d["features"] = max(assert_logits_close(a, b, f"{what} features") for a, b in zip(f_ours, f_ref))
    d["pre_logits"] = assert_logits_close(p_ours, p_ref, f"{what} pre-logits")
    assert l_ours.shape == (x.shape[0], 7)
    assert p_ours.shape == (x.shape[0], sum(ours.embed_dim))
    print(f"\n{what}: logits {d['logits']:.1e} (max|ref| {l_ref.abs().max():.2f}), features "
          f"{d['features']:.1e}, pre-logits {d['pre_logits']:.1e}")
    return d


def test_variant_table_is_timms():
    assert sorted(VARIANTS) == TIMM_NAMES
    assert list_models(family="crossvit") == sorted(VARIANTS)


@pytest.fixture(scope="module", params=VARIANTS)
def pair(request):
    """(name, timm model, vitfer model): the same random weights, 7 classes, eval mode."""
    name = request.param
    ref = _timm_random(name, seed=1)
    return name, ref, _ours_like(ref, name)


def test_native_size(pair):
    name, ref, ours = pair
    size = ours.img_size[0]
    assert size == ref.img_size[0] and ours.img_size_scaled == [tuple(s) for s in ref.img_size_scaled]
    _compare(ref, ours, _x(1 if name in HEAVY else 2, size, seed=2), f"{name} @{size}", check_forward=True)


def _small_size(name: str) -> int:
    # branch sizes int(S * scale) must be multiples of the patch sizes (timm counts its position
    # embeddings as ((H // p) * W) // p, which is wrong otherwise, and its forward then fails)
    return 204 if name.endswith("408") else 120


def test_built_at_other_img_size(pair):
    """``img_size=`` at construction; timm's filter never resamples, so both models load our
    resampled state dict (checked against timm's ``resample_abs_pos_embed``)."""
    name, ref, ours = pair
    size = _small_size(name)
    native = ref.state_dict()
    ref_s = timm.create_model(name, num_classes=7, img_size=size, device="meta").to_empty(device="cpu").eval()
    with torch.device("meta"):
        ours_s = create_model(name, num_classes=7, img_size=size)
    sd = checkpoint_filter_fn(native, ours_s)
    for i in range(2):
        pe = native[f"pos_embed_{i}"]
        side = int((pe.shape[1] - 1) ** 0.5)
        grid = ours_s.patch_embed[i].grid_size
        expect = timm_resample(pe, list(grid), old_size=[side, side], num_prefix_tokens=1)
        assert_close(sd[f"pos_embed_{i}"], expect, 1e-6, f"resampled pos_embed_{i}")
    ref_s.load_state_dict(sd, strict=True)
    ours_s.load_state_dict(sd, strict=True, assign=True)
    ours_s.eval()
    assert ours_s.pretrained_cfg["input_size"] == (3, size, size)
    assert ours_s.img_size_scaled == [tuple(s) for s in ref_s.img_size_scaled]
    _compare(ref_s, ours_s, _x(2, size, seed=10), f"{name} built at img_size={size}")
    if name in ("crossvit_tiny_240", "crossvit_15_dagger_408"):
        # set_input_size on a copy of the native model gives the same position embeddings
        moved = ours.copy()
        moved.set_input_size(size)
        assert torch.equal(moved.pos_embed_0, ours_s.pos_embed_0)
        assert torch.equal(moved.pos_embed_1, ours_s.pos_embed_1)
        assert moved.img_size == (size, size) and moved.pretrained_cfg["input_size"] == (3, size, size)


RESIZED = [("crossvit_tiny_240", 224), ("crossvit_9_dagger_240", 256), ("crossvit_15_dagger_408", 384)]


@pytest.mark.parametrize("name,size", RESIZED, ids=[f"{n}-{s}" for n, s in RESIZED])
def test_input_of_other_size_is_resized_like_timm(name, size):
    """A native model fed another size: each branch resizes (bicubic, no antialias) as timm."""
    ref = _timm_random(name, seed=3)
    ours = _ours_like(ref, name)
    _compare(ref, ours, _x(1, size, seed=4), f"{name} @{size} (resized per branch)", check_forward=True)


def test_sdpa_impl_and_other_input_sizes_tiny():
    """Forced SDPA in the branch blocks, larger and non-square inputs, centre-crop scaling."""
    name = "crossvit_tiny_240"
    ref = _timm_random(name, seed=4)
    ours = _ours_like(ref, name)
    ours.set_attn_impl("sdpa")
    _compare(ref, ours, _x(2, 240, seed=5), f"{name} @240 sdpa")
    ours.set_attn_impl("auto")
    _compare(ref, ours, _x(2, 256, seed=6), f"{name} @256")
    _compare(ref, ours, _x(2, (200, 264), seed=7), f"{name} @200x264", check_forward=True)
    ref_c = _timm_random(name, seed=4, crop_scale=True)
    ours_c = _ours_like(ref_c, name, crop_scale=True)
    _compare(ref_c, ours_c, _x(2, 256, seed=8), f"{name} @256 crop_scale")


def test_ibm_key_spelling_and_filter():
    ref = _timm_random("crossvit_tiny_240", seed=12)
    sd = ref.state_dict()
    ibm = {k.replace("pos_embed_", "pos_embed.").replace("cls_token_", "cls_token."): v for k, v in sd.items()}
    assert "pos_embed.0" in ibm and "cls_token.1" in ibm
    ours = crossvit_tiny_240(num_classes=7)
    filtered = checkpoint_filter_fn(ibm, ours)
    assert set(filtered) == set(sd)
    ours.load_state_dict(filtered, strict=True)
    ours.eval()
    x = _x(1, 240, seed=13)
    with torch.no_grad():
        assert_logits_close(ours(x), ref(x))


def test_training_step_gradients_match_timm():
    """Train mode with stochastic depth (same RNG stream): loss and every parameter gradient."""
    name = "crossvit_9_240"
    ref = _timm_random(name, seed=14, img_size=120, drop_path_rate=0.2).train()
    ours = _ours_like(ref, name, img_size=120, drop_path_rate=0.2).train()
    x, y = _x(4, 120, seed=15), torch.tensor([0, 3, 6, 1])
    losses = []
    for m in (ref, ours):
        torch.manual_seed(16)
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss)
    assert_close(losses[1], losses[0], 1e-5, "loss")
    ref_grads = dict(ref.named_parameters())
    worst = 0.0
    for n, p in ours.named_parameters():
        g_ref = ref_grads[n].grad
        assert p.grad is not None and g_ref is not None, n
        worst = max(worst, assert_close(p.grad, g_ref, 1e-5, f"grad of {n}"))
    print(f"\n{name} train step: loss {max_abs_diff(losses[1], losses[0]):.1e}, worst grad {worst:.1e}")


def test_attention_maps_structure_and_values():
    name = "crossvit_tiny_240"
    ref = _timm_random(name, seed=17)
    ours = _ours_like(ref, name)
    x = _x(2, 240, seed=18)
    captured = {}
    hooks = [
        ref.blocks[0].blocks[0][0].attn.register_forward_hook(lambda m, a, o: captured.__setitem__("self", a[0])),
        ref.blocks[1].fusion[1].attn.register_forward_hook(lambda m, a, o: captured.__setitem__("cross", a[0])),
    ]
    with torch.no_grad():
        ref(x)
        maps = ours.attention_maps(x)
    for h in hooks:
        h.remove()
    assert len(maps) == 2
    assert [len(m["self"]) for m in maps] == [3, 12] and [len(m["cross"]) for m in maps] == [3, 3]
    assert maps[0]["self"][0].shape == (2, 3, 401, 401) and maps[1]["self"][0].shape == (2, 3, 197, 197)
    assert maps[0]["cross"][0].shape == (2, 3, 1, 197) and maps[1]["cross"][0].shape == (2, 3, 1, 401)
    for m in maps:
        for w in m["self"] + m["cross"]:
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    # reference weights recomputed from timm's layers on the inputs timm saw
    a = ref.blocks[0].blocks[0][0].attn
    t = captured["self"]
    B, N, C = t.shape
    qkv = a.qkv(t).reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
    w_self = ((qkv[0] * a.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
    assert_close(maps[0]["self"][0], w_self, 1e-5, "self-attention map")
    c = ref.blocks[1].fusion[1].attn
    t = captured["cross"]
    B, N, C = t.shape
    q = c.wq(t[:, :1]).reshape(B, 1, c.num_heads, -1).transpose(1, 2)
    k = c.wk(t).reshape(B, N, c.num_heads, -1).transpose(1, 2)
    w_cross = ((q @ k.transpose(-2, -1)) * c.scale).softmax(-1)
    assert_close(maps[1]["cross"][1], w_cross, 1e-5, "cross-attention map")


def test_registry_cfg_and_api():
    cfg = get_pretrained_cfg("crossvit_base_240")
    assert cfg.hf_hub_id == "timm/crossvit_base_240.in1k" and cfg.input_size == (3, 240, 240)
    assert cfg.crop_pct == 0.875 and cfg.interpolation == "bicubic" and cfg.classifier == ("head.0", "head.1")
    d408 = get_pretrained_cfg("crossvit_18_dagger_408")
    assert d408.input_size == (3, 408, 408) and d408.crop_pct == 1.0
    assert d408.first_conv == ("patch_embed.0.proj.0", "patch_embed.1.proj.0")
    for name in VARIANTS:  # our table against timm's default cfgs
        t = timm.get_pretrained_cfg(name)
        ours = get_pretrained_cfg(name)
        assert ours.input_size == t.input_size and ours.crop_pct == t.crop_pct, name
        assert tuple(ours.mean) == tuple(t.mean) and tuple(ours.std) == tuple(t.std), name
        assert tuple(ours.first_conv) == tuple(t.first_conv), name

    m = crossvit_tiny_240(num_classes=7, drop_path_rate=0.1)
    assert isinstance(m, CrossViT) and m.model_name == "crossvit_tiny_240" and m.num_features == 288
    assert m.pretrained_cfg["hf_hub_id"] == "timm/crossvit_tiny_240.in1k"
    assert m.no_weight_decay() == {"cls_token_0", "cls_token_1", "pos_embed_0", "pos_embed_1"}
    assert len(m.get_classifier()) == 2
    m.eval()
    x = _x(1, 120, seed=19)
    m.reset_classifier(0)
    with torch.no_grad():
        assert m(x).shape == (1, 288)
    m.reset_classifier(5)
    with torch.no_grad():
        assert m(x).shape == (1, 5)
    with pytest.raises(TypeError, match="unknown override"):
        create_model("crossvit_tiny_240", patch_sizes=(8, 16))


def test_input_errors():
    m = create_model("crossvit_9_dagger_240", num_classes=7).eval()
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        m(torch.randn(1, 1, 240, 240))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(3, 240, 240))
    with pytest.raises(ValueError, match="multi-conv"):
        m.set_input_size(224)  # branch 1 would be 209x209: the dagger stem gives 14x14, not 13x13
    assert m.img_size == (240, 240) and m.pos_embed_1.shape == (1, 197, 256)  # unchanged
    with pytest.raises(ValueError, match="two branches"):
        create_model("crossvit_tiny_240", patch_size=(12, 16, 20))


def test_single_int_patch_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"patch_size is a pair"):
        create_model("crossvit_tiny_240", patch_size=6)
