"""Scaled dot-product attention and multi-head self-attention.

This module is the one place that decides how attention is computed:

* ``impl="auto"`` (default): :func:`torch.nn.functional.scaled_dot_product_attention` when the
  query lives on a CUDA device, the hand-written path everywhere else;
* ``impl="manual"``: always the hand-written path (ONNX export, attention maps, debugging);
* ``impl="sdpa"``: always PyTorch's fused kernel.

The hand-written path computes ``softmax(q k^T * scale) v`` over chunks of (batch, head) pairs
so that the score tensor of one chunk stays in the CPU's L2 cache; on vit_base at batch 8 this
runs within about 10% of the fused kernel, where the naive formula runs at about 0.4x (see
``MEASURED.md``). Asking for attention weights always takes the hand-written path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["scaled_dot_product_attention", "Attention", "ATTENTION_IMPLS", "check_attention_args", "resolve_impl"]

ATTENTION_IMPLS = ("auto", "manual", "sdpa")

# Bytes of attention scores computed per chunk in the hand-written path: about 1.5 MiB keeps a
# chunk's (n, Nq, Nk) fp32 scores inside a 2 MiB L2 cache (12 (batch, head) pairs at N=197).
_CHUNK_BYTES = 3 << 19


def check_attention_args(dim: int, num_heads: int, impl: str) -> None:
    """Validate the arguments every attention layer takes: ``dim`` splits into ``num_heads``
    heads and ``impl`` is one of :data:`ATTENTION_IMPLS`."""
    if dim % num_heads != 0:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")


def resolve_impl(impl: str, x: Tensor) -> str:
    """Turn ``"auto"`` into ``"sdpa"`` (CUDA tensors) or ``"manual"`` (everything else)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "sdpa" if x.is_cuda else "manual"
    return impl


def _as_additive_mask(attn_mask: Tensor, dtype: torch.dtype) -> Tensor:
    if attn_mask.dtype == torch.bool:
        # True = may attend (the convention of torch's SDPA).
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(
            ~attn_mask, float("-inf")
        )
    return attn_mask.to(dtype)


def _manual_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Optional[Tensor],
    dropout_p: float,
    scale: float,
    return_weights: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    *lead, nq, d = q.shape
    nk = k.shape[-2]
    dv = v.shape[-1]
    q = q.reshape(-1, nq, d)
    k = k.reshape(-1, nk, d)
    v = v.reshape(-1, nk, dv)
    n = q.shape[0]
    mask = None
    if attn_mask is not None:
        mask = _as_additive_mask(attn_mask, q.dtype).expand(*lead, nq, nk).reshape(n, nq, nk)

    # The scale is applied inside the GEMM (``alpha``), which saves a pass over q; the additive
    # mask (if any) is the GEMM's accumulator (``beta=1``).
    chunk = n if return_weights else max(1, _CHUNK_BYTES // max(1, nq * nk * q.element_size()))
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, mask))
    if not needs_grad and not return_weights and dropout_p == 0.0:
        # Inference: every chunk reuses one score buffer (it stays in cache), the softmax runs in
        # place and the outputs are written straight into one (n, nq, dv) tensor.
        out = q.new_empty(n, nq, dv)
        buf = q.new_empty(min(chunk, n), nq, nk)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            a = buf[: e - s]
            kt = k[s:e].transpose(1, 2)
            if mask is None:
                torch.baddbmm(a, q[s:e], kt, beta=0.0, alpha=scale, out=a)
            else:
                torch.baddbmm(mask[s:e], q[s:e], kt, alpha=scale, out=a)
            torch.softmax(a, dim=-1, out=a)
            torch.bmm(a, v[s:e], out=out[s:e])
        return out.reshape(*lead, nq, dv), None

    # Autograd: split() rather than q[s:e] slicing, so that the backward is one cat per input
    # instead of a zero-filled full-size gradient plus an accumulation per chunk.
    qs, ks, vs = q.split(chunk), k.split(chunk), v.split(chunk)
    ms = mask.split(chunk) if mask is not None else [None] * len(qs)
    outs, weights = [], []
    for qc, kc, vc, mc in zip(qs, ks, vs, ms):
        kt = kc.transpose(1, 2)
        if mc is None:
            a = torch.baddbmm(qc.new_empty(()).expand(qc.shape[0], nq, nk), qc, kt, beta=0.0, alpha=scale)
        else:
            a = torch.baddbmm(mc, qc, kt, alpha=scale)
        a = a.softmax(dim=-1)
        if return_weights:
            weights.append(a)
        if dropout_p > 0.0:
            a = F.dropout(a, p=dropout_p, training=True)
        outs.append(torch.bmm(a, vc))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    out = out.reshape(*lead, nq, dv)
    w = None
    if return_weights:
        w = (weights[0] if len(weights) == 1 else torch.cat(weights, 0)).reshape(*lead, nq, nk)
    return out, w


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    impl: str = "auto",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``softmax(q k^T * scale + mask) v``.

    Args:
        q: (B, H, Nq, d) queries (any number of leading dimensions).
        k: (B, H, Nk, d) keys.
        v: (B, H, Nk, dv) values.
        attn_mask: broadcastable to (B, H, Nq, Nk); bool (True = may attend) or additive float.
        dropout_p: dropout on the attention weights (pass 0.0 at eval).
        scale: defaults to ``d ** -0.5``.
        impl: ``"auto"``, ``"manual"`` or ``"sdpa"`` (see the module docstring).
        return_weights: also return the (B, H, Nq, Nk) attention weights (forces ``"manual"``,
            computed before dropout).

    Returns:
        (B, H, Nq, dv), or ``(out, weights)`` when ``return_weights``.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    path = "manual" if return_weights else resolve_impl(impl, q)
    if path == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    out, w = _manual_attention(q, k, v, attn_mask, dropout_p, scale, return_weights)
    return (out, w) if return_weights else out


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm's parameter names).

    Args:
        dim: token width C.
        num_heads: H; ``dim`` must be divisible by it.
        qkv_bias: bias on the fused q|k|v Linear.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        impl: attention implementation, see :func:`scaled_dot_product_attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        check_attention_args(dim, num_heads, impl)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: Tensor, attn_mask: Optional[Tensor] = None, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, N, C) -> (B, N, C); with ``return_attention`` also (B, H, N, N) weights."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        p = self.attn_drop.p if self.training else 0.0
        res = scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=p, scale=self.scale, impl=self.impl,
            return_weights=return_attention,
        )
        out, w = res if return_attention else (res, None)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return (out, w) if return_attention else out
