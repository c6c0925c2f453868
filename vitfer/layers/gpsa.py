"""Gated positional self-attention (GPSA), the attention of ConViT's first blocks.

d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive
Biases", ICML 2021. Each head mixes content attention with a purely positional attention::

    A = softmax(q k^T * scale)                      (B, H, N, N), depends on the input
    P = softmax(pos_proj(rel_indices))              (H, N, N), depends on the weights only
    g = sigmoid(gating_param)                       (H,)
    out = proj(((1 - g) A + g P) v)

timm computes ``P`` once per image (``pos_proj`` over (B, N, N, 3)), mixes the full
(B, H, N, N) tensors and renormalises the rows (which already sum to 1 up to rounding). Here
``P`` is computed once per forward and shared by the batch, and the renormalisation is skipped
(the outputs stay within 1e-6 of timm's):

* hand-written path (CPU, attention maps): ``q k^T``, softmax, the mix and ``@ v`` run over
  chunks of (batch, head) pairs whose scores fit the L2 cache, like
  :mod:`vitfer.layers.attention`; the (B, H, N, N) mix is never materialised at eval;
* ``"sdpa"`` path (default on CUDA): ``(1 - g) * SDPA(q, k, v) + g * (P @ v)``, so the content
  part runs in the fused kernel. It falls back to the hand-written path when attention dropout
  is active (timm drops out the mixed weights, which the split form cannot reproduce).

Parameter names are timm's: ``qk`` (fused q|k, no bias by default), ``v``, ``proj``,
``pos_proj`` = Linear(3, H), ``gating_param`` (H,). The relative indices are a non-persistent
buffer built for the configured patch grid at construction; :meth:`GPSA.set_grid_size` rebuilds
them. ``forward`` never mutates the module (``torch.compile``-friendly).
"""

from typing import Callable, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CHUNK_BYTES, balanced_chunk, check_attention_args, resolve_impl
from .drop_path import DropPath
from .mlp import Mlp
from .residual import branch_output, call_linear, has_hooks
from .tracing import is_tracing

__all__ = ["GPSA", "GPSABlock", "attention_distance", "grid_distances", "rel_indices"]


