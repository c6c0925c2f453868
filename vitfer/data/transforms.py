"""Hand-written image transforms on float tensors (no torchvision).

Every transform takes a float image ``(C, H, W)`` or a batch ``(B, C, H, W)``, values in
``[0, 1]`` before :class:`Normalize`, and returns the same layout. Random transforms draw one
set of parameters per image (per sample in a batch).

Randomness
----------
Every transform is called as ``t(x, generator=None)``. Random draws come from ``generator``
(a :class:`torch.Generator`) when one is given and from torch's global RNG otherwise;
:class:`Compose` passes its generator on to each step. So::

    g = torch.Generator().manual_seed(0)
    pipeline(x, generator=g)          # the same output for the same seed, always

The datasets of :mod:`vitfer.data` go one step further: with ``dataset.seed`` set, item ``i`` in
epoch ``e`` is transformed with :func:`item_generator` ``(seed, e, i)``. Its augmentation then
depends only on ``(seed, epoch, index)``, not on the number of DataLoader workers, the worker
that loads it or the order of the batch, which makes augmented runs reproducible and
worker-safe.

Pipelines
---------
:func:`build_transforms` composes the pipeline of a split from a model's pretrained config
(``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``): the eval pipeline is timm's
eval transform (resize the shorter side to ``floor(size / crop_pct)``, centre crop to ``size``,
normalise); the train pipeline adds the augmentations of the study (flips, rotation,
translation, pixel-level jitter), configured by an ``augment`` dict.

Channels
--------
A pipeline from :func:`build_transforms` starts with :class:`ToChannels`, which converts the
image to the channel count ``C`` of ``input_size = (C, H, W)``: grey to 3 channels by
repetition, RGB to grey by ITU-R 601 luma (``0.299 R + 0.587 G + 0.114 B``), and leaves an
image that already has ``C`` channels as it is (:func:`to_channels`). So the same pipeline feeds
a grey (``in_chans=1``) or an RGB model from grey or RGB data, and the datasets hand it their
stored channels. For ``C = 1`` a 3-value ``mean`` / ``std`` (ImageNet's, say) is reduced to the
mean of its three values.

Face crops
----------
``crop_pct`` (ImageNet's 0.875 by default) centre-crops ``crop_pct`` of the resized image: right
for photos with margins, wrong for datasets whose images are already tight face crops (CK+48,
JAFFE, :class:`~vitfer.data.SyntheticFaces`; ``dataset.face_cropped``), where it cuts off the
chin, brows and cheeks. ``build_transforms(cfg, train=..., crop_pct=1.0)`` overrides the cfg's
value and keeps the whole face (resize to the input size, no cut).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Transform",
    "Compose",
    "ToChannels",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomAffine",
    "RandomRotation",
    "RandomTranslation",
    "ColorJitter",
    "GaussianNoise",
    "Normalize",
    "DEFAULT_AUGMENT",
    "build_transforms",
    "item_generator",
    "resize",
    "center_crop",
    "affine",
    "to_channels",
    "LUMA_WEIGHTS",
]

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

#: ITU-R BT.601 luma weights of R, G and B (they sum to 1): RGB -> grey in :func:`to_channels`.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

#: Default train-time augmentation for faces (see :func:`build_transforms`).
DEFAULT_AUGMENT: dict[str, Any] = {
    "hflip": 0.5,  # probability of a horizontal flip
    "vflip": 0.0,  # probability of a vertical flip (faces are upright: off by default)
    "rotation": 10.0,  # maximum rotation in degrees (uniform in [-r, r])
    "translate": 0.05,  # maximum shift as a fraction of width / height
    "scale": None,  # (min, max) zoom factor of the affine step, None for no zoom
    "brightness": 0.2,  # brightness factor uniform in [1 - b, 1 + b]
    "contrast": 0.2,  # contrast factor uniform in [1 - c, 1 + c]
    "noise": 0.0,  # standard deviation of additive Gaussian noise (0 = off)
    "random_resized_crop": None,  # (min_area, max_area) to replace resize + centre crop
}


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, index)`` (numpy ``SeedSequence`` mixing).

    Distinct triples give statistically independent streams; the same triple always gives
    the same stream, in any process.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(
        2, dtype=np.uint32
    )
    value = (int(state[0]) << 31) | (int(state[1]) >> 1)  # 62 bits, inside manual_seed's range
    return torch.Generator().manual_seed(value)


def _as_batch(x: Tensor) -> tuple[Tensor, bool]:
    """``(C, H, W)`` -> ``(1, C, H, W)``; returns the batch and whether it was a single image."""
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(x.shape)}")


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"{name} must be an int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def _range(value: float | Sequence[float], name: str, *, center: float = 0.0) -> tuple[float, float]:
    """``v`` -> ``(center - v, center + v)``; a pair is returned as is."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return center - float(value), center + float(value)
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name} range must be (min, max), got {value!r}")
    return lo, hi


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    """``n`` floats uniform in ``[lo, hi]``: (n,)."""
    return torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo) + lo


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


