"""Weight-standardised convolution with TF 'SAME' padding (the ViT-R50 hybrid's ResNetV2 convs).

Weight standardisation (Qiao et al., arXiv:1903.10520) normalises each output filter of the
kernel to zero mean and unit (biased) variance before convolving::

    w_hat = (w - mean(w[o])) / sqrt(var(w[o]) + eps)

computed, as in timm's ``StdConv2dSame``, with ``F.batch_norm`` over (1, O, I*kh*kw) so that the
rounding is the same. The hybrid's checkpoints use ``eps=1e-8``.
"""

from typing import Any, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ._compile import is_compiling
from .padding import conv2d_same, is_static_pad
from .tracing import is_tracing

torch.fx.wrap("conv2d_same")  # one graph node under torch.fx: SAME padding depends on the input size
from .patch_embed import to_2tuple

__all__ = ["StdConv2dSame", "standardize_weight"]


def standardize_weight(weight: Tensor, eps: float) -> Tensor:
    """weight: (O, I, kh, kw) -> the same shape, each filter w[o] standardised (biased variance)."""
    o = weight.shape[0]
    return F.batch_norm(
        weight.reshape(1, o, -1), None, None, training=True, momentum=0.0, eps=eps
    ).reshape_as(weight)


class StdConv2dSame(nn.Conv2d):
    """Conv2d with weight standardisation and TF SAME padding (timm's ``StdConv2dSame``).

    x: (B, I, H, W) -> (B, O, ceil(H / s), ceil(W / s)).

    Padding: stride-1 convolutions with an odd kernel pad symmetrically through ``padding=``;
    otherwise the (possibly asymmetric, (p // 2, p - p // 2)) padding is worked out from the input
    size on each call, and the input is only copied by ``F.pad`` when it is asymmetric.

    Standardised weight: when no gradient has to flow into ``weight`` (``torch.no_grad()``,
    inference mode, or a frozen weight) the standardised kernel is kept between calls and reused
    until the weight changes (keyed on its version counter, storage, dtype and device, so an
    optimiser step, ``load_state_dict`` or ``.to()`` all invalidate it). With gradients, and while
    ``torch.compile`` traces, it is recomputed on every call as in timm. Results are identical
    either way. Caveat: writes through ``weight.data`` bypass the version counter; call
    :meth:`clear_cache` after such writes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        eps: float = 1e-6,
    ) -> None:
        k, s, d = to_2tuple(kernel_size), to_2tuple(stride), to_2tuple(dilation)
        static = all(is_static_pad(*a) for a in zip(k, s, d))
        padding = tuple((dd * (kk - 1)) // 2 for kk, dd in zip(k, d)) if static else (0, 0)
        super().__init__(
            in_channels, out_channels, k, stride=s, padding=padding, dilation=d, groups=groups, bias=bias
        )
        self.same_pad = not static
        self.eps = eps
        self._std_cache: Optional[tuple[Any, Tensor]] = None

    def clear_cache(self) -> None:
        """Forget the cached standardised weight."""
        self._std_cache = None

    def standardized_weight(self) -> Tensor:
        """The standardised kernel (O, I, kh, kw) used by ``forward``."""
        if not torch.jit.is_scripting():
            return self._standardized_weight_cached()
        return standardize_weight(self.weight, self.eps)

    def _standardized_weight_cached(self) -> Tensor:
        w = self.weight
        if is_compiling() or is_tracing() or (torch.is_grad_enabled() and w.requires_grad):
            return standardize_weight(w, self.eps)
        key = (w._version, w.data_ptr(), w.dtype, w.device, torch.is_inference_mode_enabled(), self.eps)
        cache = self._std_cache
        if cache is None or cache[0] != key:
            cache = (key, standardize_weight(w.detach(), self.eps))
            self._std_cache = cache
        return cache[1]

    def forward(self, x: Tensor) -> Tensor:
        if self.same_pad:
            return conv2d_same(x, self.standardized_weight(), self.bias, self.stride, self.dilation, self.groups)
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, tf_same_padding=True"
