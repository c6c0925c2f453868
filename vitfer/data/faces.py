"""Face detection with OpenCV's Haar cascades (the detector the study names).

:class:`FaceDetector` wraps ``cv2.CascadeClassifier`` with the frontal-face cascade that
OpenCV 4 ships (``cv2.data.haarcascades + "haarcascade_frontalface_default.xml"``);
:func:`crop_face` cuts a square face crop with a margin around a detected :class:`Box`, and
:func:`largest_face` / :func:`crop_largest_face` do both for the largest face of an image.

OpenCV is the optional extra ``detect`` (``pip install 'vitfer[detect]'``, i.e.
``opencv-python-headless>=4.8,<5``; OpenCV 5 no longer ships the cascade files). It is imported
only when a detector is built, so ``import vitfer.data.faces`` works without it. Training crops
faces with it at load time (``--crop-faces``) and prediction crops them the same way, so both
import it from here, below :mod:`vitfer.engine` and :mod:`vitfer.inference`.

Images may be PIL images of any mode (converted to 8-bit grey for the detector: ``I;16``, ``I``
and ``F`` are scaled by value range like :func:`vitfer.data.io.load_image` does, images with
alpha are composited over black, palettes are resolved) or ``uint8`` numpy arrays / torch
tensors: ``(H, W)``, ``(C, H, W)`` or, for numpy, also ``(H, W, C)`` with ``C`` in 1, 3, 4.

Detection is deterministic: the boxes are sorted largest first with a total order on
``(area, neighbours, y, x)``, nothing is random, nothing is downloaded and nothing is written.
On JAFFE (213 photos, 256x256) the default settings find exactly one face in every image,
about 15 ms an image on one CPU core; histogram equalisation (``equalize=True``) adds a few
false positives there (98.6 % single-face rate), so it is off by default.
"""
from __future__ import annotations

import functools
import math
import numbers
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DEFAULT_CASCADE",
    "import_cv2",
    "INSTALL_HINT",
    "Box",
    "FaceDetector",
    "FaceCropper",
    "crop_face",
    "crop_largest_face",
    "default_cascade_path",
    "largest_face",
    "to_grey_array",
]

#: File name of the frontal-face cascade inside ``cv2.data.haarcascades``.
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"

#: What to run when OpenCV is missing.
INSTALL_HINT = "pip install 'vitfer[detect]'"

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]  # noqa: UP007 - a runtime alias


def import_cv2() -> Any:
    """Import OpenCV or raise an ImportError that says how to install the extra."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(
            "face detection needs OpenCV (opencv-python-headless>=4.8,<5), which is not "
            f"installed: run {INSTALL_HINT}"
        ) from exc
    return cv2


def default_cascade_path() -> Path:
    """Path of OpenCV's frontal-face default Haar cascade (needs the ``detect`` extra)."""
    cv2 = import_cv2()
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    if not folder:
        raise FileNotFoundError(
            f"this OpenCV ({getattr(cv2, '__version__', '?')}) ships no Haar cascade folder "
            f"(cv2.data.haarcascades); install OpenCV 4 with {INSTALL_HINT} or pass cascade=PATH"
        )
    return Path(folder) / DEFAULT_CASCADE


