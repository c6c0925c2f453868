"""Robust image decoding for FER datasets.

:func:`load_image` opens one file with Pillow, decodes it fully (so that a truncated file fails
here, not later inside a batch) and returns a PIL image of mode ``"L"`` (grey) or ``"RGB"``,
whatever the file's own mode:

================  ==============================================================================
file mode         result
================  ==============================================================================
``1``, ``L``      ``L``
``P``             ``L`` when every palette entry is grey (``R == G == B``, e.g. the JAFFE palette
                  TIFFs, converted losslessly with ``.convert("L")``), otherwise ``RGB``; a palette
                  with a transparent index is treated like ``PA``
``PA``, ``LA``,   composited over a **black** background (``background=0``, configurable), i.e.
``La``, ``RGBA``, each channel is multiplied by alpha; ``LA``/``La`` give ``L``, ``RGBA``/``RGBa``
``RGBa``          ``RGB``, ``PA`` ``L`` when the composited pixels are all grey, else ``RGB``
``RGB``, ``RGBX`` ``RGB``
``CMYK``,         ``RGB`` (Pillow's conversion; Adobe-inverted CMYK JPEGs are handled by the decoder)
``YCbCr``, ``HSV``
``I;16*``         ``L``; 16-bit samples are **scaled** by the value range of the mode
                  (``round(v * 255 / 65535)``; signed variants are offset by 32768 first), never
                  clipped
``I``             ``L``; 32-bit integer images are what Pillow gives for some 16-bit sources, so
                  values within ``[0, 65535]`` are scaled like ``I;16``; values outside that range
                  are rescaled linearly from ``[min, max]`` to ``[0, 255]``
``F``             ``L``; values within ``[0, 1]`` are intensities and scaled by 255, otherwise the
                  ``[min, max]`` range is rescaled to ``[0, 255]``
================  ==============================================================================

The EXIF orientation tag, if present, is applied (photos taken by a phone come out upright).
Multi-frame files (GIF, TIFF) give their first frame. Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``) is left as it is: an image of more than twice the limit is an
error like any other undecodable file; one between the limit and twice it decodes with Pillow's
``DecompressionBombWarning``, re-issued with the file's path (as are Pillow's other warnings), so
``warnings.simplefilter("error", Image.DecompressionBombWarning)`` makes it an error too.
vitfer adds a limit on memory: an image whose header declares more than :data:`MAX_DECODED_BYTES`
(256 MiB) of decoded pixels, as Pillow stores them (1 byte a pixel for ``1``/``L``/``P``, 4 for
every other mode, ``RGB`` included; ``I;16`` counts 4 too, for its conversion), is an error before anything is decoded, so a
small file that declares a huge image (e.g. a 12000 x 12000 JPEG header over a few bytes of data,
inside Pillow's warning zone) cannot take a gigabyte. Raise the limit (or set it to ``None``) to
read larger images.

Any failure raises :class:`ImageDecodeError`, which names the file and the reason.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DECODED_BYTES",
    "DatasetError",
    "ImageDecodeError",
    "is_image_file",
    "load_image",
    "image_to_tensor",
    "to_l_or_rgb",
]

#: File extensions (lower case) that are treated as images when a folder is scanned.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)


#: The most decoded pixel memory (bytes, as Pillow stores the file's mode) that :func:`load_image`
#: accepts from one file's header; ``None``: no limit beyond Pillow's ``MAX_IMAGE_PIXELS``.
#: 256 MiB reads an 8000 x 8000 colour photo, far larger than any face needs.
MAX_DECODED_BYTES: int | None = 256 * 2**20


class DatasetError(ValueError):
    """A dataset folder or one of its files is unusable; the message names the path."""


class ImageDecodeError(DatasetError):
    """One image file could not be decoded.

    Attributes:
        path: the file.
        reason: a one-line explanation (exception type and message from the decoder).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}: {reason}")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image extension and is not a hidden file (``.DS_Store``, ``._x.png``)."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map ``[lo, hi]`` to ``[0, 255]`` with rounding; ``arr``: (H, W) any numeric dtype.

    Computed a block of rows at a time, so the float64 temporaries stay a few MB whatever the
    image (a 16-bit image of 50 M pixels would otherwise need 0.8 GB of them)."""
    out = np.zeros(arr.shape, dtype=np.uint8)
    if hi <= lo or arr.size == 0:
        return out
    scale = 255.0 / (hi - lo)
    rows = max(1, _SCALE_BLOCK // max(1, arr.size // max(1, arr.shape[0])))
    for r in range(0, arr.shape[0], rows):
        block = arr[r:r + rows].astype(np.float64)
        block -= lo
        block *= scale
        np.rint(block, out=block)
        out[r:r + rows] = np.clip(block, 0, 255, out=block)
    return out


# Elements a block of _scale_to_uint8 converts at once (float64: 8 MB).
_SCALE_BLOCK = 1 << 20


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """Convert a single-channel ``I;16*``, ``I`` or ``F`` image to 8-bit ``L`` by value range."""
    mode = im.mode
    arr = np.asarray(im)
    if mode.startswith("I;16"):
        if arr.dtype.kind == "i":  # signed 16-bit (I;16S): shift into the unsigned range
            return Image.fromarray(_scale_to_uint8(arr, -32768, 32767), mode="L")
        return Image.fromarray(_scale_to_uint8(arr, 0, 65535), mode="L")
    if arr.size == 0:
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "F":
        if not np.isfinite(arr).all():
            raise ValueError("float image holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return Image.fromarray(_scale_to_uint8(arr, 0.0, 1.0), mode="L")
        return Image.fromarray(_scale_to_uint8(arr, lo, hi), mode="L")
    # mode "I": 32-bit signed integers
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi <= 65535:
        return Image.fromarray(_scale_to_uint8(arr, 0, 65535), mode="L")
    return Image.fromarray(_scale_to_uint8(arr, lo, hi), mode="L")


def _palette_is_grey(im: Image.Image) -> bool:
    """Whether every palette entry used by the ``P`` image ``im`` has ``R == G == B``."""
    palette = im.getpalette("RGB")
    if palette is None:
        return True
    entries = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    counts = np.bincount(np.asarray(im).ravel(), minlength=len(entries))[: len(entries)]
    rgb = entries[np.flatnonzero(counts)]
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _grey_if_neutral(im: Image.Image) -> Image.Image:
    """Turn an ``RGB`` image whose pixels all have ``R == G == B`` into ``L`` (exactly)."""
    arr = np.asarray(im)
    if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        return im.convert("L")
    return im


def _composite(im: Image.Image, background: int) -> Image.Image:
    """Composite an image with alpha (``LA``/``RGBA``) over a flat ``background`` grey level."""
    base_mode = "L" if im.mode == "LA" else "RGB"
    bg = Image.new(base_mode, im.size, background if base_mode == "L" else (background,) * 3)
    bg.paste(im.convert(base_mode), mask=im.getchannel("A"))
    return bg


def to_l_or_rgb(im: Image.Image, background: int = 0) -> Image.Image:
    """Convert a decoded image of any Pillow mode to ``L`` or ``RGB`` (see the module table):
    what :func:`load_image` does after decoding, for images that come from elsewhere (a video
    frame, an array). ``background``: grey level that transparent pixels are composited over."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        if "transparency" in im.info:
            return _grey_if_neutral(_composite(im.convert("RGBA"), background))
        return im.convert("L") if _palette_is_grey(im) else im.convert("RGB")
    if mode == "PA":
        return _grey_if_neutral(_composite(im.convert("RGBA"), background))
    if mode in ("LA", "La"):
        return _composite(im.convert("LA"), background)
    if mode in ("RGBA", "RGBa"):
        return _composite(im.convert("RGBA"), background)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_bit_depth_to_l(im)
    # RGBX, CMYK, YCbCr, HSV, LAB, ...: let Pillow convert, or fail with a clear reason.
    return im.convert("RGB")


