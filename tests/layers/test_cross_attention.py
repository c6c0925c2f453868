"""CrossViT's class-token cross-attention and fusion block against timm (fp32, forward and backward)."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from parity import assert_close, check_forward_backward, copy_weights, randomize_
from timm.models.crossvit import CrossAttention as TimmCrossAttention
from timm.models.crossvit import CrossAttentionBlock as TimmCrossAttentionBlock
from torch import nn

from vitfer.layers.cross_attention import CrossAttention, CrossAttentionBlock

# (width, heads, tokens): the fusion shapes of crossvit_tiny (branch 1: 1 + 196 tokens of width 192,
# branch 0: 1 + 400 of width 96) and of crossvit_base / crossvit_18 (width 768, 448), shortened.
SHAPES = [(192, 3, 197), (96, 3, 401), (768, 12, 37), (448, 7, 29)]


def _pair(dim: int, heads: int, qkv_bias: bool = True, seed: int = 1, **kw):
    ref = randomize_(TimmCrossAttention(dim, heads, qkv_bias=qkv_bias, **kw), seed=seed)
    ours = CrossAttention(dim, heads, qkv_bias=qkv_bias, **kw)
    copy_weights(ref, ours)
    return ref, ours


def _timm_weights(ref: TimmCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """timm's (B, H, 1, N) attention weights, recomputed from its own layers."""
    B, N, C = x.shape
    H = ref.num_heads
    q = ref.wq(x[:, :1]).reshape(B, 1, H, C // H).permute(0, 2, 1, 3)
    k = ref.wk(x).reshape(B, N, H, C // H).permute(0, 2, 1, 3)
    return ((q @ k.transpose(-2, -1)) * ref.scale).softmax(dim=-1)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
@pytest.mark.parametrize("dim,heads,n", SHAPES, ids=[f"C{c}-H{h}-N{n}" for c, h, n in SHAPES])
def test_cross_attention_forward_backward(dim, heads, n, impl):
    ref, ours = _pair(dim, heads)
    ours.impl = impl
    x = torch.randn(2, n, dim, generator=torch.Generator().manual_seed(3))
    res = check_forward_backward(ours, ref, [x])
    assert set(res) >= {"out", "input0.grad", "wk.bias.grad", "wv.weight.grad"}
    print(f"\nCrossAttention C{dim} H{heads} N{n} {impl}: out {res['out']:.1e}, worst grad "
          f"{max(v for k, v in res.items() if k != 'out'):.1e}")


def test_cross_attention_without_bias():
    ref, ours = _pair(96, 3, qkv_bias=False)
    x = torch.randn(2, 50, 96)
    res = check_forward_backward(ours, ref, [x])
    assert "wk.bias.grad" not in res and ours.wk.bias is None


def test_cross_attention_weights_match_timm():
    ref, ours = _pair(192, 3)
    x = torch.randn(2, 197, 192)
    with torch.no_grad():
        out, w = ours(x, return_attention=True)
        w_ref = _timm_weights(ref, x)
        out_ref = ref(x)
    assert w.shape == (2, 3, 1, 197)
    assert_close(w, w_ref, 1e-6, "attention weights")
    assert_close(out, out_ref, 1e-5, "output with weights")
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 1))


def test_cross_attention_dropout_in_training_matches_timm():
    """With attention dropout the direct formula runs; same RNG stream as timm -> same masks."""
    ref, ours = _pair(96, 3, attn_drop=0.3)
    ref.train(), ours.train()
    x = torch.randn(2, 50, 96)
    torch.manual_seed(7)
    out_ref = ref(x)
    torch.manual_seed(7)
    out = ours(x)
    assert_close(out, out_ref, 1e-5, "training output with attention dropout")
    ref.eval(), ours.eval()
    with torch.no_grad():
        assert_close(ours(x), ref(x), 1e-5, "eval output")


@pytest.mark.parametrize("dim,heads,n", SHAPES[:3], ids=[f"C{c}-H{h}-N{n}" for c, h, n in SHAPES[:3]])
def test_fusion_block_forward_backward(dim, heads, n):
    ref = TimmCrossAttentionBlock(dim, heads, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    randomize_(ref, seed=2)
    ours = CrossAttentionBlock(dim, heads, qkv_bias=True)
    copy_weights(ref, ours)
    x = torch.randn(2, n, dim, generator=torch.Generator().manual_seed(4))
    res = check_forward_backward(ours, ref, [x])
    assert "norm1.weight.grad" in res
    print(f"\nCrossAttentionBlock C{dim} H{heads} N{n}: out {res['out']:.1e}, worst grad "
          f"{max(v for k, v in res.items() if k != 'out'):.1e}")
    with torch.no_grad():
        y, w = ours(x, return_attention=True)
    assert y.shape == (2, 1, dim) and w.shape == (2, heads, 1, n)


def test_fusion_block_drop_path_matches_timm():
    ref = TimmCrossAttentionBlock(96, 3, qkv_bias=True, drop_path=0.5, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    randomize_(ref, seed=5)
    ours = CrossAttentionBlock(96, 3, qkv_bias=True, drop_path=0.5)
    copy_weights(ref, ours)
    ref.train(), ours.train()
    x = torch.randn(8, 20, 96)
    torch.manual_seed(11)
    y_ref = ref(x)
    torch.manual_seed(11)
    y = ours(x)
    assert_close(y, y_ref, 1e-5, "training output with drop path")


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        CrossAttention(100, 3)
    with pytest.raises(ValueError, match="impl"):
        CrossAttention(96, 3, impl="flash")
