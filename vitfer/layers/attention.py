"""Scaled dot-product attention and multi-head self-attention.

This module is the one place that decides how attention is computed:

* ``impl="auto"`` (default): :func:`torch.nn.functional.scaled_dot_product_attention` when the
  query lives on a CUDA device, the hand-written path everywhere else;
* ``impl="manual"``: always the hand-written path (attention maps, debugging; ONNX export uses
  ``"sdpa"``, which the exporter lowers to plain MatMul / Softmax nodes);
* ``impl="sdpa"``: always PyTorch's fused kernel.

The hand-written path computes ``softmax(q k^T * scale) v`` over chunks of (image, head) pairs
so that one chunk's scores stay in cache between the three kernels that touch them (the naive
formula, the whole (B, H, N, N) tensor at once, ran at about 0.4x the fused kernel on vit_base,
measured on a 2-core CPU). At inference it works on strided views of q, k, v where a chunk lies within one
image, gathers a chunk's operands into a reused per-thread workspace where it spans several
images, and writes its result in (B, N, H, d) memory order as PyTorch's CPU flash kernel does,
so the head merge after it is a view. Asking for attention weights always takes the hand-written
path.
"""

import math
import threading
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ._compile import is_compiling
from .residual import branch_output, call_linear
from .tracing import is_tracing

__all__ = ["attention", "scaled_dot_product_attention", "Attention", "ATTENTION_IMPLS", "check_attention_args", "resolve_impl", "clear_scratch"]

ATTENTION_IMPLS = ("auto", "manual", "sdpa")

# Bytes of attention scores computed per chunk in the hand-written path. A chunk's scores are
# written by one GEMM and read by the softmax and the second GEMM while still in cache (the naive
# formula, the whole (B, H, N, N) tensor at once, ran at about 0.4x the fused kernel on vit_base,
# measured on a 2-core CPU), while chunks of only a few pairs leave cores idle in the batched GEMMs. Inference:
# 2 MiB, 13 pairs at N=197, so that ViT-B's 12 heads of one image make one chunk. Training (and
# GPSA): 1.5 MiB; larger chunks measured no faster there (forward + backward at N=197 and 401).
_INFER_CHUNK_BYTES = 2 << 20
CHUNK_BYTES = 3 << 19


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


# Inference scratch (scores, gathered q/k/v, chunk outputs) is kept per thread between calls on
# the CPU: a fresh multi-MiB buffer per layer comes from mmap and costs a page fault per 4 KiB
# (measured: 15-25% of a ViT-Ti forward on a 2-core EPYC; benchmarks/page_faults.py). Workspaces
# larger than this are allocated per call instead of being kept.
_SCRATCH_MAX_BYTES = 32 << 20
_scratch = threading.local()


def _scratch_buffers(like: Tensor, *shapes: tuple[int, ...]) -> list[Tensor]:
    """Uninitialised tensors of the given shapes (``like``'s dtype and device), carved out of one
    per-thread workspace that is reused by later calls (CPU only; elsewhere freshly allocated).
    Only for values that do not outlive the call."""
    sizes = [math.prod(sh) for sh in shapes]
    total = sum(sizes)
    if like.device.type != "cpu" or total * like.element_size() > _SCRATCH_MAX_BYTES or is_compiling():
        return [like.new_empty(sh) for sh in shapes]
    cache = getattr(_scratch, "buffers", None)
    if cache is None:
        cache = _scratch.buffers = {}
    # One workspace per inference mode: one made under torch.inference_mode is an inference
    # tensor, which may not be written outside it (predict, then evaluate, in one process).
    key = (like.dtype, torch.is_inference_mode_enabled())
    ws = cache.get(key)
    if ws is None or ws.numel() < total:
        ws = cache[key] = like.new_empty(total)
    views, start = [], 0
    for sh, n in zip(shapes, sizes):
        views.append(ws[start : start + n].view(sh))
        start += n
    return views


def clear_scratch() -> None:
    """Free this thread's cached attention workspace (see ``_SCRATCH_MAX_BYTES``)."""
    _scratch.buffers = {}