class Transform:
    """Base class: ``t(x, generator=None) -> Tensor`` on ``(C, H, W)`` or ``(B, C, H, W)``."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, passing the same generator to each.

    Plain callables (without a ``generator`` parameter) are allowed and called as ``t(x)``.
    """

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for t in self.transforms:
            x = t(x, generator=generator) if isinstance(t, Transform) else t(x)
        return x

    @property
    def channels(self) -> int | None:
        """The channel count the pipeline converts to first (a leading :class:`ToChannels`), else None."""
        first = self.transforms[0] if self.transforms else None
        return first.channels if isinstance(first, ToChannels) else None

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Any:
        return self.transforms[i]

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


def to_channels(x: Tensor, c: int) -> Tensor:
    """Convert an image or batch to ``c`` channels (1 = grey, 3 = RGB).

    grey -> 3 repeats the channel (a copy, not a view); 3 -> grey is the ITU-R 601 luma
    ``0.299 R + 0.587 G + 0.114 B`` (:data:`LUMA_WEIGHTS`), so a grey image repeated over 3
    channels comes back as itself; an image that already has ``c`` channels is returned as is
    (the same tensor).

    Args:
        x: (C, H, W) or (B, C, H, W), C = 1 or 3. Floating point (values in any range; the luma
            of ``[0, 1]`` values stays in ``[0, 1]``) or uint8 (the luma is rounded).
        c: 1 or 3.

    Returns:
        (c, H, W) or (B, c, H, W), the dtype of ``x``.

    Raises:
        ValueError: ``c`` is not 1 or 3, or ``x`` is not (C, H, W) / (B, C, H, W) with C = 1 or 3.
    """
    if c not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {c!r}")
    if x.ndim not in (3, 4) or x.shape[-3] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    have = x.shape[-3]
    if have == c:
        return x
    if c == 3:
        reps = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
        return x.repeat(*reps)
    work = x if x.is_floating_point() else x.to(torch.float32)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=work.dtype, device=work.device).view(3, 1, 1)
    grey = (work * weights).sum(-3, keepdim=True)
    if x.is_floating_point():
        return grey
    info = torch.iinfo(x.dtype)
    return grey.round_().clamp_(info.min, info.max).to(x.dtype)