@dataclass(frozen=True, order=False)
class Box:
    """A face box in pixel coordinates of the image it was found in.

    Attributes:
        x, y: top-left corner (column, row).
        w, h: width and height (> 0).
        neighbours: how many raw detections the cascade merged into this box (a confidence:
            higher is surer), or ``None`` for a box not made by the detector.
    """

    x: int
    y: int
    w: int
    h: int
    neighbours: int | None = None

    def __post_init__(self) -> None:
        for name in ("x", "y", "w", "h"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise TypeError(f"Box.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.w <= 0 or self.h <= 0:
            raise ValueError(f"Box width and height must be positive, got w={self.w}, h={self.h}")
        if self.neighbours is not None:
            object.__setattr__(self, "neighbours", int(self.neighbours))

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def center(self) -> tuple[float, float]:
        """``(cx, cy)`` in pixels."""
        return (self.x + self.w / 2.0, self.y + self.h / 2.0)

    def as_xyxy(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``, right/bottom exclusive (PIL's crop box)."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    def iou(self, other: Box) -> float:
        """Intersection over union with another box."""
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        return inter / float(self.area + other.area - inter)


# ----------------------------------------------------------------------------- image conversion


def _pil_to_grey(im: Image.Image) -> np.ndarray:
    """8-bit grey, converted exactly as :func:`vitfer.data.load_image` converts (high bit depths
    by value range, alpha composited over black), then to luma."""
    from vitfer.data.io import to_l_or_rgb

    return np.asarray(to_l_or_rgb(im, 0).convert("L"), dtype=np.uint8)


def _array_to_pil(arr: np.ndarray, channels_first: bool | None) -> Image.Image:
    """A uint8 array ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` (C in 1, 3, 4) as an L/RGB/RGBA image.

    ``channels_first``: True for torch (always ``(C, H, W)``), None for numpy (``(H, W, C)``
    when the last axis has 1, 3 or 4 entries, else ``(C, H, W)``).
    """
    if arr.dtype != np.uint8:
        raise TypeError(
            f"expected a uint8 image array, got dtype {arr.dtype}; scale it to 0..255 and "
            "convert it with .astype(np.uint8) / .to(torch.uint8) first"
        )
    if arr.ndim == 3:
        if channels_first is None:
            channels_first = arr.shape[-1] not in (1, 3, 4)
        if channels_first:
            arr = np.moveaxis(arr, 0, -1)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.shape[-1] not in (3, 4):
            raise ValueError(f"expected 1, 3 or 4 channels, got an array of shape {arr.shape}")
    elif arr.ndim != 2:
        raise ValueError(f"expected an image array (H, W) or (C, H, W), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    mode = {2: "L"}.get(arr.ndim) or {3: "RGB", 4: "RGBA"}[arr.shape[-1]]
    return Image.frombuffer(mode, (arr.shape[1], arr.shape[0]), arr.tobytes(), "raw", mode, 0, 1)


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        return _array_to_pil(image.detach().cpu().numpy(), channels_first=True)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, channels_first=None)
    raise TypeError(
        f"expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def to_grey_array(image: ImageLike) -> np.ndarray:
    """The image as a C-contiguous uint8 ``(H, W)`` array of grey levels (what the cascade sees)."""
    im = _as_pil(image)
    if im.width == 0 or im.height == 0:
        raise ValueError(f"empty image of size {im.size}")
    return np.ascontiguousarray(_pil_to_grey(im), dtype=np.uint8)


# ----------------------------------------------------------------------------- detector


def _check_min_size(min_size: Sequence[int]) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in min_size)
    except (TypeError, ValueError):
        raise ValueError(f"min_size must be a pair (width, height), got {min_size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"min_size must be positive, got {min_size!r}")
    return (w, h)


class FaceDetector:
    """Haar-cascade face detector (OpenCV's ``CascadeClassifier``).

    Args:
        scale_factor: image pyramid step (> 1); smaller finds more faces, slower.
        min_neighbors: raw detections a box needs to be kept (>= 0); higher, fewer false
            positives.
        min_size: smallest face ``(width, height)`` in pixels.
        cascade: path of a cascade XML file; ``None`` for OpenCV's
            ``haarcascade_frontalface_default.xml``.
        equalize: equalise the grey histogram (``cv2.equalizeHist``) before detecting. Off by
            default: on JAFFE it lowers the single-face rate from 100 % to 98.6 % (a few
            false positives); it can help on dark or low-contrast photos.

    Raises:
        ImportError: OpenCV is not installed (the message says ``pip install 'vitfer[detect]'``).
        FileNotFoundError: the cascade file does not exist (the message names it).
        ValueError: the cascade file cannot be loaded, or a parameter is out of range.

    The detector can be pickled (for DataLoader workers): the cascade is reloaded from its path.
    It can be shared by threads: OpenCV's ``CascadeClassifier`` is not thread-safe (concurrent
    ``detectMultiScale`` calls on images of different sizes corrupt its scale buffers and crash
    the process), so each thread that calls :meth:`detect` gets its own classifier, loaded from
    the same file on its first call.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: Sequence[int] = (24, 24),
        cascade: str | os.PathLike | None = None,
        *,
        equalize: bool = False,
    ) -> None:
        if not (
            isinstance(scale_factor, numbers.Real)
            and not isinstance(scale_factor, bool)
            and math.isfinite(scale_factor)
            and scale_factor > 1.0
        ):
            raise ValueError(f"scale_factor must be a number > 1, got {scale_factor!r}")
        if isinstance(min_neighbors, bool) or int(min_neighbors) != min_neighbors or min_neighbors < 0:
            raise ValueError(f"min_neighbors must be an integer >= 0, got {min_neighbors!r}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = _check_min_size(min_size)
        self.equalize = bool(equalize)
        self.cascade_path = Path(cascade) if cascade is not None else default_cascade_path()
        self._local = threading.local()
        self._local.classifier = self._load(self.cascade_path)  # fails here, not in a thread, on a bad file

    @staticmethod
    def _load(path: Path) -> Any:
        cv2 = import_cv2()
        if not path.is_file():
            raise FileNotFoundError(f"Haar cascade file not found: {path}")
        try:
            classifier = cv2.CascadeClassifier(str(path))
        except Exception as exc:  # malformed XML: cv2.error, or SystemError from the binding
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            raise ValueError(f"cannot load Haar cascade {path}: {reason}") from exc
        if classifier.empty():
            raise ValueError(f"cannot load Haar cascade {path}: not a valid cascade file")
        return classifier

    def _classifier(self) -> Any:
        """This thread's ``CascadeClassifier`` (loaded on the thread's first call)."""
        classifier = getattr(self._local, "classifier", None)
        if classifier is None:
            classifier = self._local.classifier = self._load(self.cascade_path)
        return classifier

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._local.classifier = self._load(self.cascade_path)

    def __repr__(self) -> str:
        return (
            f"FaceDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
            f"min_size={self.min_size}, cascade={str(self.cascade_path)!r}, "
            f"equalize={self.equalize})"
        )

    def detect(self, image: ImageLike) -> list[Box]:
        """All faces in ``image``, largest first (ties: more neighbours, then top, then left).

        Args:
            image: PIL image of any mode, or a uint8 numpy array / torch tensor ``(H, W)`` or
                ``(C, H, W)`` (numpy also ``(H, W, C)``).

        Returns:
            A list of :class:`Box` (empty when there is no face), in pixel coordinates of
            ``image``.
        """
        cv2 = import_cv2()
        grey = to_grey_array(image)
        if self.equalize:
            grey = cv2.equalizeHist(grey)
        if grey.shape[0] < self.min_size[1] or grey.shape[1] < self.min_size[0]:
            return []
        rects, neighbours = self._classifier().detectMultiScale2(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=self.min_size,
        )
        rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
        neighbours = np.asarray(neighbours, dtype=np.int64).reshape(-1)
        if len(neighbours) != len(rects):  # defensive: never seen, but keep boxes usable
            neighbours = np.full(len(rects), -1, dtype=np.int64)
        boxes = [
            Box(int(x), int(y), int(w), int(h), None if n < 0 else int(n))
            for (x, y, w, h), n in zip(rects.tolist(), neighbours.tolist())
        ]
        boxes.sort(key=lambda b: (-b.area, -(b.neighbours or 0), b.y, b.x, b.h, b.w))
        return boxes

    __call__ = detect


@functools.lru_cache(maxsize=1)
def _default_detector() -> FaceDetector:
    return FaceDetector()


def largest_face(image: ImageLike, detector: FaceDetector | None = None) -> Box | None:
    """The largest face box in ``image``, or ``None`` when there is none.

    ``detector``: a :class:`FaceDetector`; ``None`` uses one with the default settings (built
    once and reused).
    """
    boxes = (detector or _default_detector()).detect(image)
    return boxes[0] if boxes else None


# ----------------------------------------------------------------------------- cropping


def _crop_with_edge_padding(im: Image.Image, left: int, top: int, width: int, height: int) -> Image.Image:
    """``im`` cropped to ``(left, top, left+width, top+height)``; outside pixels repeat the edge
    (``numpy.pad(mode="edge")``). The mode, palette and transparency are kept."""
    W, H = im.size
    il, it = max(left, 0), max(top, 0)
    ir, ib = min(left + width, W), min(top + height, H)
    if ir <= il or ib <= it:
        raise ValueError(
            f"crop ({left}, {top}, {left + width}, {top + height}) lies outside the image "
            f"of size {W}x{H}"
        )
    inner = im.crop((il, it, ir, ib))
    if (il, it, ir, ib) == (left, top, left + width, top + height):
        return inner
    arr = np.asarray(inner)  # (h, w) or (h, w, bands), in the mode's own raw layout
    pad = ((it - top, top + height - ib), (il - left, left + width - ir)) + ((0, 0),) * (arr.ndim - 2)
    padded = np.ascontiguousarray(np.pad(arr, pad, mode="edge"))
    # back in the same raw layout; mode "1" comes out of numpy as one bool byte a pixel
    out = Image.frombytes(im.mode, (width, height), padded.tobytes(), "raw", "1;8" if im.mode == "1" else im.mode)
    if im.mode in ("P", "PA"):
        palette = im.getpalette()
        if palette is not None:
            out.putpalette(palette)
    if "transparency" in im.info:
        out.info["transparency"] = im.info["transparency"]
    return out


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)


def crop_face(
    image: ImageLike, box: Box, margin: float = 0.2, square: bool = True
) -> Image.Image:
    """Crop a face with a margin around ``box``.

    The box grows by ``margin`` times its width (height) on the left and right (top and
    bottom); with ``square`` the crop is then the square of the larger side around the box's
    centre. Where the crop leaves the image it is padded by repeating the edge pixels (it is
    never shrunk or shifted), so a box with ``w == h`` always gives a square of side
    ``round(w * (1 + 2 * margin))``.

    Args:
        image: a PIL image (any mode, kept in the crop; palette images keep their palette) or a
            uint8 numpy array / torch tensor (cropped as an ``L``, ``RGB`` or ``RGBA`` image).
        box: the face, in pixel coordinates of ``image``.
        margin: fraction of the box size added on each side (> -0.5; 0 crops the box itself).
        square: make the crop square (the larger of the expanded width and height).

    Returns:
        The crop as a PIL image.

    Raises:
        ValueError: the margin is out of range or the box does not overlap the image.
    """
    if not isinstance(box, Box):
        raise TypeError(f"box must be a Box, got {type(box).__name__}")
    margin = float(margin)
    if not math.isfinite(margin) or margin <= -0.5:
        raise ValueError(f"margin must be a finite number > -0.5, got {margin!r}")
    im = _as_pil(image)
    cx, cy = box.center
    w = box.w * (1.0 + 2.0 * margin)
    h = box.h * (1.0 + 2.0 * margin)
    if square:
        w = h = max(w, h)
    width, height = max(1, _round_half_up(w)), max(1, _round_half_up(h))
    left = _round_half_up(cx - width / 2.0)
    top = _round_half_up(cy - height / 2.0)
    return _crop_with_edge_padding(im, left, top, width, height)


def crop_largest_face(
    image: ImageLike,
    margin: float = 0.2,
    *,
    square: bool = True,
    detector: FaceDetector | None = None,
) -> Image.Image | None:
    """:func:`crop_face` of :func:`largest_face`, or ``None`` when no face is found."""
    box = largest_face(image, detector)
    if box is None:
        return None
    return crop_face(image, box, margin=margin, square=square)


class FaceCropper:
    """A load-time step for the loaders (``load_dataset(..., preprocess=FaceCropper(margin))``):
    keeps the largest face the detector finds, cropped with ``margin`` (the crop
    ``vitfer predict`` gives a model); an image without a face is skipped with the reason
    ``no face found (--crop-faces)``. The load line says how many images were face-cropped and
    how many skipped for no face (``load_report["n_preprocessed"]``,
    ``["n_preprocess_skipped"]``).

    Args:
        margin: as for :func:`crop_face`.
        square: as for :func:`crop_face`.
        detector: a :class:`FaceDetector`; None builds one with the default settings (needs
            OpenCV: an ImportError that names the ``detect`` extra otherwise).
    """

    #: How the load line names the images this step kept, and the ones it skipped.
    label = "face-cropped"
    skip_label = "for no face"
    reason = "no face found (--crop-faces)"

    def __init__(self, margin: float = 0.2, *, square: bool = True, detector: FaceDetector | None = None) -> None:
        margin = float(margin)
        if not math.isfinite(margin) or margin <= -0.5:
            raise ValueError(f"margin must be a finite number > -0.5, got {margin!r}")
        self.margin = margin
        self.square = bool(square)
        self.detector = detector if detector is not None else FaceDetector()

    def __call__(self, image: ImageLike) -> tuple[Image.Image | None, str]:
        face = crop_largest_face(image, self.margin, square=self.square, detector=self.detector)
        return (face, "") if face is not None else (None, self.reason)

    def __repr__(self) -> str:
        return f"FaceCropper(margin={self.margin}, square={self.square}, detector={self.detector!r})"