def balanced_chunk(total: int, limit: int) -> int:
    """The smallest chunk size that still splits ``total`` into the fewest chunks of at most
    ``limit`` (12 heads under a 9-pair budget: 6 + 6, not 9 + 3)."""
    limit = max(1, min(total, limit))
    chunks = -(-total // limit)
    return -(-total // chunks)


def _flat_pairs(t: Tensor) -> Optional[Tensor]:
    """(B, H, N, d) -> (B*H, N, d) as a view, or None where the strides do not allow it (q, k, v
    sliced out of a fused qkv projection). Checked on the strides: a failed ``view`` raises, and
    a C++ exception costs more than a small attention call."""
    if t.shape[1] > 1 and t.stride(0) != t.shape[1] * t.stride(1):
        return None
    return t.view(-1, *t.shape[-2:])


def _attend_chunk(a: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float, out: Tensor) -> None:
    """``out = softmax(q k^T * scale + mask) v`` for one chunk of (pairs, N, d) operands, with the
    scores in the buffer ``a``. The scale is the GEMM's ``alpha`` (no pass over q) and the mask its
    accumulator (``beta=1``); the softmax runs in place."""
    kt = k.transpose(1, 2)
    if mask is None:
        torch.baddbmm(a, q, kt, beta=0.0, alpha=scale, out=a)
    else:
        torch.baddbmm(mask, q, kt, alpha=scale, out=a)
    torch.softmax(a, dim=-1, out=a)
    torch.bmm(a, v, out=out)


def _inference_4d(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float) -> Tensor:
    """The hand-written inference path for (B, H, N, d) inputs.

    Chunks of (image, head) pairs hold about ``_INFER_CHUNK_BYTES`` of scores, so that a chunk's
    scores stay in cache between its three kernels, and are as large as that allows (batched GEMMs of a few matrices leave
    one of two cores idle: at N=197, 3 pairs run at ~0.8x the per-pair speed of 12). Where one
    image's heads fill a chunk (ViT-B: 12 heads), every chunk runs on strided views of q, k, v
    (views of a fused qkv projection are valid GEMM operands: no copies). Where they do not
    (ViT-Ti: 3 heads), a chunk spans several images; since (image, head) does not flatten into
    one batch dimension of such views, the chunk's q, k, v are gathered into small reused buffers,
    which stay in cache (a view is used instead when the inputs are contiguous).

    The result is written in (B, Nq, H, dv) memory order and returned as its (B, H, Nq, dv) view,
    as PyTorch's CPU flash kernel does, so the caller's ``transpose(1, 2).reshape(B, Nq, H*dv)``
    is free.
    """
    B, H, nq, d = q.shape
    nk, dv = k.shape[-2], v.shape[-1]
    pairs = max(1, _INFER_CHUNK_BYTES // max(1, nq * nk * q.element_size()))
    out = q.new_empty(B, nq, H, dv)
    ot = out.transpose(1, 2)
    if pairs < 2 * H or B == 1:
        hc = balanced_chunk(H, pairs)  # heads per chunk
        (a,) = _scratch_buffers(q, (hc, nq, nk))
        for b in range(B):
            for h0 in range(0, H, hc):
                h1 = min(H, h0 + hc)
                m = None if mask is None else mask[b, h0:h1]
                _attend_chunk(a[: h1 - h0], q[b, h0:h1], k[b, h0:h1], v[b, h0:h1], m, scale, ot[b, h0:h1])
        return ot

    g = balanced_chunk(B, pairs // H)  # images per chunk
    flat = [_flat_pairs(t) for t in (q, k, v)]
    gather = [t for f, t in zip(flat, (q, k, v)) if f is None]
    a, o, *gbufs = _scratch_buffers(q, (g * H, nq, nk), (g * H, nq, dv), *((g * H, *t.shape[-2:]) for t in gather))
    it = iter(gbufs)
    bufs = [None if f is not None else next(it) for f in flat]
    for b0 in range(0, B, g):
        b1 = min(B, b0 + g)
        n = (b1 - b0) * H
        ops = []
        for t, f, buf in zip((q, k, v), flat, bufs):
            if f is not None:
                ops.append(f[b0 * H : b1 * H])
            else:
                buf[:n].view(b1 - b0, H, *t.shape[-2:]).copy_(t[b0:b1])
                ops.append(buf[:n])
        m = None if mask is None else mask[b0:b1].reshape(n, nq, nk)
        _attend_chunk(a[:n], *ops, m, scale, o[:n])
        ot[b0:b1].copy_(o[:n].view(b1 - b0, H, nq, dv))
    return ot


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
    pairs = max(1, CHUNK_BYTES // max(1, nq * nk * q.element_size()))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, attn_mask)
    )
    mask = None
    if attn_mask is not None:
        mask = _as_additive_mask(attn_mask, q.dtype).expand(*lead, nq, nk)
    inference = not needs_grad and not return_weights and dropout_p == 0.0
    if inference and q.dim() == 4 and k.shape[:2] == v.shape[:2] == q.shape[:2]:
        return _inference_4d(q, k, v, mask, scale), None

    # Everything else (training, attention maps, other ranks): q, k, v gathered into (pairs, N, d)
    # once, then chunks of pairs. (Training on strided per-image views instead was measured
    # slower: 0.71x vs 0.88x timm's fused kernel, forward + backward at N=401, 12 heads.)
    q = q.reshape(-1, nq, d)
    k = k.reshape(-1, nk, d)
    v = v.reshape(-1, nk, dv)
    n = q.shape[0]
    if mask is not None:
        mask = mask.reshape(n, nq, nk)
    chunk = n if return_weights else pairs
    if inference:
        out = q.new_empty(n, nq, dv)
        (a,) = _scratch_buffers(q, (min(chunk, n), nq, nk))  # reused by every chunk: it stays in cache
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            m = None if mask is None else mask[s:e]
            _attend_chunk(a[: e - s], q[s:e], k[s:e], v[s:e], m, scale, out[s:e])
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
    q, k, v = _common_dtype(q, k, v)
    out, w = _manual_attention(q, k, v, attn_mask, dropout_p, scale, return_weights)
    return (out, w) if return_weights else out


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0, impl: str = "auto",
    attn_mask: Optional[Tensor] = None,
) -> Tensor:
    """:func:`scaled_dot_product_attention` without attention weights, in a form TorchScript also
    compiles: the call a torch.fx-traced layer makes (one graph node, dispatching at run time as in
    eager mode; a scripted traced graph keeps the dispatch: SDPA on CUDA tensors, the hand-written
    ``softmax(q k^T * scale + mask) v`` elsewhere)."""
    if not torch.jit.is_scripting():
        return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale, impl=impl)
    if impl == "sdpa" or (impl == "auto" and q.is_cuda):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    a = torch.matmul(q, k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            a = a.masked_fill(~attn_mask, float("-inf"))
        else:
            a = a + attn_mask
    a = a.softmax(dim=-1)
    if dropout_p > 0.0:
        a = F.dropout(a, p=dropout_p, training=True)
    return torch.matmul(a, v)


# torch.fx: a traced graph calls the dispatch as one node, which picks SDPA or the hand-written
# path at run time from the actual tensors (the device is not known while tracing).
torch.fx.wrap("scaled_dot_product_attention")
torch.fx.wrap("attention")


def _common_dtype(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One dtype for the hand-written path, whose ``out=`` kernels do not mix dtypes: under
    autocast its dtype (as autocast casts the inputs of the fused kernel), otherwise the promoted
    dtype where q, k, v differ (e.g. bf16 queries against fp32 tokens)."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev) and q.is_floating_point():
        dt = torch.get_autocast_dtype(dev)
    elif q.dtype == k.dtype == v.dtype:
        return q, k, v
    else:
        dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return q.to(dt), k.to(dt), v.to(dt)


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

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from .scriptable import ScriptAttention

        return ScriptAttention(self)

    def forward(
        self,
        x: Tensor,
        attn_mask: Optional[Tensor] = None,
        return_attention: bool = False,
        residual: Optional[Tensor] = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, N, C) -> (B, N, C); with ``return_attention`` also (B, H, N, N) weights. With
        ``residual`` (B, N, C) the result is ``residual + attention(x)``, the residual being the
        accumulator of the output projection's GEMM (``residual`` itself is not modified)."""
        B, N, C = x.shape
        qkv = call_linear(self.qkv, x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        p = self.attn_drop.p if self.training else 0.0
        if not return_attention and is_tracing():  # one traced node that TorchScript also compiles
            res = attention(q, k, v, self.scale, p, self.impl, attn_mask)
        else:
            res = scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=p, scale=self.scale, impl=self.impl,
                return_weights=return_attention,
            )
        out, w = res if return_attention else (res, None)
        out = branch_output(out.transpose(1, 2).reshape(B, N, C), self.proj, self.proj_drop, residual)
        return (out, w) if return_attention else out
