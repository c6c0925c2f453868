"""Resampling of absolute position embeddings to another patch grid."""

import logging
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["infer_grid_size", "resample_abs_pos_embed"]

_logger = logging.getLogger(__name__)


def infer_grid_size(
    num_tokens: int, stored: Optional[Sequence[int]] = None, like: Optional[Sequence[int]] = None
) -> tuple[int, int]:
    """The (H, W) patch grid of ``num_tokens`` position embeddings (prefix tokens excluded).

    ``stored`` is the grid a checkpoint records (a vitfer checkpoint's config overrides give it,
    non-square ones included) and wins; without it the grid has the aspect of ``like`` (the
    model's own grid) if ``num_tokens`` allows, else it must be square.

    Raises:
        ValueError: ``stored`` does not hold ``num_tokens`` positions, or no grid can be inferred.
    """
    n = int(num_tokens)
    if stored is not None:
        h, w = int(stored[0]), int(stored[1])
        if h * w != n:
            raise ValueError(f"the checkpoint's grid {h}x{w} does not match its {n} position embeddings")
        return h, w
    if like is not None:
        lh, lw = int(like[0]), int(like[1])
        if lh != lw and lh > 0 and lw > 0:
            g = math.gcd(lh, lw)
            ah, aw = lh // g, lw // g  # the aspect in lowest terms: grids (k*ah, k*aw)
            k = math.isqrt(n // (ah * aw)) if n % (ah * aw) == 0 else 0
            if k > 0 and k * k * ah * aw == n:
                return k * ah, k * aw
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(
            f"cannot infer the patch grid of {n} position embeddings (not a square, nor of the model's aspect); "
            f"a checkpoint written by vitfer.save records its grid in its metadata"
        )
    return side, side


def resample_abs_pos_embed(
    posemb: Tensor,
    new_size: tuple[int, int],
    old_size: Optional[tuple[int, int]] = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resample (1, P + H*W, D) position embeddings to a (H', W') grid, as timm does.

    The first ``num_prefix_tokens`` rows (class / distillation tokens) are kept as they are; the
    grid part is reshaped to (1, D, H, W), interpolated in fp32 (bicubic with antialiasing by
    default) and flattened back. ``old_size`` defaults to a square grid.

    Returns:
        (1, P + H'*W', D) in the input's dtype.
    """
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"position embeddings must have shape (1, N, D), got {tuple(posemb.shape)}")
    new_size = (int(new_size[0]), int(new_size[1]))
    num_pos_tokens = posemb.shape[1]
    num_grid = num_pos_tokens - num_prefix_tokens
    if old_size is None:
        hw = int(math.sqrt(num_grid))
        if hw * hw != num_grid:
            raise ValueError(
                f"cannot infer a square grid from {num_grid} position embeddings; pass old_size"
            )
        old_size = (hw, hw)
    old_size = (int(old_size[0]), int(old_size[1]))
    if old_size[0] * old_size[1] != num_grid:
        raise ValueError(f"old_size {old_size} does not match {num_grid} grid position embeddings")
    if old_size == new_size:
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = posemb.shape[-1]
    dtype = posemb.dtype
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_size, mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    _logger.info("resampled position embeddings from %s to %s", old_size, new_size)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid
