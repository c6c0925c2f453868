"""TensorFlow-style 'SAME' padding for convolutions and max-pooling.

TF's SAME padding makes the output ``ceil(size / stride)`` and, when the total padding is odd,
puts the extra row / column at the bottom / right: (p // 2, p - p // 2). PyTorch's own
``padding=`` is symmetric, so the ViT-R50 hybrid's strided convolutions and its stem max-pool
pad the input explicitly (timm's ``pad_same``), the pool with ``-inf``.
"""

import math
from typing import Optional

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .patch_embed import to_2tuple

__all__ = [
    "MaxPool2dSame", "conv2d_same", "get_same_padding", "is_static_pad", "max_pool2d_same", "pad_same",
    "same_pad_amounts",
]


def get_same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> int:
    """Total SAME padding of one spatial dimension of length ``size``."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)


def is_static_pad(kernel_size: int, stride: int = 1, dilation: int = 1) -> bool:
    """SAME padding that does not depend on the input size (stride 1, odd effective kernel)."""
    return stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0


def same_pad_amounts(
    hw: tuple[int, int], kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1)
) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) SAME padding of an (H, W) input, in ``F.pad`` order."""
    ph = get_same_padding(hw[0], kernel_size[0], stride[0], dilation[0])
    pw = get_same_padding(hw[1], kernel_size[1], stride[1], dilation[1])
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad_same(
    x: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    value: float = 0.0,
) -> Tensor:
    """Pad x: (B, C, H, W) for a SAME convolution / pooling (no copy when no padding is needed)."""
    pads = same_pad_amounts((x.shape[-2], x.shape[-1]), kernel_size, stride, dilation)
    return F.pad(x, pads, value=value) if any(pads) else x


def _ceil_pool_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of PyTorch pooling with ``ceil_mode=True`` (last window starts in the input)."""
    out = -(-(size + 2 * padding - kernel_size) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def max_pool2d_same(x: Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Max-pooling of x (B, C, H, W) with TF SAME padding filled with ``-inf`` (see
    :class:`MaxPool2dSame`). One node under torch.fx: the padding is computed at run time."""
    size = (x.shape[-2], x.shape[-1])
    left, right, top, bottom = same_pad_amounts(size, kernel_size, stride)
    pad = (top, left)
    if all(
        2 * p <= k and n + 2 * p >= k and _ceil_pool_size(n, k, s, p) == math.ceil(n / s)
        for n, k, s, p in zip(size, kernel_size, stride, pad)
    ):
        return F.max_pool2d(x, kernel_size, stride, pad, ceil_mode=True)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel_size, stride)


def conv2d_same(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` with TF SAME padding (symmetric padding passed to the convolution where it
    is symmetric, an explicit ``F.pad`` otherwise). One node under torch.fx."""
    k = (weight.shape[-2], weight.shape[-1])
    left, right, top, bottom = same_pad_amounts((x.shape[-2], x.shape[-1]), k, stride, dilation)
    if left == right and top == bottom:
        padding = (top, left)
    else:
        x = F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


torch.fx.wrap("pad_same")
torch.fx.wrap("max_pool2d_same")


class MaxPool2dSame(nn.Module):
    """Max-pooling with TF SAME padding filled with ``-inf`` (timm's ``MaxPool2dSame``).

    x: (B, C, H, W) -> (B, C, ceil(H / s), ceil(W / s)).

    Padding with ``-inf`` means padded cells never win, which is exactly what PyTorch's own
    implicit pooling padding and ``ceil_mode`` windows do. So whenever the SAME windows coincide
    with those of ``F.max_pool2d(padding=left/top pad, ceil_mode=True)`` (same output size, left
    pad <= right pad <= kernel / 2) the pool runs without materialising a padded copy, with
    identical results; otherwise it pads explicitly like timm.
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kernel_size = to_2tuple(kernel_size)
        self.stride = to_2tuple(stride if stride is not None else kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d_same(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"
