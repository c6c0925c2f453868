"""Pre-norm transformer block."""

from functools import partial
from typing import Callable, Optional

from torch import Tensor, nn

from .attention import Attention
from .drop_path import DropPath
from .mlp import Mlp
from .residual import has_hooks

__all__ = ["Block", "LayerNorm6"]

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)
"""LayerNorm with eps 1e-6, the norm of every transformer in vitfer (and timm)."""


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, each branch with stochastic depth.

    x: (B, N, C) -> (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNorm6,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, impl=attn_impl)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from .scriptable import ScriptBlock

        return ScriptBlock(self)

    def forward(
        self, x: Tensor, attn_mask: Optional[Tensor] = None, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """With ``return_attention`` also returns the (B, H, N, N) attention weights.

        Where stochastic depth is inactive (eval, or ``drop_path=0``) and no forward hook watches
        ``attn`` or ``mlp``, each residual add is folded into the branch's last GEMM
        (:mod:`vitfer.layers.residual`)."""
        fuse = not (self.training and isinstance(self.drop_path1, DropPath)) and not has_hooks(self.attn, self.mlp)
        if fuse:
            res = self.attn(self.norm1(x), attn_mask=attn_mask, return_attention=return_attention, residual=x)
            x, w = res if return_attention else (res, None)
            # x is this block's own tensor now: the MLP may accumulate into it
            x = self.mlp(self.norm2(x), residual=x, inplace=True)
            return (x, w) if return_attention else x
        if return_attention:
            a, w = self.attn(self.norm1(x), attn_mask=attn_mask, return_attention=True)
        else:
            a, w = self.attn(self.norm1(x), attn_mask=attn_mask), None
        x = x + self.drop_path1(a)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, w) if return_attention else x
