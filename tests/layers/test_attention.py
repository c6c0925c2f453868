"""The attention dispatch: hand-written path vs PyTorch's fused kernel vs timm's Attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parity import assert_close, check_forward_backward, copy_weights
from timm.layers import Attention as TimmAttention

import vitfer.layers.attention as attn_mod
from vitfer.layers import Attention, resolve_impl, scaled_dot_product_attention


def _qkv(B=2, H=3, N=17, d=8, Nk=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    Nk = Nk or N
    return (torch.randn(B, H, N, d, generator=g), torch.randn(B, H, Nk, d, generator=g),
            torch.randn(B, H, Nk, d, generator=g))


def _naive(q, k, v, mask=None, scale=None):
    scale = scale or q.shape[-1] ** -0.5
    s = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return s.softmax(-1) @ v


@pytest.mark.parametrize("shape", [(2, 3, 17, 8), (1, 12, 197, 64), (3, 2, 5, 4)])
def test_manual_matches_sdpa_and_naive(shape):
    q, k, v = _qkv(*shape)
    manual = scaled_dot_product_attention(q, k, v, impl="manual")
    sdpa = scaled_dot_product_attention(q, k, v, impl="sdpa")
    assert_close(manual, sdpa, 1e-5, "manual vs sdpa")
    assert_close(manual, _naive(q, k, v), 1e-5, "manual vs naive")


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_agree(kind):
    q, k, v = _qkv(2, 3, 11, 8, Nk=13)
    g = torch.Generator().manual_seed(3)
    if kind == "bool":
        mask = torch.rand(2, 1, 11, 13, generator=g) > 0.3
        mask[..., 0] = True  # no fully-masked row
    else:
        mask = torch.randn(1, 3, 11, 13, generator=g)
    manual = scaled_dot_product_attention(q, k, v, attn_mask=mask, impl="manual")
    sdpa = scaled_dot_product_attention(q, k, v, attn_mask=mask, impl="sdpa")
    assert_close(manual, sdpa, 1e-5, f"{kind} mask manual vs sdpa")
    assert_close(manual, _naive(q, k, v, mask), 1e-5, f"{kind} mask manual vs naive")
    # the mask matters
    assert (manual - scaled_dot_product_attention(q, k, v, impl="manual")).abs().max() > 1e-3


def test_chunking_covers_every_pair(monkeypatch):
    """Chunks that do not divide the (batch, head) count still give the unchunked result."""
    q, k, v = _qkv(3, 5, 9, 4)
    full = scaled_dot_product_attention(q, k, v, impl="manual")
    for name in ("CHUNK_BYTES", "_INFER_CHUNK_BYTES"):  # 4 pairs per chunk, 15 pairs
        monkeypatch.setattr(attn_mod, name, 9 * 9 * 4 * 4)
    chunked = scaled_dot_product_attention(q, k, v, impl="manual")
    assert torch.equal(full, chunked) or (full - chunked).abs().max() < 1e-6
    # gradients flow through the chunked path
    qg = q.clone().requires_grad_()
    scaled_dot_product_attention(qg, k, v, impl="manual").sum().backward()
    qs = q.clone().requires_grad_()
    F.scaled_dot_product_attention(qs, k, v).sum().backward()
    assert_close(qg.grad, qs.grad, 1e-5, "chunked grad")


def test_return_weights_and_scale():
    q, k, v = _qkv(2, 3, 7, 8)
    out, w = scaled_dot_product_attention(q, k, v, scale=0.3, return_weights=True, impl="sdpa")
    assert w.shape == (2, 3, 7, 7)
    assert_close(w.sum(-1), torch.ones(2, 3, 7), 1e-6, "weights sum to 1")
    assert_close(out, w @ v, 1e-6, "out = w v")
    assert_close(out, _naive(q, k, v, scale=0.3), 1e-5, "custom scale")


def test_dropout_only_in_manual_training_path():
    q, k, v = _qkv(2, 2, 6, 4)
    torch.manual_seed(0)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.5, impl="manual")
    b = scaled_dot_product_attention(q, k, v, impl="manual")
    assert (a - b).abs().max() > 1e-3


def test_impl_validation_and_dispatch():
    x = torch.zeros(1)
    assert resolve_impl("auto", x) == "manual"  # CPU tensors take the hand-written path
    assert resolve_impl("sdpa", x) == "sdpa"
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("flash", x)
    with pytest.raises(ValueError, match="impl"):
        Attention(16, 2, impl="fast")
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_attention_module_matches_timm(impl, qkv_bias):
    torch.manual_seed(0)
    ref = TimmAttention(48, num_heads=4, qkv_bias=qkv_bias).eval()
    ours = Attention(48, num_heads=4, qkv_bias=qkv_bias, impl=impl).eval()
    copy_weights(ref, ours)
    x = torch.randn(2, 10, 48)
    diffs = check_forward_backward(ours, ref, [x])
    assert max(diffs.values()) <= 1e-5


def test_attention_module_returns_weights():
    torch.manual_seed(0)
    m = Attention(32, 4).eval()
    x = torch.randn(2, 5, 32)
    out, w = m(x, return_attention=True)
    assert w.shape == (2, 4, 5, 5)
    assert_close(out, m(x), 1e-6, "same output with weights")
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    out_m = m(x, attn_mask=mask)
    m.impl = "sdpa"
    assert_close(out_m, m(x, attn_mask=mask), 1e-5, "masked module manual vs sdpa")


def _qkv_from_fused(B, H, N, d, seed=0):
    """q, k, v as strided views of one fused projection, as Attention produces them."""
    qkv = torch.randn(B, N, 3, H, d, generator=torch.Generator().manual_seed(seed))
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


# (B, H, N, chunk pairs): heads of one image per chunk (one chunk / heads split unevenly / split
# in two), and several images per chunk (dividing B or not).
LAYOUTS = [(3, 4, 20, 4), (2, 5, 20, 3), (2, 12, 20, 9), (5, 3, 20, 6), (7, 2, 20, 6), (4, 3, 20, 100)]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("B,H,N,pairs", LAYOUTS)
def test_inference_chunk_layouts(monkeypatch, B, H, N, pairs, fused):
    monkeypatch.setattr(attn_mod, "_INFER_CHUNK_BYTES", pairs * N * N * 4)
    q, k, v = _qkv_from_fused(B, H, N, 8) if fused else _qkv(B, H, N, 8)
    mask = torch.randn(B, 1, N, N, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for m in (None, mask):
            out = scaled_dot_product_attention(q, k, v, attn_mask=m, impl="manual")
            assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m), 1e-5, f"pairs={pairs}")
            # (B, Nq, H, dv) memory order: the caller's transpose(1, 2) is contiguous (reshape = view)
            assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("B,H,N,pairs", [(2, 5, 20, 3), (2, 4, 20, 4), (3, 2, 20, 6)])
def test_training_chunk_layouts_gradients(monkeypatch, B, H, N, pairs):
    """Gradients of q, k, v and of a float mask through the per-image and grouped autograd paths."""
    monkeypatch.setattr(attn_mod, "CHUNK_BYTES", pairs * N * N * 4)
    q0, k0, v0 = _qkv_from_fused(B, H, N, 8, seed=2)
    m0 = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(6))
    cot = torch.randn(B, H, N, 8, generator=torch.Generator().manual_seed(7))
    grads = []
    for fn in (lambda *a, **kw: scaled_dot_product_attention(*a, **kw, impl="manual"), F.scaled_dot_product_attention):
        ts = [t.clone().requires_grad_() for t in (q0, k0, v0, m0)]
        out = fn(*ts[:3], attn_mask=ts[3])
        out.backward(cot)
        grads.append([out.detach()] + [t.grad for t in ts])
    for name, a, b in zip(("out", "q", "k", "v", "mask"), *grads):
        assert_close(a, b, 1e-5, f"{name} (pairs={pairs})")


def test_scratch_is_reused_but_never_returned(monkeypatch):
    monkeypatch.setattr(attn_mod, "_INFER_CHUNK_BYTES", 6 * 20 * 20 * 4)
    attn_mod.clear_scratch()
    q, k, v = _qkv_from_fused(4, 3, 20, 8)
    with torch.no_grad():
        first = scaled_dot_product_attention(q, k, v, impl="manual")
        keep = first.clone()
        ws = attn_mod._scratch.buffers[(torch.float32, False)]
        q2, k2, v2 = _qkv_from_fused(4, 3, 20, 8, seed=1)
        second = scaled_dot_product_attention(q2, k2, v2, impl="manual")
        assert attn_mod._scratch.buffers[(torch.float32, False)] is ws, "same workspace for the same shapes"
    assert torch.equal(first, keep), "a later call must not overwrite an earlier result"
    assert_close(second, F.scaled_dot_product_attention(q2, k2, v2), 1e-5, "second call")
    for t in (first, second):
        assert not (ws.data_ptr() <= t.data_ptr() < ws.data_ptr() + ws.numel() * 4)
    # workspaces above the cap are allocated per call, not kept
    monkeypatch.setattr(attn_mod, "_SCRATCH_MAX_BYTES", 1024)
    attn_mod.clear_scratch()
    with torch.no_grad():
        out = scaled_dot_product_attention(q, k, v, impl="manual")
    assert torch.equal(out, keep) and not attn_mod._scratch.buffers


def test_flat_pairs_only_when_strides_allow():
    q, k, v = _qkv_from_fused(2, 3, 5, 4)
    assert attn_mod._flat_pairs(q) is None
    c = q.contiguous()
    f = attn_mod._flat_pairs(c)
    assert f is not None and f.data_ptr() == c.data_ptr() and f.shape == (6, 5, 4)
    one_head = torch.randn(4, 5, 1, 3).transpose(1, 2)  # H == 1: any batch stride flattens
    assert attn_mod._flat_pairs(one_head) is not None


def test_mixed_dtypes_and_cpu_autocast():
    """The hand-written path promotes mixed q/k/v dtypes, and under autocast computes in its dtype
    as the fused kernel does (CrossViT's folded class-token query is bf16 against fp32 tokens)."""
    q, k, v = _qkv(2, 3, 17, 8)
    want = F.scaled_dot_product_attention(q, k, v)
    with torch.no_grad():
        out = scaled_dot_product_attention(q.bfloat16(), k, v, impl="manual")
    assert out.dtype == torch.float32
    assert_close(out, want, 2e-2, "bf16 q promoted")
    mask = torch.randn(2, 1, 17, 17)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for m in (None, mask):
            got = scaled_dot_product_attention(q.bfloat16(), k, v, attn_mask=m, impl="manual")
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
            assert got.dtype == torch.bfloat16
            assert_close(got.float(), ref, 5e-2, "autocast")
    qg = q.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scaled_dot_product_attention(qg, k, v, impl="manual").float().sum().backward()
    assert qg.grad.dtype == torch.float32 and torch.isfinite(qg.grad).all()


def test_workspace_made_in_inference_mode_is_not_reused_outside_it():
    """Found by the reliability suite: ``vitfer predict`` (torch.inference_mode) then evaluation or
    training in the same process failed with 'Inplace update to inference tensor outside
    InferenceMode', the per-thread attention workspace having been made in inference mode."""
    from vitfer.layers.attention import clear_scratch
    from vitfer.models import create_model

    clear_scratch()
    model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        a = model(x)
    with torch.no_grad():
        b = model(x)
    c = model(x)  # with autograd too
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b, c.detach())