def rel_indices(grid_size: tuple[int, int], dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Relative offsets between the patches of a square grid, as timm's ``get_rel_indices``.

    Patch ``i`` sits at row ``i // S``, column ``i % S``. Channel 0 is dx = col_j - col_i,
    channel 1 is dy = row_j - row_i, channel 2 is dx^2 + dy^2.

    Args:
        grid_size: (rows, cols) of the patch grid; must be square (timm's GPSA assumes it).

    Returns:
        (N, N, 3) with N = rows * cols, computed in float32 and cast to ``dtype``.
    """
    rows, cols = int(grid_size[0]), int(grid_size[1])
    if rows != cols:
        raise ValueError(
            f"GPSA needs a square patch grid, got {rows}x{cols} patches (timm's relative position "
            f"indices assume N = S*S); use a square img_size"
        )
    if rows < 1:
        raise ValueError(f"GPSA needs a non-empty patch grid, got {rows}x{cols}")
    s = rows
    ind = torch.arange(s, dtype=torch.float32).view(1, -1) - torch.arange(s, dtype=torch.float32).view(-1, 1)
    indx = ind.repeat(s, s)
    indy = ind.repeat_interleave(s, dim=0).repeat_interleave(s, dim=1)
    indd = indx**2 + indy**2
    return torch.stack([indx, indy, indd], dim=-1).to(device=device, dtype=dtype)


def grid_distances(num_patches: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Euclidean distances (N, N) between the patches of a square grid of ``num_patches``."""
    s = int(round(num_patches**0.5))
    if s * s != num_patches:
        raise ValueError(f"attention distances need a square patch grid, got {num_patches} patches")
    return rel_indices((s, s), torch.float32, device)[..., 2].sqrt().to(dtype)


def attention_distance(weights: Tensor, distances: Optional[Tensor] = None) -> Tensor:
    """Per-head mean attention distance, timm's ``get_attention_map``.

    ``einsum('nm,hnm->h', distances, weights.mean(0)) / N``: how far (in patches) each head
    looks on average; small for convolution-like heads.

    Args:
        weights: (B, H, N, N) attention weights over the N patches of a square grid.
        distances: (N, N) patch distances; defaults to :func:`grid_distances`.

    Returns:
        (H,) mean distances.
    """
    n = weights.shape[-1]
    if distances is None:
        distances = grid_distances(n, weights.dtype, weights.device)
    return torch.einsum("nm,hnm->h", distances.to(weights.dtype), weights.mean(0)) / n


# Batch elements per chunk at or above which the grouped path (one copy of q, k, v into
# (B*H, N, d), chunks of several batch elements) beats the per-element strided views.
_GROUP_MIN = 8


def _mix(a: Tensor, pos: Tensor, gate: Tensor, inplace: bool) -> Tensor:
    """``(1 - g) a + g P`` as one kernel, ``a + g (P - a)``; ``pos``/``gate`` broadcast against ``a``."""
    return a.lerp_(pos, gate) if inplace else torch.lerp(a, pos, gate)


def _gated_attention_manual(
    qk: Tensor,
    v: Tensor,
    pos: Tensor,
    gate: Tensor,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """``((1 - g) softmax(q k^T * scale) + g P) v`` computed chunk by chunk.

    Args:
        qk: (B, N, 2C) output of the fused q|k projection.
        v: (B, N, C) values.
        pos: (H, N, N) positional attention P.
        gate: (H,) g = sigmoid(gating_param).

    Returns:
        (B, N, C) attention output (heads interleaved as timm's ``transpose(1, 2).reshape``) and,
        with ``return_weights``, the (B, H, N, N) mixed weights (not renormalised).

    Two layouts, both keeping one chunk's (pairs, N, N) scores within the L2 cache budget of
    :mod:`vitfer.layers.attention`: for large grids each batch element runs on strided views of
    the projections (no copies of q, k, v; heads split in groups when needed); for small grids
    (at least ``_GROUP_MIN`` batch elements per chunk) q, k, v are gathered once into
    (B*H, N, d) and processed several batch elements at a time. ``scale`` is applied as the
    ``alpha`` of ``baddbmm``, i.e. ``(q k^T) * scale`` as timm orders it. Chunks are taken with
    ``split``/``unbind``, whose backward concatenates gradients (slicing would zero-fill a
    full-size gradient for every chunk).
    """
    B, N, C2 = qk.shape
    H = num_heads
    C = C2 // 2
    d = C // H
    gate = gate.to(qk.dtype).view(H, 1, 1)
    pos = pos.to(qk.dtype)
    inplace = not torch.is_grad_enabled() or not (qk.requires_grad or pos.requires_grad or gate.requires_grad)
    per_elem = H * N * N * qk.element_size()
    fit = max(1, CHUNK_BYTES // per_elem)
    weights: list[Tensor] = []

    if return_weights or fit >= _GROUP_MIN:
        bc = B if return_weights else fit  # batch elements per chunk
        q, k = qk.view(B, N, 2, H, d).permute(2, 0, 3, 1, 4).reshape(2, B * H, N, d).unbind(0)
        vh = v.view(B, N, H, d).transpose(1, 2).reshape(B * H, N, d)
        zero = qk.new_zeros(1, 1, 1).expand(bc * H, N, N)
        outs = []
        for qc, kc, vc in zip(q.split(bc * H), k.split(bc * H), vh.split(bc * H)):
            n = qc.shape[0]
            a = torch.baddbmm(zero[:n], qc, kc.transpose(1, 2), beta=0.0, alpha=scale).softmax(dim=-1)
            a = _mix(a.view(n // H, H, N, N), pos, gate, inplace).view(n, N, N)
            if return_weights:
                weights.append(a)
            if dropout_p > 0.0:
                a = F.dropout(a, p=dropout_p, training=True)
            outs.append(torch.bmm(a, vc))
        out = (outs[0] if len(outs) == 1 else torch.cat(outs)).view(B, H, N, d).transpose(1, 2).reshape(B, N, C)
    else:
        hc = balanced_chunk(H, CHUNK_BYTES // (N * N * qk.element_size()))  # heads per chunk
        zero = qk.new_zeros(1, 1, 1).expand(hc, N, N)
        poss, gates = pos.split(hc), gate.split(hc)
        outs = []
        for qk_b, v_b in zip(qk.view(B, N, 2, H, d).unbind(0), v.view(B, N, H, d).unbind(0)):
            q_b, k_b = (t.transpose(0, 1) for t in qk_b.unbind(1))  # (H, N, d) strided views
            parts = []
            for j, (qc, kc, vc) in enumerate(zip(q_b.split(hc), k_b.split(hc), v_b.transpose(0, 1).split(hc))):
                a = torch.baddbmm(zero[: qc.shape[0]], qc, kc.transpose(1, 2), beta=0.0, alpha=scale).softmax(dim=-1)
                a = _mix(a, poss[j], gates[j], inplace)
                if dropout_p > 0.0:
                    a = F.dropout(a, p=dropout_p, training=True)
                parts.append(torch.bmm(a, vc))
            outs.append((parts[0] if len(parts) == 1 else torch.cat(parts)).transpose(0, 1))  # (N, H, d)
        out = torch.stack(outs).view(B, N, C)
    w = None
    if return_weights:
        w = (weights[0] if len(weights) == 1 else torch.cat(weights)).view(B, H, N, N)
    return out, w


def gated_attention(
    qk: Tensor, v: Tensor, pos: Tensor, gate: Tensor, num_heads: int, scale: float, impl: str = "auto",
    dropout_p: float = 0.0,
) -> Tensor:
    """``((1 - g) softmax(q k^T * scale) + g P) v`` -> (B, N, C), with the dispatch of
    :mod:`vitfer.layers.attention`: the split SDPA form on CUDA (``impl="auto"``) or with
    ``"sdpa"``, when there is no attention dropout; the hand-written chunks otherwise.

    qk: (B, N, 2C) fused q|k projection, v: (B, N, C), pos: (H, N, N) positional attention,
    gate: (H,) sigmoid gates. One node under torch.fx (the choice is made at run time).
    """
    B, N, C = v.shape
    H = num_heads
    d = C // H
    if torch.jit.is_scripting():  # a scripted traced graph: the plain formula, same dispatch
        q, k = qk.view(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        vh = v.view(B, N, H, d).transpose(1, 2)
        g = gate.to(qk.dtype).view(1, H, 1, 1)
        pos = pos.to(qk.dtype)
        if (impl == "sdpa" or (impl == "auto" and qk.is_cuda)) and dropout_p == 0.0:
            out = torch.lerp(F.scaled_dot_product_attention(q, k, vh, scale=scale), torch.matmul(pos, vh), g)
        else:
            a = torch.lerp((torch.matmul(q, k.transpose(-2, -1)) * scale).softmax(dim=-1), pos.unsqueeze(0), g)
            if dropout_p > 0.0:
                a = F.dropout(a, p=dropout_p, training=True)
            out = torch.matmul(a, vh)
        return out.transpose(1, 2).reshape(B, N, C)
    if resolve_impl(impl, qk) == "sdpa" and dropout_p == 0.0:
        q, k = qk.view(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        vh = v.view(B, N, H, d).transpose(1, 2)
        content = F.scaled_dot_product_attention(q, k, vh, scale=scale)  # (B, H, N, d)
        positional = torch.matmul(pos.to(vh.dtype), vh)  # (H, N, N) @ (B, H, N, d)
        g = gate.to(content.dtype).view(1, H, 1, 1)
        return torch.lerp(content, positional, g).transpose(1, 2).reshape(B, N, C)
    return _gated_attention_manual(qk, v, pos, gate, H, scale, dropout_p, False)[0]


torch.fx.wrap("gated_attention")


class GPSA(nn.Module):
    """Gated positional self-attention over the N = S*S patch tokens of a square grid.

    Args:
        dim: token width C.
        num_heads: H; ``dim`` must be divisible by it.
        grid_size: (S, S) patch grid the relative indices are built for.
        qkv_bias: bias on ``qk`` and ``v`` (ConViT: False).
        attn_drop: dropout on the mixed attention weights (training only).
        proj_drop: dropout after the output projection.
        locality_strength: scale of the convolutional initialisation (:meth:`local_init`).
        impl: ``"auto"`` (SDPA split form on CUDA, hand-written elsewhere), ``"manual"``, ``"sdpa"``.

    x: (B, N, C) -> (B, N, C).
    """

    rel_indices: Tensor

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        grid_size: tuple[int, int] = (14, 14),
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        check_attention_args(dim, num_heads, impl)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.locality_strength = locality_strength
        self.impl = impl

        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.register_buffer("rel_indices", rel_indices(self.grid_size), persistent=False)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        """Rebuild the relative indices for another (square) patch grid."""
        grid_size = (int(grid_size[0]), int(grid_size[1]))
        ri = rel_indices(grid_size, self.rel_indices.dtype, self.rel_indices.device)
        self.grid_size = grid_size
        self.rel_indices = ri

    @torch.no_grad()
    def local_init(self) -> None:
        """ConViT's convolutional initialisation (timm's ``local_init``), for training from scratch.

        ``v`` becomes the identity; head ``h1 + k*h2`` of a k x k arrangement of the heads
        (k = floor(sqrt(H))) attends around offset (h2 - c, h1 - c) from the query patch,
        with ``pos_proj.weight[h] = [2 (h2 - c), 2 (h1 - c), -1] * locality_strength``.
        """
        self.v.weight.copy_(torch.eye(self.dim, dtype=self.v.weight.dtype, device=self.v.weight.device))
        ks = int(self.num_heads**0.5)
        center = (ks - 1) / 2 if ks % 2 == 0 else ks // 2
        w = self.pos_proj.weight
        for h1 in range(ks):
            for h2 in range(ks):
                pos = h1 + ks * h2
                w[pos, 2] = -1
                w[pos, 1] = 2 * (h1 - center)
                w[pos, 0] = 2 * (h2 - center)
        w.mul_(self.locality_strength)

    def gating(self) -> Tensor:
        """sigmoid(gating_param): (H,), how positional each head is (1 = purely positional)."""
        return torch.sigmoid(self.gating_param)

    def positional_attention(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """P = softmax(pos_proj(rel_indices)): (H, N, N), independent of the input."""
        ri = self.rel_indices if dtype is None else self.rel_indices.to(dtype)
        return self.pos_proj(ri).permute(2, 0, 1).softmax(dim=-1)

    def _check(self, x: Tensor) -> None:
        if is_tracing():
            torch._assert(
                (x.dim() == 3) & (x.shape[1] == self.num_patches) & (x.shape[2] == self.dim),
                f"GPSA expects tokens (B, {self.num_patches}, {self.dim})",
            )
            return
        if x.ndim != 3 or x.shape[1] != self.num_patches or x.shape[2] != self.dim:
            raise ValueError(
                f"GPSA expects tokens (B, {self.num_patches}, {self.dim}) for its {self.grid_size[0]}x"
                f"{self.grid_size[1]} patch grid, got {tuple(x.shape)}; call set_grid_size() for another grid"
            )

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from .scriptable import ScriptGPSA

        return ScriptGPSA(self)

    def forward(
        self, x: Tensor, return_attention: bool = False, residual: Optional[Tensor] = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, N, C) -> (B, N, C); with ``return_attention`` also the (B, H, N, N) mixed weights.
        With ``residual`` (B, N, C) the result is ``residual + attention(x)``, the residual being
        the accumulator of the output projection's GEMM (``residual`` is not modified).

        The returned weights are renormalised by their row sums, exactly as timm's
        ``get_attention`` (a change of about 1e-7).
        """
        self._check(x)
        qk = call_linear(self.qk, x)  # (B, N, 2C)
        v = call_linear(self.v, x)  # (B, N, C)
        pos = self.positional_attention(qk.dtype)  # (H, N, N), once for the whole batch
        gate = self.gating()
        p = self.attn_drop.p if self.training else 0.0
        w = None
        if return_attention:
            out, w = _gated_attention_manual(qk, v, pos, gate, self.num_heads, self.scale, p, True)
        else:
            out = gated_attention(qk, v, pos, gate, self.num_heads, self.scale, self.impl, p)
        out = branch_output(out, self.proj, self.proj_drop, residual)
        if return_attention:
            return out, w / w.sum(dim=-1, keepdim=True)
        return out

    def attention_map(self, x: Tensor) -> Tensor:
        """Per-head mean attention distance (H,) of input ``x`` (B, N, C), timm's ``get_attention_map``."""
        _, w = self.forward(x, return_attention=True)
        return attention_distance(w, self.rel_indices[..., 2].sqrt())


class GPSABlock(nn.Module):
    """ConViT's local block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` with GPSA.

    One ``drop_path`` module serves both branches (as in timm). x: (B, N, C) -> (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        locality_strength: float = 1.0,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = GPSA(
            dim, num_heads, grid_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            locality_strength=locality_strength, impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from .scriptable import ScriptGPSABlock

        return ScriptGPSABlock(self)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """With ``return_attention`` also returns the (B, H, N, N) mixed attention weights.

        Where stochastic depth is inactive and no forward hook watches ``attn`` or ``mlp``, each
        residual add is folded into the branch's last GEMM (:mod:`vitfer.layers.residual`)."""
        if not (self.training and isinstance(self.drop_path, DropPath)) and not has_hooks(self.attn, self.mlp):
            res = self.attn(self.norm1(x), return_attention=return_attention, residual=x)
            x, w = res if return_attention else (res, None)
            x = self.mlp(self.norm2(x), residual=x, inplace=True)  # x is this block's own tensor
            return (x, w) if return_attention else x
        if return_attention:
            a, w = self.attn(self.norm1(x), return_attention=True)
        else:
            a, w = self.attn(self.norm1(x)), None
        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, w) if return_attention else x