def _check_decoded_size(im: Image.Image) -> None:
    """Raise ValueError when ``im``'s header declares more than :data:`MAX_DECODED_BYTES`."""
    if MAX_DECODED_BYTES is None:
        return
    w, h = im.size
    per_pixel = 1 if im.mode in ("1", "L", "P") else 4
    need = w * h * per_pixel
    if need > MAX_DECODED_BYTES:
        raise ValueError(
            f"the header declares {w}x{h} {im.mode} pixels, {need / 2**20:.0f} MiB decoded, over the "
            f"{MAX_DECODED_BYTES / 2**20:.0f} MiB limit (vitfer.data.io.MAX_DECODED_BYTES): a decompression bomb, or "
            f"an image far larger than a face needs (resize it, or raise the limit)"
        )


def load_image(path: str | os.PathLike, *, background: int = 0) -> Image.Image:
    """Open, fully decode and normalise the mode of one image file.

    Args:
        path: the image file.
        background: grey level (0..255) that transparent pixels are composited over;
            0 (black) by default, so that transparent areas match the zero padding of
            :mod:`vitfer.data.transforms`.

    Returns:
        A PIL image of mode ``"L"`` or ``"RGB"``, size ``(W, H)`` of the file (after EXIF
        orientation).

    Raises:
        ImageDecodeError: the file is missing, not an image, truncated, corrupt, over Pillow's
            decompression-bomb limit or :data:`MAX_DECODED_BYTES`, or of a mode that cannot be
            converted. The message names the file.
    """
    path = Path(path)
    if not 0 <= int(background) <= 255:
        raise ValueError(f"background must be a grey level in 0..255, got {background!r}")
    # Pillow's own warnings (corrupt EXIF, DecompressionBombWarning, ...) do not name the file:
    # hold them, then re-issue them with the path if the image decodes (a failure says it all).
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as raw:
                _check_decoded_size(raw)
                raw.load()
                # exif_transpose copies even an upright image: only rotated ones are transposed
                im = ImageOps.exif_transpose(raw) if raw.getexif().get(0x0112, 1) != 1 else raw
                out = to_l_or_rgb(im, int(background))
                # detach the result from the file: closing it invalidates the opened image
                out = out.copy() if out is raw else out
        except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, zlib.error, ...)
            reason = f"{type(exc).__name__}: {exc}".strip()
            raise ImageDecodeError(path, reason) from exc
    try:
        for w in held:
            warnings.warn(f"{path}: {w.message}", w.category, stacklevel=2)
    except Warning as exc:  # the caller turned this warning into an error
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    return out


def image_to_tensor(im: Image.Image) -> torch.Tensor:
    """Convert an ``L`` or ``RGB`` PIL image to a uint8 tensor.

    Args:
        im: image of mode ``"L"`` or ``"RGB"`` and size ``(W, H)``.

    Returns:
        uint8 tensor (C, H, W) with C = 1 for ``L`` and 3 for ``RGB``.
    """
    if im.mode not in ("L", "RGB"):
        raise ValueError(f"expected a PIL image of mode L or RGB, got {im.mode!r}")
    arr = np.array(im, dtype=np.uint8)  # a writable copy
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))