class ToChannels(Transform):
    """Convert to ``channels`` channels (1 or 3); see :func:`to_channels`.

    The first step of every :func:`build_transforms` pipeline, so that datasets can hand it
    their stored channels (1 for grey data, 3 for colour) whatever the model takes.
    """

    def __init__(self, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        self.channels = int(channels)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return to_channels(x, self.channels)

    def _params(self) -> dict[str, Any]:
        return {"channels": self.channels}


def resize(x: Tensor, size: tuple[int, int], interpolation: str = "bilinear", clamp: bool = True) -> Tensor:
    """Resize to exactly ``size``.

    Args:
        x: (C, H, W) or (B, C, H, W) float.
        size: (height, width) of the output.
        interpolation: ``nearest``, ``bilinear`` or ``bicubic``; the last two are antialiased
            (like PIL), in both directions.
        clamp: clip bicubic overshoot to ``[0, 1]`` (PIL's uint8 output is clipped the same way).

    Returns:
        (C, h, w) or (B, C, h, w).
    """
    _check_interpolation(interpolation)
    xb, single = _as_batch(x)
    if tuple(xb.shape[-2:]) != tuple(size):
        if interpolation == "nearest":
            xb = F.interpolate(xb, size=size, mode="nearest-exact")
        else:
            xb = F.interpolate(xb, size=size, mode=interpolation, align_corners=False, antialias=True)
            if clamp and interpolation == "bicubic":
                xb = xb.clamp(0.0, 1.0)
    return xb[0] if single else xb


class Resize(Transform):
    """Resize: an int resizes the shorter side (aspect kept, like torchvision), a pair is exact.

    With an int ``size`` the longer side becomes ``int(size * long / short)``.
    """

    def __init__(self, size: int | Sequence[int], interpolation: str = "bilinear", clamp: bool = True) -> None:
        self.size = size if isinstance(size, int) else _pair(size, "size")
        self.interpolation = _check_interpolation(interpolation)
        self.clamp = clamp

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` this transform gives for an input of ``height x width``."""
        if not isinstance(self.size, int):
            return self.size
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        size = self.output_size(x.shape[-2], x.shape[-1])
        return resize(x, size, self.interpolation, self.clamp)

    def _params(self) -> dict[str, Any]:
        return {"size": self.size, "interpolation": self.interpolation}


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop the centre ``size = (h, w)``, zero-padding first where the image is smaller.

    Offsets are ``round((H - h) / 2)``, as torchvision computes them.

    Args:
        x: (C, H, W) or (B, C, H, W).

    Returns:
        (C, h, w) or (B, C, h, w).
    """
    th, tw = size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h, w = x.shape[-2:]
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


class CenterCrop(Transform):
    """Centre crop to ``size`` (int or (h, w)); see :func:`center_crop`."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "size")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return center_crop(x, self.size)

    def _params(self) -> dict[str, Any]:
        return {"size": self.size}


class RandomResizedCrop(Transform):
    """Crop a random area and aspect ratio, then resize it to ``size`` (Inception-style).

    Parameters are drawn as in torchvision: up to 10 tries of area fraction uniform in
    ``scale`` and log-uniform aspect ratio in ``ratio``; if none fits, a centre crop of the
    nearest valid ratio.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: str = "bilinear",
    ) -> None:
        self.size = _pair(size, "size")
        self.scale = _range(scale, "scale")
        self.ratio = _range(ratio, "ratio")
        if not 0 < self.scale[0] <= self.scale[1] or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"scale and ratio must be positive (min, max), got {scale!r}, {ratio!r}")
        self.interpolation = _check_interpolation(interpolation)

    def get_params(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """Draw one crop ``(top, left, h, w)`` for an image of ``height x width``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * float(_uniform(1, *self.scale, generator)[0])
            aspect = math.exp(float(_uniform(1, *log_ratio, generator)[0]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        xb, single = _as_batch(x)
        out = []
        for img in xb:
            top, left, h, w = self.get_params(img.shape[-2], img.shape[-1], generator)
            out.append(resize(img[:, top : top + h, left : left + w], self.size, self.interpolation))
        y = torch.stack(out)
        return y[0] if single else y

    def _params(self) -> dict[str, Any]:
        return {"size": self.size, "scale": self.scale, "ratio": self.ratio, "interpolation": self.interpolation}


class _RandomFlip(Transform):
    dim = -1

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        xb, single = _as_batch(x)
        flip = torch.rand(xb.shape[0], generator=generator) < self.p  # (B,)
        y = torch.where(flip[:, None, None, None], xb.flip(self.dim), xb)
        return y[0] if single else y

    def _params(self) -> dict[str, Any]:
        return {"p": self.p}


class RandomHorizontalFlip(_RandomFlip):
    """Mirror left-right with probability ``p`` (per image)."""

    dim = -1


class RandomVerticalFlip(_RandomFlip):
    """Mirror top-bottom with probability ``p`` (per image)."""

    dim = -2


def affine(
    x: Tensor,
    angle: Tensor,
    translate: Tensor,
    scale: Tensor,
    interpolation: str = "bilinear",
    fill: float = 0.0,
) -> Tensor:
    """Rotate, scale and shift images about their centre (``affine_grid`` + ``grid_sample``).

    Args:
        x: (B, C, H, W) float.
        angle: (B,) degrees, counter-clockwise as seen on screen.
        translate: (B, 2) shift ``(dx, dy)`` in pixels, right and down positive.
        scale: (B,) zoom factor (> 1 enlarges).
        interpolation: ``nearest``, ``bilinear`` or ``bicubic``.
        fill: value of pixels that come from outside the image.

    Returns:
        (B, C, H, W).
    """
    _check_interpolation(interpolation)
    b, _, h, w = x.shape
    a = torch.deg2rad(angle.to(torch.float64))
    cos, sin = torch.cos(a), torch.sin(a)
    s = scale.to(torch.float64)
    # Output pixel offset o (from the centre, y down) comes from input offset
    # A^-1 (o - t), with A = s * [[cos, sin], [-sin, cos]] the on-screen CCW rotation.
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / s[:, None, None]
    # normalised coordinates (align_corners=False): offset = n * (W/2, H/2)
    half = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
    lin = inv * half[None, None, :] / half[None, :, None]
    shift = -(inv @ translate.to(torch.float64)[:, :, None])[:, :, 0] / half[None, :]
    theta = torch.cat([lin, shift[:, :, None]], dim=2).to(x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    if fill != 0.0:
        ones = torch.ones_like(x[:, :1])
        cover = F.grid_sample(ones, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
        y = y + (1.0 - cover) * fill
    return y


class RandomAffine(Transform):
    """Random rotation, shift and zoom in one resampling step.

    Args:
        degrees: maximum angle ``d`` (uniform in ``[-d, d]``) or a ``(min, max)`` range.
        translate: maximum shift as fractions ``(fx, fy)`` of width and height (uniform in
            ``[-f, f]``); a float applies to both.
        scale: ``(min, max)`` zoom factor, or None for none.
        interpolation: resampling (``bilinear`` default).
        fill: value for pixels uncovered by the transform (0 = black before normalisation).
    """

    def __init__(
        self,
        degrees: float | Sequence[float] = 0.0,
        translate: float | Sequence[float] = (0.0, 0.0),
        scale: Sequence[float] | None = None,
        interpolation: str = "bilinear",
        fill: float = 0.0,
    ) -> None:
        self.degrees = _range(degrees, "degrees")
        tx, ty = (translate, translate) if isinstance(translate, (int, float)) else translate
        if not (0.0 <= tx <= 1.0 and 0.0 <= ty <= 1.0):
            raise ValueError(f"translate fractions must be in [0, 1], got {translate!r}")
        self.translate = (float(tx), float(ty))
        self.scale = None if scale is None else _range(scale, "scale")
        if self.scale is not None and self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.interpolation = _check_interpolation(interpolation)
        self.fill = float(fill)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        xb, single = _as_batch(x)
        b, _, h, w = xb.shape
        angle = _uniform(b, *self.degrees, generator)
        dx = _uniform(b, -self.translate[0], self.translate[0], generator) * w
        dy = _uniform(b, -self.translate[1], self.translate[1], generator) * h
        scale = _uniform(b, *self.scale, generator) if self.scale is not None else torch.ones(b, dtype=torch.float64)
        y = affine(xb, angle, torch.stack([dx, dy], -1), scale, self.interpolation, self.fill)
        return y[0] if single else y

    def _params(self) -> dict[str, Any]:
        return {"degrees": self.degrees, "translate": self.translate, "scale": self.scale, "fill": self.fill}


class RandomRotation(RandomAffine):
    """Random rotation by an angle uniform in ``[-degrees, degrees]`` (or a ``(min, max)`` range)."""

    def __init__(self, degrees: float | Sequence[float], interpolation: str = "bilinear", fill: float = 0.0) -> None:
        super().__init__(degrees=degrees, interpolation=interpolation, fill=fill)


class RandomTranslation(RandomAffine):
    """Random shift by up to ``translate = (fx, fy)`` of the width and height."""

    def __init__(self, translate: float | Sequence[float], interpolation: str = "bilinear", fill: float = 0.0) -> None:
        super().__init__(translate=translate, interpolation=interpolation, fill=fill)


def _grey_mean(x: Tensor) -> Tensor:
    """Mean luminance per image: (B, C, H, W) -> (B, 1, 1, 1) (ITU-R 601 weights for RGB)."""
    if x.shape[1] == 3:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
        grey = (x * weights).sum(1, keepdim=True)
    else:
        grey = x.mean(1, keepdim=True)
    return grey.mean((2, 3), keepdim=True)


class ColorJitter(Transform):
    """Random brightness, then contrast, each a factor uniform in ``[1 - v, 1 + v]``.

    Brightness multiplies the image; contrast blends it with its mean grey level
    (``f * x + (1 - f) * mean``). The result is clipped to ``[0, 1]``.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0) -> None:
        self.brightness = _range(brightness, "brightness", center=1.0)
        self.contrast = _range(contrast, "contrast", center=1.0)
        self.brightness = (max(self.brightness[0], 0.0), self.brightness[1])
        self.contrast = (max(self.contrast[0], 0.0), self.contrast[1])

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        xb, single = _as_batch(x)
        b = xb.shape[0]
        fb = _uniform(b, *self.brightness, generator).to(xb.dtype).view(b, 1, 1, 1)
        fc = _uniform(b, *self.contrast, generator).to(xb.dtype).view(b, 1, 1, 1)
        y = (xb * fb).clamp(0.0, 1.0)
        y = (fc * y + (1.0 - fc) * _grey_mean(y)).clamp(0.0, 1.0)
        return y[0] if single else y

    def _params(self) -> dict[str, Any]:
        return {"brightness": self.brightness, "contrast": self.contrast}


class GaussianNoise(Transform):
    """Add ``N(0, std^2)`` noise (with probability ``p`` per image), clipped to ``[0, 1]``."""

    def __init__(self, std: float = 0.02, p: float = 1.0) -> None:
        if std < 0 or not 0.0 <= p <= 1.0:
            raise ValueError(f"need std >= 0 and p in [0, 1], got std={std}, p={p}")
        self.std = float(std)
        self.p = float(p)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        xb, single = _as_batch(x)
        apply = (torch.rand(xb.shape[0], generator=generator) < self.p).to(xb.dtype).view(-1, 1, 1, 1)
        noise = torch.randn(xb.shape, generator=generator, dtype=xb.dtype)
        y = (xb + apply * self.std * noise).clamp(0.0, 1.0)
        return y[0] if single else y

    def _params(self) -> dict[str, Any]:
        return {"std": self.std, "p": self.p}


class Normalize(Transform):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` have one value per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std must have the same length and std > 0, got {mean!r}, {std!r}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.shape[-3] != len(self.mean):
            raise ValueError(f"Normalize has {len(self.mean)} channels, the image {x.shape[-3]}")
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype).view(shape)
        return (x - mean) / std

    def _params(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def _per_channel(values: Any, channels: int, name: str) -> tuple[float, ...]:
    """``mean`` / ``std`` with one value per channel: 3 values for grey become their mean, 1 value
    for RGB is repeated."""
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(vals) == channels:
        return vals
    if channels == 1 and len(vals) == 3:
        return (sum(vals) / 3.0,)
    if channels == 3 and len(vals) == 1:
        return vals * 3
    raise ValueError(f"cfg {name} has {len(vals)} values for an input of {channels} channel(s): {values!r}")


def build_transforms(
    cfg: Mapping[str, Any] | Any,
    *,
    train: bool,
    augment: Mapping[str, Any] | None = None,
    crop_pct: float | None = None,
) -> Compose:
    """Compose the pipeline of one split from a model's pretrained config.

    Args:
        cfg: mapping or object (e.g. a model's ``pretrained_cfg``) with ``input_size``
            ``(C, H, W)`` (required; C = 1 for a grey model, 3 for RGB), and optionally
            ``interpolation`` (``bicubic`` default), ``mean`` / ``std`` (ImageNet default) and
            ``crop_pct`` (0.875 default).
        train: add the random augmentations (train split) or not (val / test).
        augment: overrides of :data:`DEFAULT_AUGMENT` (unknown keys are an error). Set a key to
            0 / None to turn that augmentation off. Ignored when ``train`` is False.
        crop_pct: overrides the cfg's ``crop_pct`` when given, in ``(0, 1]``. Pass 1.0 for data
            that is already cropped to the face (``dataset.face_cropped``: CK+48, JAFFE,
            synthetic faces): the image is resized to the input size and nothing is cut off.

    Returns:
        A :class:`Compose` taking float images (1 or 3, h, w) in ``[0, 1]`` of any size to
        normalised (C, H, W). First ``ToChannels(C)`` (grey -> RGB by repetition, RGB -> grey
        by ITU-R 601 luma; see :func:`to_channels`). Eval: then ``Resize(floor(size /
        crop_pct))`` (shorter side), ``CenterCrop(size)``, ``Normalize``. Train: the same resize
        and crop (or a ``RandomResizedCrop`` when ``random_resized_crop`` is set), then
        horizontal / vertical flips, one ``RandomAffine`` (rotation, translation, zoom),
        ``ColorJitter``, ``GaussianNoise``, ``Normalize``. For C = 1, a cfg ``mean`` / ``std``
        of 3 values (ImageNet's, or a model's RGB statistics) is reduced to the mean of the
        three (ImageNet: 0.449 / 0.226); a single value for C = 3 is repeated.
    """
    input_size = _cfg_get(cfg, "input_size", None)
    if input_size is None or len(input_size) != 3:
        raise ValueError(f"cfg needs input_size = (channels, height, width), got {input_size!r}")
    channels, height, width = (int(v) for v in input_size)
    if channels not in (1, 3):
        raise ValueError(f"cfg input_size must have 1 (grey) or 3 (RGB) channels, got {tuple(input_size)!r}")
    interpolation = _cfg_get(cfg, "interpolation", "bicubic")
    mean = _per_channel(_cfg_get(cfg, "mean", _IMAGENET_MEAN), channels, "mean")
    std = _per_channel(_cfg_get(cfg, "std", _IMAGENET_STD), channels, "std")
    crop_pct = float(_cfg_get(cfg, "crop_pct", 0.875) if crop_pct is None else crop_pct)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")

    opts = dict(DEFAULT_AUGMENT)
    if augment:
        unknown = sorted(set(augment) - set(DEFAULT_AUGMENT))
        if unknown:
            raise ValueError(f"unknown augment keys {unknown}; known: {sorted(DEFAULT_AUGMENT)}")
        opts.update(augment)

    steps: list[Transform] = [ToChannels(channels)]
    if train and opts["random_resized_crop"]:
        steps.append(RandomResizedCrop((height, width), scale=opts["random_resized_crop"], interpolation=interpolation))
    else:
        scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
        size: int | tuple[int, int] = scale_h if scale_h == scale_w else (scale_h, scale_w)
        steps += [Resize(size, interpolation=interpolation), CenterCrop((height, width))]
    if train:
        if opts["hflip"]:
            steps.append(RandomHorizontalFlip(opts["hflip"]))
        if opts["vflip"]:
            steps.append(RandomVerticalFlip(opts["vflip"]))
        translate = opts["translate"] or 0.0
        if opts["rotation"] or translate or opts["scale"]:
            steps.append(RandomAffine(degrees=opts["rotation"] or 0.0, translate=translate, scale=opts["scale"]))
        if opts["brightness"] or opts["contrast"]:
            steps.append(ColorJitter(brightness=opts["brightness"] or 0.0, contrast=opts["contrast"] or 0.0))
        if opts["noise"]:
            steps.append(GaussianNoise(std=opts["noise"]))
    steps.append(Normalize(mean, std))
    return Compose(steps)
