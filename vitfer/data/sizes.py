"""The size policy of the loaders: what size each image is stored at.

``image_size`` (``--img-size``) resizes each image right after it is decoded, so memory stays
``N x image_size`` whatever the photos: an int scales the shorter side to the size and takes the
centre crop (aspect ratio kept, :func:`PIL.ImageOps.fit`); an ``(H, W)`` tuple stretches to it
(torchvision's ``Resize`` convention and the earlier behaviour); ``fit="crop"|"stretch"``
chooses explicitly. Without ``image_size``, images keep their size; if sizes differ but one size
covers :data:`DOMINANT_SIZE_SHARE` (90 %) of the images, the few others (a stray photo, a file
whose header declares another size) are resized to it and logged (:func:`unify_sizes`);
otherwise the error names ``--img-size``. A folder of differently sized images that would take
more than :data:`MAX_NATIVE_BYTES` decoded at their own sizes is refused before anything is
decoded (:func:`check_native_memory`, from the files' headers).
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from torch import Tensor

from .io import DatasetError, image_to_tensor
from .messages import short_list

__all__ = [
    "INTERPOLATIONS",
    "FITS",
    "DOMINANT_SIZE_SHARE",
    "MAX_NATIVE_BYTES",
    "SIZE_FLAG",
    "check_interp",
    "parse_size",
    "resolve_fit",
    "fit_image",
    "header_size",
    "check_native_memory",
    "unify_sizes",
]

logger = logging.getLogger(__name__)

#: The interpolations a loader takes, and Pillow's filter for each.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
#: How an image is brought to an ``(H, W)`` size: ``crop`` (cover, then the centre) or ``stretch``.
FITS: tuple[str, ...] = ("crop", "stretch")
#: Share of the decoded images that must have one size for the others to be resized to it when
#: no ``image_size`` is given.
DOMINANT_SIZE_SHARE = 0.9
#: Decoded bytes above which a folder of images of different sizes, without ``image_size``, is
#: refused before decoding (the header sizes are read first).
MAX_NATIVE_BYTES = 2 << 30
#: The command-line option that sets ``image_size``, for messages.
SIZE_FLAG = "--img-size"


def check_interp(interpolation: str) -> str:
    """``interpolation`` when it is one of :data:`INTERPOLATIONS`, else a ValueError."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    return interpolation


def parse_size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)`` or None; a clear error naming ``--img-size`` otherwise."""
    if image_size is None:
        return None
    if isinstance(image_size, bool):
        size: Any = None
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        try:
            size = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            size = None
    if size is None or len(size) != 2 or min(size) <= 0:
        raise ValueError(
            f"{SIZE_FLAG} must be a positive size (SIZE, or (height, width) in Python: image_size=...), "
            f"got {image_size!r}"
        )
    return size  # type: ignore[return-value]


def resolve_fit(fit: str | None, image_size: Any) -> str:
    """``fit`` or its default: ``crop`` for an int size (or None), ``stretch`` for (H, W)."""
    if fit is None:
        return "stretch" if image_size is not None and not isinstance(image_size, int) else "crop"
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    return fit


def fit_image(im: Image.Image, size: tuple[int, int], *, fit: str = "crop", interpolation: str = "bilinear") -> Image.Image:
    """Resize a PIL image to ``size = (H, W)``.

    ``fit="crop"``: :func:`PIL.ImageOps.fit`: scale so that the image covers ``(H, W)`` with its
    aspect ratio kept (for a square size: the shorter side becomes the size), then take the
    centre ``(H, W)``, in one resampling step (nothing outside the crop is computed).
    ``fit="stretch"``: resize to ``(H, W)`` directly (the aspect ratio changes). An image of the
    size already is returned as it is.
    """
    h, w = size
    if im.size == (w, h):
        return im
    resample = INTERPOLATIONS[check_interp(interpolation)]
    if fit == "stretch":
        return im.resize((w, h), resample)
    if fit != "crop":
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    return ImageOps.fit(im, (w, h), resample)


def header_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` that a file's header declares (after EXIF rotation), None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the decoder reports what matters, with the path
            with Image.open(path) as im:
                w, h = im.size
                try:
                    orientation = im.getexif().get(0x0112)
                except Exception:  # a broken EXIF block: the decoder will say so, if it matters
                    orientation = None
    except Exception:
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def check_native_memory(files: Sequence[Path], source: Path) -> None:
    """Refuse, before decoding, a folder of differently sized images that would not fit in memory
    (more than :data:`MAX_NATIVE_BYTES` decoded at their own sizes, by their headers)."""
    sizes = [s for s in (header_size(p) for p in files) if s is not None]
    if len(set(sizes)) <= 1:
        return
    total = sum(3 * h * w for h, w in sizes)
    if total > MAX_NATIVE_BYTES:
        raise DatasetError(
            f"the {len(sizes)} images in {source} have {len(set(sizes))} different sizes and would take "
            f"{total / 2**30:.1f} GiB decoded at their own size; pass {SIZE_FLAG} SIZE (image_size=SIZE in "
            f"Python) to resize each image at load time"
        )


def unify_sizes(
    tensors: list[Tensor], paths: Sequence[Path], source: Path, *, fit: str, interpolation: str
) -> tuple[list[Tensor], int, tuple[int, int] | None]:
    """Without ``image_size``: resize the few odd-sized images to the dominant size.

    Returns the tensors, how many were resized, and the dominant size (None when all agree).
    When no size covers :data:`DOMINANT_SIZE_SHARE` of the images, raises a DatasetError that
    names ``--img-size``.
    """
    sizes = Counter(tuple(t.shape[-2:]) for t in tensors)
    if len(sizes) <= 1:
        return tensors, 0, None
    (common, n_common), *_ = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0][0] * kv[0][1], kv[0]))
    odd = [(p, tuple(t.shape[-2:])) for p, t in zip(paths, tensors) if tuple(t.shape[-2:]) != common]
    if n_common < DOMINANT_SIZE_SHARE * len(tensors):
        examples = short_list([f"{h}x{w} for {p}" for p, (h, w) in odd], 3)
        raise DatasetError(
            f"images in {source} have {len(sizes)} different sizes ({common[0]}x{common[1]} for "
            f"{n_common} of {len(tensors)}; {examples}); pass {SIZE_FLAG} SIZE on the command line "
            f"(image_size=SIZE in Python) to resize every image at load time (shorter side to SIZE, then "
            f"a centre crop)"
        )
    out = []
    for t in tensors:
        if tuple(t.shape[-2:]) != common:
            arr = t.numpy()
            im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
            t = image_to_tensor(fit_image(im, common, fit=fit, interpolation=interpolation))  # type: ignore[arg-type]
        out.append(t)
    logger.warning(
        "%s: resized %d image(s) of another size to the dominant %dx%d (%s); pass %s to choose the size",
        source, len(odd), common[0], common[1], short_list([str(p) for p, _ in odd]), SIZE_FLAG,
    )
    return out, len(odd), common  # type: ignore[return-value]
