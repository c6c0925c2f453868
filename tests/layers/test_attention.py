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
    monkeypatch.setattr(attn_mod, "_CHUNK_BYTES", 9 * 9 * 4 * 4)  # 4 pairs per chunk, 15 pairs
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
