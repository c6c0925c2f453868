"""A convolutional stem for Vision Transformers (Xiao et al., "Early Convolutions Help Transformers
See Better", NeurIPS 2021): a few 3x3 stride-2 convolutions with batch norm and ReLU, then a 1x1
convolution to the token width, in place of the single patchify convolution.

It gives the transformer local, translation-equivariant features and a well-conditioned input:
Xiao et al. report that it removes ViT's sensitivity to the learning rate and optimiser and
speeds up its convergence, at the cost of a few percent of the FLOPs. For vitfer's small faces
it is what makes a transformer learn from scratch at all (see the ``scratch`` recipe).

Names and arithmetic follow timm's ``vision_transformer_hybrid.ConvStem`` (``N.conv``, ``N.bn``,
the last layer a biased conv without norm or activation), so the two load each other's weights.
"""

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .tracing import is_tracing

__all__ = ["ConvNormAct", "ConvStem"]


class ConvNormAct(nn.Module):
    """``conv`` (no bias, symmetric padding ``((stride - 1) + (k - 1)) // 2``), then ``bn`` (batch
    norm followed by ReLU), or a plain biased conv when ``norm=False`` (``bn`` is then empty).

    x: (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)) for odd kernels.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, norm: bool = True) -> None:
        super().__init__()
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=not norm)
        # timm's BatchNormAct2d is a BatchNorm2d that applies its activation; a Sequential of the two
        # keeps its parameter names (bn.weight, bn.running_mean, ...) only if the norm is bn itself.
        self.bn = _BatchNormReLU(out_chs) if norm else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class _BatchNormReLU(nn.BatchNorm2d):
    def _check_input_dim(self, input: Tensor) -> None:
        if not is_tracing():  # torch.fx traces into this subclass: no Python check on a traced value
            super()._check_input_dim(input)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            return nn.functional.relu(super().forward(x), inplace=True)
        y = nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
            0.1 if self.momentum is None else self.momentum, self.eps,
        )
        return nn.functional.relu(y, inplace=True)


class ConvStem(nn.Sequential):
    """Convolutions ``channels[i]`` wide with ``kernel_size[i]`` and ``stride[i]``; all but the last
    are conv + BN + ReLU, the last a plain biased conv (the projection to tokens).

    x: (B, in_chans, H, W) -> (B, channels[-1], ceil(H / r), ceil(W / r)), r = :attr:`reduction`
    (the product of the strides). ``num_features`` is ``channels[-1]``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        channels: Sequence[int] = (32, 64, 128, 192),
        kernel_size: Sequence[int] = (3, 3, 3, 1),
        stride: Sequence[int] = (2, 2, 2, 1),
    ) -> None:
        super().__init__()
        channels, kernel_size, stride = tuple(channels), tuple(kernel_size), tuple(stride)
        if not (len(channels) == len(kernel_size) == len(stride) >= 1):
            raise ValueError(
                f"ConvStem needs as many channels, kernel sizes and strides (>= 1 each), got "
                f"{len(channels)}, {len(kernel_size)} and {len(stride)}"
            )
        if any(int(v) < 1 for v in channels + kernel_size + stride):
            raise ValueError(f"ConvStem sizes must be positive: channels={channels}, kernel_size={kernel_size}, stride={stride}")
        prev = in_chans
        for i, (c, k, s) in enumerate(zip(channels, kernel_size, stride)):
            self.add_module(str(i), ConvNormAct(prev, c, k, s, norm=i < len(channels) - 1))
            prev = c
        self.num_features = channels[-1]
        self.reduction = math.prod(stride)
        self.init_weights()

    def feature_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the output for an (H, W) input."""
        h, w = img_size
        for layer in self:
            conv = layer.conv
            (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        return h, w

    def init_weights(self) -> None:
        """PyTorch's defaults for the convolutions (as timm leaves them), BN (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
