"""Class-token cross-attention and the fusion block of CrossViT (Chen et al., ICCV 2021).

In a CrossViT fusion the class token of one branch (projected to the other branch's width) is
the only query; the keys and values are all tokens of the sequence ``[cls; patches of the other
branch]``, the class token itself included. Parameter names follow timm (``wq``, ``wk``, ``wv``,
``proj``; the block's ``norm1`` and ``attn``) so that timm and IBM checkpoints load unchanged.

Computation. With a single query per head the keys and values need not be formed: for head h,
with ``q_h = wq(x_0)_h`` (hd values) and the rows ``Wk_h`` (hd, C), ``Wv_h`` (hd, C) of ``wk`` and
``wv`` belonging to that head,

    q_h . k_hj         = (q_h Wk_h) . x_j + q_h . bk_h
    sum_j a_hj v_hj    = Wv_h (sum_j a_hj x_j) + bv_h        (the weights a_h sum to one)

so the attention runs over the C-wide tokens ``x`` directly, with the H per-head queries
``q_h Wk_h`` as H query rows of one "head" and the constant ``q_h . bk_h`` as an additive mask
(it cancels in the softmax, but keeps ``wk.bias`` in the autograd graph as in timm). This costs
O(B H N C + B C^2) instead of O(B N C^2) for ``wk(x)`` and ``wv(x)``, and gives timm's result up to
rounding. Attention dropout in training breaks the "weights sum to one" step, so with
``attn_drop > 0`` in training mode the direct formula (``wk(x)``, ``wv(x)``) is used instead.
The attention itself goes through :func:`vitfer.layers.attention.scaled_dot_product_attention`
(PyTorch's fused kernel on CUDA, the hand-written path elsewhere and whenever weights are asked for).
"""

from typing import Callable

import torch
import torch.fx
from torch import Tensor, nn

from .attention import attention, check_attention_args, scaled_dot_product_attention
from .block import LayerNorm6
from .drop_path import DropPath
from .residual import call_linear
from .tracing import is_tracing

torch.fx.wrap("scaled_dot_product_attention")  # one graph node under torch.fx (see attention.py)
torch.fx.wrap("attention")

__all__ = ["CrossAttention", "CrossAttentionBlock"]


class CrossAttention(nn.Module):
    """Multi-head attention in which only the class token (token 0) queries.

    Args:
        dim: token width C.
        num_heads: H; ``dim`` must be divisible by it.
        qkv_bias: biases on ``wq``, ``wk`` and ``wv``.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        impl: attention implementation, see :func:`vitfer.layers.attention.scaled_dot_product_attention`.

    ``forward(x)``: x (B, N, C) -> (B, 1, C); with ``return_attention`` also the (B, H, 1, N)
    attention weights of the class token over all N tokens.
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
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from .scriptable import ScriptCrossAttention

        return ScriptCrossAttention(self)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, N, C) -> (B, 1, C) [, weights (B, H, 1, N)]."""
        p = self.attn_drop.p if self.training else 0.0
        q = self.wq(x[:, 0])  # (B, C)
        if p > 0.0:
            out, w = self._forward_direct(x, q, p, return_attention)
        else:
            out, w = self._forward_folded(x, q, return_attention)
        out = self.proj_drop(self.proj(out))
        return (out, w) if return_attention else out

    def _forward_folded(self, x: Tensor, q: Tensor, return_attention: bool) -> tuple[Tensor, Tensor | None]:
        """The single-query shortcut of the module docstring (no attention dropout)."""
        B, N, C = x.shape
        H, hd = self.num_heads, self.head_dim
        qh = q.view(B, H, hd).transpose(0, 1)  # (H, B, hd)
        # per-head queries in token space: q_h Wk_h -> (H, B, C)
        qx = torch.bmm(qh, self.wk.weight.view(H, hd, C))
        mask = None
        if self.wk.bias is not None:
            # q_h . bk_h: constant along the keys (cancels in the softmax), kept for timm's graph
            mask = (qh * self.wk.bias.view(H, 1, hd)).sum(-1).mul(self.scale)  # (H, B)
            mask = mask.transpose(0, 1).reshape(B, 1, H, 1)
        # queries (B, 1, H, C), keys = values = x (B, 1, N, C)
        if not return_attention and is_tracing():  # one traced node that TorchScript also compiles
            res = attention(qx.transpose(0, 1).unsqueeze(1), x.unsqueeze(1), x.unsqueeze(1), self.scale, 0.0, self.impl, mask)
        else:
            res = scaled_dot_product_attention(
                qx.transpose(0, 1).unsqueeze(1), x.unsqueeze(1), x.unsqueeze(1), attn_mask=mask,
                scale=self.scale, impl=self.impl, return_weights=return_attention,
            )
        ax, w = res if return_attention else (res, None)  # ax: (B, 1, H, C) = sum_j a_hj x_j
        # Wv_h (sum_j a_hj x_j) for every head: (H, B, C) @ (H, C, hd) -> (H, B, hd)
        out = torch.bmm(ax.squeeze(1).transpose(0, 1), self.wv.weight.view(H, hd, C).transpose(1, 2))
        out = out.transpose(0, 1).reshape(B, 1, C)
        if self.wv.bias is not None:
            out = out + self.wv.bias
        if w is not None:
            w = w.view(B, H, 1, N)
        return out, w

    def _forward_direct(self, x: Tensor, q: Tensor, p: float, return_attention: bool) -> tuple[Tensor, Tensor | None]:
        """timm's formula: keys and values of every token (used with attention dropout)."""
        B, N, C = x.shape
        H, hd = self.num_heads, self.head_dim
        qh = q.view(B, 1, H, hd).transpose(1, 2)
        k = call_linear(self.wk, x).view(B, N, H, hd).transpose(1, 2)
        v = call_linear(self.wv, x).view(B, N, H, hd).transpose(1, 2)
        if not return_attention and is_tracing():
            res = attention(qh, k, v, self.scale, p, self.impl)
        else:
            res = scaled_dot_product_attention(
                qh, k, v, dropout_p=p, scale=self.scale, impl=self.impl, return_weights=return_attention
            )
        out, w = res if return_attention else (res, None)
        return out.transpose(1, 2).reshape(B, 1, C), w


class CrossAttentionBlock(nn.Module):
    """CrossViT's fusion block: ``x[:, :1] + drop_path(attn(norm1(x)))``, no MLP.

    x: (B, N, C) -> the updated class token (B, 1, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNorm6,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = CrossAttention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, impl=attn_impl
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from .scriptable import ScriptCrossAttentionBlock

        return ScriptCrossAttentionBlock(self)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, N, C) -> (B, 1, C) [, weights (B, H, 1, N)]."""
        if return_attention:
            a, w = self.attn(self.norm1(x), return_attention=True)
            return x[:, :1] + self.drop_path(a), w
        return x[:, :1] + self.drop_path(self.attn(self.norm1(x)))
