"""Image to patch tokens."""

from typing import Optional

import torch
from torch import Tensor, nn

from .tracing import is_tracing

__all__ = ["PatchEmbed", "to_2tuple", "check_input"]


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)



def check_input(x: Tensor, in_chans: int, img_size: Optional[tuple[int, int]], model: str = "model") -> None:
    """Raise a ``ValueError`` naming expected and actual values if ``x`` is not (B, in_chans, H, W).

    ``img_size=None`` accepts any spatial size. While traced (torch.fx) the checks are
    ``torch._assert`` nodes of the graph (AssertionError with the same facts).
    """
    if torch.jit.is_scripting() or is_tracing():
        torch._assert(x.dim() == 4, f"{model} expects a 4-D input (B, {in_chans}, H, W)")
        torch._assert(x.shape[1] == in_chans, f"{model} expects {in_chans} input channels")
        if img_size is not None:
            torch._assert(
                (x.shape[2] == img_size[0]) & (x.shape[3] == img_size[1]),
                f"{model} expects input size {img_size[0]}x{img_size[1]}",
            )
        return
    if not torch.jit.is_scripting():
        check_input_eager(x, in_chans, img_size, model)


def check_input_eager(x: Tensor, in_chans: int, img_size: Optional[tuple[int, int]], model: str = "model") -> None:
    """The eager checks of :func:`check_input` (ValueError / TypeError naming the culprit)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model} expects a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{model} expects a 4-D input (B, {in_chans}, H, W), got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{model} expects {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    if img_size is not None and tuple(x.shape[2:]) != tuple(img_size):
        raise ValueError(
            f"{model} expects input size {img_size[0]}x{img_size[1]}, got {x.shape[2]}x{x.shape[3]}; "
            f"resize the input, or build the model with img_size=({x.shape[2]}, {x.shape[3]}) "
            f"(or call model.set_input_size(...)) to resample its position embeddings"
        )


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: a Conv2d with kernel = stride = patch.

    x: (B, C, H, W) -> (B, N, D) with N = (H / p) * (W / p).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
        strict_img_size: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.strict_img_size = strict_img_size
        self.img_size = to_2tuple(img_size)
        self._check_divisible(self.img_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def _check_divisible(self, img_size: tuple[int, int]) -> None:
        if img_size[0] % self.patch_size[0] or img_size[1] % self.patch_size[1]:
            raise ValueError(
                f"image size {img_size} is not divisible by the patch size {self.patch_size}"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        g = self.grid_size
        return g[0] * g[1]

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        img_size = to_2tuple(img_size)
        self._check_divisible(img_size)
        self.img_size = img_size

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.img_size if self.strict_img_size else None, "patch embedding")
        return self.proj(x).flatten(2).transpose(1, 2)
