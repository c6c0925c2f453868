"""FER datasets held in memory: CK+48, JAFFE and generic class folders.

:func:`load_dataset` is the entry point. Every file is decoded once, at load time, into one
uint8 tensor ``(N, C, H, W)`` (C = 1 when all images are grey, 3 otherwise), so an epoch costs
no decoding; ``dataset[i]`` scales to ``[0, 1]`` and applies the dataset's ``transform``.

Channels: a pipeline from :func:`~vitfer.data.build_transforms` converts to the model's channel
count itself (grey or RGB, see :func:`~vitfer.data.to_channels`), so with one the dataset hands
over its stored channels (1 or 3). Without such a transform (None, or a callable of your own),
``dataset[i]`` has 3 channels, grey repeated, as it always had; ``dataset.channels = 1`` (or 3)
forces a channel count for any transform.

Face crops: ``dataset.face_cropped`` is True where every image is already cropped to the face
(``ckplus48``, ``jaffe``, :class:`~vitfer.data.SyntheticFaces`; a ``folder`` dataset only with
``face_cropped=True``). Such images should not lose their border to ImageNet's centre crop: build
their transforms with ``build_transforms(cfg, train=..., crop_pct=1.0)``.

Layouts:

- ``ckplus48``: ``<root>/<class>/S<subject>_<sequence>_<frame>.png`` with the 7 class folders of
  :data:`CKPLUS48_CLASSES`; the subject is the ``S###`` prefix.
- ``jaffe``: a flat folder of ``<subject>.<EXPR><n>.<id>.tiff`` (``KA.AN1.39.tiff``); the label is
  the first two letters of the second field (see :data:`JAFFE_CODES`), the subject the first
  field.
- ``folder``: ``<root>/<class>/**/<image>``; classes are the sub-folder names, sorted; the subject
  is captured from the file name by ``subject_pattern`` (``--subject-pattern``) or given by
  ``subject_fn(path)``, else None. The common layout ``<root>/train/<class>/``,
  ``<root>/test/<class>/`` (optionally ``val/`` or ``validation/``) is detected: every part is
  loaded with one class list and each item's part recorded in ``dataset.usage`` (for
  ``make_split(ds, "official")``).
- ``labels``: a CSV label file of ``path,label[,subject]`` rows (``--labels``; header optional,
  paths relative to the CSV's folder), for images not laid out in class folders; also
  ``load_dataset("folder", root, labels="file.csv")``. See :func:`load_label_file`.
- ``fer2013``: the original ``fer2013.csv`` (``emotion,pixels,Usage``), streamed; see
  :mod:`vitfer.data.fer2013`.

Sizes: ``image_size`` (``--img-size``) resizes each image right after it is decoded, so memory
stays ``N x image_size`` whatever the photos: an int scales the shorter side to the size and
takes the centre crop (aspect ratio kept); an ``(H, W)`` tuple stretches to it (torchvision's
``Resize`` convention and the earlier behaviour); ``fit="crop"|"stretch"`` chooses explicitly.
Without ``image_size``, images keep their size; if sizes differ but one size covers 90 % of the
images (:data:`DOMINANT_SIZE_SHARE`), the few others (a stray photo, a file whose header declares
another size) are resized to it and logged; otherwise the error names ``--img-size``. What
loading did is in ``dataset.load_report`` and logged at INFO by this module's logger.

For ``ckplus48`` and ``jaffe``, ``root`` may also be the folder that holds ``ckplus48/`` and
``jaffe/`` (``VITFER_DATA_DIR``).

Bad input: files without an image extension and hidden files (``.DS_Store``, ``Thumbs.db``,
``._x.png``) are ignored; a file with an image extension that does not decode is skipped,
recorded in ``dataset.skipped`` as ``(path, reason)`` and reported by one
:class:`SkippedFilesWarning` listing every skipped file, or, with ``strict=True``, raises a
:class:`~vitfer.data.io.DatasetError` naming them. A missing folder, an empty class folder or a
JAFFE name with an unknown expression code raise a ``DatasetError`` naming the path. A folder that
is not the layout asked for (a class-folder dataset given as ``ckplus48`` or ``jaffe``, say)
raises a ``DatasetError`` that says what was expected, what was found (at most
:data:`_MAX_LISTED` names, then "and N more") and, where the folder looks like class folders, to
load it as ``--dataset folder`` (command line) / ``load_dataset("folder", root)`` (Python).
"""
from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .io import DatasetError, ImageDecodeError, image_to_tensor, is_image_file, load_image
from .transforms import Transform, item_generator, to_channels

__all__ = [
    "CKPLUS48_CLASSES",
    "JAFFE_CLASSES",
    "JAFFE_CODES",
    "FERDataset",
    "SkippedFilesWarning",
    "load_dataset",
    "load_ckplus48",
    "load_jaffe",
    "load_image_folder",
    "load_label_file",
    "fit_image",
    "DATASET_KINDS",
    "PART_FOLDERS",
    "DOMINANT_SIZE_SHARE",
]

logger = logging.getLogger(__name__)

#: CK+48 classes: the folder names, sorted.
CKPLUS48_CLASSES: tuple[str, ...] = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
#: JAFFE expression codes (second field of a file name) and their classes, in class order.
JAFFE_CODES: dict[str, str] = {
    "AN": "anger",
    "DI": "disgust",
    "FE": "fear",
    "HA": "happy",
    "NE": "neutral",
    "SA": "sad",
    "SU": "surprise",
}
#: JAFFE classes, in the AN DI FE HA NE SA SU order.
JAFFE_CLASSES: tuple[str, ...] = tuple(JAFFE_CODES.values())

#: Test-set size of the study's random split (781/200 on CK+48, 143/70 on JAFFE).
STUDY_TEST_SIZE: dict[str, int] = {"ckplus48": 200, "jaffe": 70}

_CK_SUBJECT = re.compile(r"^(S\d+)_")
_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_KEEP: Any = object()  # sentinel: keep the parent's transform in FERDataset.subset
_MAX_LISTED = 5  # names listed in a message before "and N more"
_FOLDER_HINT = 'load it with --dataset folder (command line) or load_dataset("folder", root) (Python)'


class SkippedFilesWarning(UserWarning):
    """Some files of a dataset could not be decoded and were left out.

    The message alone says it all (for a command line to print without a traceback): the
    folder, how many files were skipped and the first few with their reasons; the full list is
    ``dataset.skipped``.
    """


def _short_list(names: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``; ``(none)`` for no names."""
    names = list(names)
    if not names:
        return "(none)"
    head = ", ".join(names[:limit])
    return head if len(names) <= limit else f"{head} and {len(names) - limit} more"


class FERDataset(Dataset):
    """An image classification dataset decoded into memory.

    ``dataset[i]`` returns ``(image, label)``: image float (C, H, W), values in ``[0, 1]`` before
    ``transform``, label an int index into ``classes``. C: see ``channels``.

    Attributes:
        name: short name (``ckplus48``, ``jaffe``, ``folder``, ``synthetic``).
        root: folder the data came from (None for generated data).
        classes: class names; label ``k`` is ``classes[k]``.
        labels: per-item class index, list of N ints.
        subjects: per-item subject identity (str), or None entries where unknown.
        paths: per-item file path (``Path``), or a generated name (str).
        skipped: files left out at load time, ``(path, reason)`` pairs.
        transform: applied to the float image; a :class:`~vitfer.data.transforms.Transform`
            is called with a generator (see ``seed``), any other callable as ``transform(x)``;
            None gives the image in ``[0, 1]``. Settable.
        channels: channel count of the image handed to ``transform`` (or returned without
            one). None (default): the stored channels (1 or 3) when ``transform`` converts
            channels itself (it has an int ``channels`` attribute, as every
            :func:`~vitfer.data.build_transforms` pipeline has), otherwise 3 (grey repeated:
            the behaviour before per-model channels). 1 or 3: converted to that count (see
            :func:`~vitfer.data.to_channels`). Settable.
        face_cropped: whether every image is already a tight face crop (True for CK+48,
            JAFFE and synthetic faces), so evaluation should not centre-crop it further
            (``build_transforms(..., crop_pct=1.0)``). Settable.
        seed: with an int, item ``i`` of epoch ``e`` is transformed with
            ``item_generator(seed, e, i)`` (the same augmentation whatever the DataLoader
            workers); None uses torch's global RNG.
        epoch: the epoch for ``seed``; see :meth:`set_epoch`.
        default_test_size: test size that :func:`~vitfer.data.make_split` uses when given
            none (the study's 200 for CK+48 and 70 for JAFFE, else 0.2).
        usage: per-item part of the dataset's own (official) split, list of N entries: the
            FER-2013 ``Usage`` column (``Training``, ``PublicTest``, ``PrivateTest``) or the
            part folder of a ``root/train|val|validation|test/<class>/`` layout (the folder
            name as found, e.g. ``train``); all None for datasets without parts.
            ``make_split(ds, "official")`` uses it.
        load_report: what loading did (empty for generated data): ``n_images``, ``n_files``,
            ``n_resized``, ``n_skipped``, ``class_counts`` (class -> count), ``image_size``
            (stored ``(H, W)``), ``resize`` (how the size was chosen: ``"image_size"``,
            ``"dominant size"`` or None), ``fit``, ``channels``, ``seconds``; ``part_counts``
            for datasets with parts; ``n_rows``, ``n_bad_rows``, ``bad_rows`` for CSV
            datasets. A view (:meth:`subset`) keeps the report of the whole dataset.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Sequence[int],
        classes: Sequence[str],
        *,
        subjects: Sequence[str | None] | None = None,
        paths: Sequence[Path | str] | None = None,
        skipped: Sequence[tuple[Path, str]] = (),
        transform: Callable[..., Tensor] | None = None,
        name: str = "dataset",
        root: Path | None = None,
        default_test_size: int | float = 0.2,
        seed: int | None = None,
        channels: int | None = None,
        face_cropped: bool = False,
        usage: Sequence[str | None] | None = None,
    ) -> None:
        """
        Args:
            images: uint8 (N, C, H, W), C = 1 (grey) or 3 (RGB).
            labels: N class indices in ``range(len(classes))``.
            classes: class names.
            subjects: N subject ids (None entries where unknown); None for all unknown.
            paths: N file paths or names; None for ``<name>/<index>``.
            channels: see the class attributes (None, 1 or 3).
            face_cropped: see the class attributes.
            usage: N part names (see the class attributes); None for no parts.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        n = images.shape[0]
        labels = [int(v) for v in labels]
        if len(labels) != n:
            raise ValueError(f"{n} images but {len(labels)} labels")
        if labels and not 0 <= min(labels) <= max(labels) < len(classes):
            raise ValueError(f"labels must be in range({len(classes)})")
        self._images = images
        self._index: Tensor | None = None  # row of _images for each item, None = identity
        self.classes: list[str] = list(classes)
        self.labels: list[int] = labels
        self.subjects: list[str | None] = list(subjects) if subjects is not None else [None] * n
        self.paths: list[Path | str] = list(paths) if paths is not None else [f"{name}/{i}" for i in range(n)]
        self.usage: list[str | None] = list(usage) if usage is not None else [None] * n
        if len(self.subjects) != n or len(self.paths) != n or len(self.usage) != n:
            raise ValueError(
                f"{n} images but {len(self.subjects)} subjects, {len(self.paths)} paths and {len(self.usage)} usage entries"
            )
        self.load_report: dict[str, Any] = {}
        self.skipped: list[tuple[Path, str]] = list(skipped)
        self.transform = transform
        self.name = name
        self.root = root
        self.default_test_size = default_test_size
        self.seed = seed
        self.epoch = 0
        self.channels = channels
        self.face_cropped = bool(face_cropped)

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.labels)

    def uint8(self, index: int) -> Tensor:
        """The stored image ``index``: uint8 (C, H, W), C = 1 or 3, before any transform."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        row = index if self._index is None else int(self._index[index])
        return self._images[row]

    @property
    def stored_channels(self) -> int:
        """Channels of the stored images: 1 (all grey) or 3."""
        return int(self._images.shape[1])

    def item_channels(self) -> int:
        """Channels of the image that ``transform`` receives (or that is returned without one).

        ``channels`` when set; else the stored channels when ``transform`` converts channels
        itself (an int ``channels`` attribute, e.g. a :func:`~vitfer.data.build_transforms`
        pipeline); else 3.
        """
        if self.channels is not None:
            return self.channels
        if isinstance(getattr(self.transform, "channels", None), int):
            return self.stored_channels
        return 3

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Item ``index``: image float (C, H, W) in ``[0, 1]`` (C: :meth:`item_channels`), then
        ``transform``; label int."""
        x = to_channels(self.uint8(index).float().div_(255.0), self.item_channels())
        if self.transform is not None:
            if isinstance(self.transform, Transform):
                gen = None if self.seed is None else item_generator(self.seed, self.epoch, index % len(self))
                x = self.transform(x, generator=gen)
            else:
                x = self.transform(x)
        return x, self.labels[index]

    @property
    def images(self) -> Tensor:
        """All stored images of this dataset (or view): uint8 (N, C, H, W); a copy for a view."""
        return self._images if self._index is None else self._images.index_select(0, self._index)

    @property
    def image_size(self) -> tuple[int, int]:
        """Stored ``(H, W)``."""
        return int(self._images.shape[-2]), int(self._images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def subject_names(self) -> list[str]:
        """Distinct subjects, sorted (empty when unknown)."""
        return sorted({s for s in self.subjects if s is not None})

    def class_counts(self) -> dict[str, int]:
        """Number of items per class, in class order."""
        counts = Counter(self.labels)
        return {c: counts.get(k, 0) for k, c in enumerate(self.classes)}

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds per-item augmentation (with ``seed`` set)."""
        self.epoch = int(epoch)

    def subset(self, indices: Sequence[int], transform: Callable[..., Tensor] | None = _KEEP) -> "FERDataset":
        """A view on some items that shares the decoded images (no copy).

        Args:
            indices: item indices of this dataset (e.g. ``make_split(...)["train"]``).
            transform: transform of the view; omitted keeps this dataset's.

        Returns:
            A :class:`FERDataset` (same class) of ``len(indices)`` items, with the same classes,
            seed, name and root; ``skipped`` stays the load report of the whole dataset.
        """
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        n = len(self)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"subset indices must be in range({n})")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._index = idx if self._index is None else self._index[idx]
        pos = idx.tolist()
        view.labels = [self.labels[i] for i in pos]
        view.subjects = [self.subjects[i] for i in pos]
        view.paths = [self.paths[i] for i in pos]
        usage = getattr(self, "usage", None) or [None] * n
        view.usage = [usage[i] for i in pos]
        view.skipped = list(self.skipped)
        view.transform = self.transform if transform is _KEEP else transform
        view.epoch = self.epoch
        return view

    def __repr__(self) -> str:
        h, w = self.image_size
        counts = ", ".join(f"{c}: {n}" for c, n in self.class_counts().items())
        n_subj = len(self.subject_names)
        return (
            f"{type(self).__name__}(name={self.name!r}, root={str(self.root) if self.root else None!r}, "
            f"n={len(self)}, size={h}x{w}, channels={self._images.shape[1]}, face_cropped={self.face_cropped}, "
            f"classes={{{counts}}}, subjects={n_subj or None}, skipped={len(self.skipped)})"
        )


# --------------------------------------------------------------------- loading helpers
def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a folder: {path}")
    return path


def _resolve_root(root: str | os.PathLike, sub: str) -> Path:
    """``root`` itself, or ``root/sub`` when ``root`` holds it (e.g. ``VITFER_DATA_DIR``)."""
    root = Path(root).expanduser()
    if (root / sub).is_dir():
        return root / sub
    return _require_dir(root, f"{sub} folder")


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    """Image files (by extension, not hidden) of ``folder``, sorted by relative path."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    out = []
    for p in it:
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if is_image_file(p) and p.is_file():
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _class_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _has_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image file at any depth (stops at the first)."""
    return any(is_image_file(p) and p.is_file() for p in folder.rglob("*"))


def _layout_hints(root: Path, folders: Sequence[Path], kind: str) -> list[str]:
    """Suggestions for a folder that is not the ``kind`` layout, by what it looks like."""
    hints = []
    names = [p.name for p in folders]
    if kind != "ckplus48" and names == list(CKPLUS48_CLASSES):
        hints.append('it looks like CK+48: use --dataset ckplus48 / load_dataset("ckplus48", root)')
    elif any(_has_images(f) for f in folders):
        hints.append(f"if its sub-folders are classes, {_FOLDER_HINT}")
    if kind != "jaffe" and _looks_like_jaffe(_image_files(root, recursive=False)):
        hints.append('if it is JAFFE, use --dataset jaffe / load_dataset("jaffe", root)')
    return hints


def _looks_like_jaffe(files: Sequence[Path]) -> bool:
    """Whether image files are named like JAFFE's (``<subject>.<EXPR><n>.<id>.<ext>``, known EXPR)."""
    def ok(p: Path) -> bool:
        fields = p.name.split(".")
        return len(fields) >= 3 and bool(fields[0]) and fields[1][:2].upper() in JAFFE_CODES

    return bool(files) and all(ok(p) for p in files)


def _found(root: Path, folders: Sequence[Path]) -> str:
    """What ``root`` holds: its sub-folders and top-level files, as short lists."""
    files = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    parts = []
    if folders:
        parts.append(f"{len(folders)} sub-folder(s): {_short_list([p.name for p in folders])}")
    if files:
        parts.append(f"{len(files)} file(s): {_short_list(files)}")
    return "; ".join(parts) if parts else "nothing"


def _not_ckplus48_message(root: Path, names: Sequence[str]) -> str:
    """Error text for a ``ckplus48`` folder whose class folders are not :data:`CKPLUS48_CLASSES`."""
    folders = _class_folders(root)
    msg = (
        f"{root} is not a CK+48 folder: expected the {len(CKPLUS48_CLASSES)} class folders "
        f"{', '.join(CKPLUS48_CLASSES)}; found {_found(root, folders)}"
    )
    missing = [c for c in CKPLUS48_CLASSES if c not in names]
    extra = [n for n in names if n not in CKPLUS48_CLASSES]
    if len(missing) <= len(CKPLUS48_CLASSES) // 2:  # mostly CK+48: say what differs
        if missing:
            msg += f"; missing: {_short_list(missing)}"
        if extra:
            msg += f"; unexpected: {_short_list(extra)}"
    hints = _layout_hints(root, folders, "ckplus48")
    return msg + "".join(f"\n  hint: {h}" for h in hints)


_JAFFE_PATTERN = f"<subject>.<EXPR><n>.<id>.<ext> with EXPR one of {' '.join(JAFFE_CODES)} (e.g. KA.AN1.39.tiff)"


def _no_jaffe_files_message(root: Path) -> str:
    """Error text for a ``jaffe`` folder without image files at its top level."""
    folders = _class_folders(root)
    msg = (
        f"JAFFE folder {root} holds no image files: expected a flat folder of {_JAFFE_PATTERN}; "
        f"found {_found(root, folders)}"
    )
    return msg + "".join(f"\n  hint: {h}" for h in _layout_hints(root, folders, "jaffe"))


def _bad_jaffe_names_message(root: Path, bad: Sequence[tuple[Path, str]], n_files: int) -> str:
    """Error text for JAFFE files whose names do not give a subject and an expression."""
    lines = [f"  {p}: {reason}" for p, reason in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    msg = f"{len(bad)} of {n_files} image file(s) in JAFFE folder {root} are not named {_JAFFE_PATTERN}:\n"
    msg += "\n".join(lines)
    if len(bad) == n_files:
        hints = _layout_hints(root, _class_folders(root), "jaffe") or ["this does not look like JAFFE"]
        msg += "".join(f"\n  hint: {h}" for h in hints)
    return msg


_FITS = ("crop", "stretch")
#: Share of the decoded images that must have one size for the others to be resized to it when
#: no ``image_size`` is given (see :func:`load_image_folder`).
DOMINANT_SIZE_SHARE = 0.9
#: Decoded bytes above which a folder of images of different sizes, without ``image_size``, is
#: refused before decoding (the header sizes are read first).
_MAX_NATIVE_BYTES = 2 << 30
_SIZE_FLAG = "--img-size"


def _check_interp(interpolation: str) -> str:
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
    return interpolation


def _parse_size(image_size: Any) -> tuple[int, int] | None:
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
            f"{_SIZE_FLAG} must be a positive size (SIZE, or (height, width) in Python: image_size=...), "
            f"got {image_size!r}"
        )
    return size  # type: ignore[return-value]


def _resolve_fit(fit: str | None, image_size: Any) -> str:
    """``fit`` or its default: ``crop`` for an int size (or None), ``stretch`` for (H, W)."""
    if fit is None:
        return "stretch" if image_size is not None and not isinstance(image_size, int) else "crop"
    if fit not in _FITS:
        raise ValueError(f"fit must be one of {', '.join(_FITS)}, got {fit!r}")
    return fit


def fit_image(im: Image.Image, size: tuple[int, int], *, fit: str = "crop", interpolation: str = "bilinear") -> Image.Image:
    """Resize a PIL image to ``size = (H, W)``.

    ``fit="crop"``: scale so that the image covers ``(H, W)`` with its aspect ratio kept (for a
    square size: the shorter side becomes the size), then take the centre ``(H, W)``; done in
    one resampling step (``Image.resize(box=...)``), so nothing outside the crop is computed.
    ``fit="stretch"``: resize to ``(H, W)`` directly (the aspect ratio changes). An image of the
    size already is returned as it is.
    """
    h, w = size
    if im.size == (w, h):
        return im
    resample = _INTERP[interpolation]
    if fit == "stretch":
        return im.resize((w, h), resample)
    iw, ih = im.size
    scale = max(w / iw, h / ih)
    bw, bh = w / scale, h / scale  # the source region that maps onto (w, h)
    # clamped: w / (w / iw) can come out a hair over iw (49 -> 32 wide), which Pillow refuses
    left, top = max(0.0, (iw - bw) / 2.0), max(0.0, (ih - bh) / 2.0)
    return im.resize((w, h), resample, box=(left, top, min(float(iw), left + bw), min(float(ih), top + bh)))


def _header_size(path: Path) -> tuple[int, int] | None:
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


def _check_native_memory(files: Sequence[Path], source: Path) -> None:
    """Refuse, before decoding, a folder of differently sized images that would not fit in memory."""
    sizes = [s for s in (_header_size(p) for p in files) if s is not None]
    if len(set(sizes)) <= 1:
        return
    total = sum(3 * h * w for h, w in sizes)
    if total > _MAX_NATIVE_BYTES:
        raise DatasetError(
            f"the {len(sizes)} images in {source} have {len(set(sizes))} different sizes and would take "
            f"{total / 2**30:.1f} GiB decoded at their own size; pass {_SIZE_FLAG} SIZE (image_size=SIZE in "
            f"Python) to resize each image at load time"
        )


def _decode_all(
    files: Sequence[Path],
    *,
    strict: bool,
    image_size: tuple[int, int] | None,
    interpolation: str,
    source: Path,
    fit: str = "crop",
    pre_skipped: Sequence[tuple[Path, str]] = (),
    preprocess: Callable[[Image.Image], tuple[Image.Image | None, str]] | None = None,
) -> tuple[list[int], list[Tensor], list[tuple[Path, str]], int]:
    """Decode ``files``; returns kept positions, their uint8 (C, H, W) tensors, the skipped
    (``pre_skipped`` first) and how many were resized. With ``image_size`` every image is
    resized right after decoding (memory stays ``N x image_size``). ``preprocess(image)`` runs on
    each decoded image first (e.g. cropping the face) and returns ``(image, "")`` or
    ``(None, reason)`` for an image to skip."""
    kept: list[int] = []
    tensors: list[Tensor] = []
    skipped: list[tuple[Path, str]] = list(pre_skipped)
    n_resized = 0
    if image_size is None:
        _check_native_memory(files, source)
    for i, path in enumerate(files):
        try:
            im = load_image(path)
        except ImageDecodeError as exc:
            skipped.append((path, exc.reason))
            continue
        if preprocess is not None:
            im, reason = preprocess(im)
            if im is None:
                skipped.append((path, reason))
                continue
        if image_size is not None and im.size != (image_size[1], image_size[0]):
            im = fit_image(im, image_size, fit=fit, interpolation=interpolation)
            n_resized += 1
        kept.append(i)
        tensors.append(image_to_tensor(im))
    if skipped:
        n_files = len(files) + len(pre_skipped)
        if strict:
            listing = "\n".join(f"  {p}: {reason}" for p, reason in skipped)
            raise DatasetError(f"{len(skipped)} file(s) in {source} cannot be decoded (strict=True):\n{listing}")
        warnings.warn(_skipped_message(source, skipped, n_files), SkippedFilesWarning, stacklevel=4)
    return kept, tensors, skipped, n_resized


def _skipped_message(source: Path, skipped: Sequence[tuple[Path, str]], n_files: int) -> str:
    """The text of a :class:`SkippedFilesWarning`: folder, count, the first few files and reasons."""
    lines = [f"  {p}: {reason}" for p, reason in skipped[:_MAX_LISTED]]
    if len(skipped) > _MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - _MAX_LISTED} more (all of them in dataset.skipped)")
    return (
        f"skipped {len(skipped)} of {n_files} image file(s) in {source} that cannot be decoded or used "
        f"(strict=True makes this an error):\n" + "\n".join(lines)
    )


def _unify_sizes(
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
        examples = _short_list([f"{h}x{w} for {p}" for p, (h, w) in odd], 3)
        raise DatasetError(
            f"images in {source} have {len(sizes)} different sizes ({common[0]}x{common[1]} for "
            f"{n_common} of {len(tensors)}; {examples}); pass {_SIZE_FLAG} SIZE on the command line "
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
        source, len(odd), common[0], common[1], _short_list([str(p) for p, _ in odd]), _SIZE_FLAG,
    )
    return out, len(odd), common  # type: ignore[return-value]


def _stack(tensors: list[Tensor]) -> Tensor:
    """Stack uint8 (C, H, W) images of one size into (N, C, H, W); grey becomes RGB if any image is RGB."""
    if any(t.shape[0] == 3 for t in tensors):
        tensors = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in tensors]
    return torch.stack(tensors).contiguous()


def _report(
    ds: FERDataset, *, n_files: int, n_resized: int, resize: str | None, fit: str | None, seconds: float, **extra: Any
) -> dict[str, Any]:
    """Fill ``ds.load_report`` and log it at INFO."""
    report: dict[str, Any] = {
        "kind": ds.name,
        "source": str(ds.root) if ds.root is not None else None,
        "n_images": len(ds),
        "n_files": n_files,
        "n_resized": n_resized,
        "n_skipped": len(ds.skipped),
        "class_counts": ds.class_counts(),
        "image_size": ds.image_size,
        "resize": resize,
        "fit": fit if n_resized else None,
        "channels": ds.stored_channels,
        "seconds": round(seconds, 3),
    }
    if any(u is not None for u in ds.usage):
        report["part_counts"] = dict(Counter(u for u in ds.usage if u is not None))
    report.update(extra)
    ds.load_report = report
    h, w = ds.image_size
    counts = ", ".join(f"{c} {n}" for c, n in report["class_counts"].items())
    parts = report.get("part_counts")
    logger.info(
        "loaded %s from %s: %d images (%dx%d, %d channel(s)), %d resized, %d skipped in %.2f s; by class: %s%s",
        ds.name, ds.root, len(ds), h, w, ds.stored_channels, n_resized, report["n_skipped"], seconds, counts,
        "" if not parts else "; by part: " + ", ".join(f"{k} {v}" for k, v in parts.items()),
    )
    return report


def _build(
    name: str,
    root: Path,
    files: list[Path],
    labels: list[int],
    subjects: list[str | None],
    classes: Sequence[str],
    *,
    strict: bool,
    image_size: tuple[int, int] | None = None,
    interpolation: str = "bilinear",
    fit: str = "crop",
    transform: Callable[..., Tensor] | None = None,
    default_test_size: int | float = 0.2,
    face_cropped: bool = False,
    usage: list[str | None] | None = None,
    pre_skipped: Sequence[tuple[Path, str]] = (),
    preprocess: Callable[[Image.Image], tuple[Image.Image | None, str]] | None = None,
    t0: float,
) -> FERDataset:
    kept, tensors, skipped, n_resized = _decode_all(
        files, strict=strict, image_size=image_size, interpolation=interpolation, source=root, fit=fit,
        pre_skipped=pre_skipped, preprocess=preprocess,
    )
    kept_labels = [labels[i] for i in kept]
    counts = Counter(kept_labels)
    for k in sorted(set(labels)):
        if counts.get(k, 0) == 0:
            raise DatasetError(f"class {classes[k]!r} of {root} has no decodable image (all its files were skipped)")
    if not kept:
        raise DatasetError(f"no decodable image in {root}")
    kept_paths = [files[i] for i in kept]
    resize = "image_size" if image_size is not None else None
    if image_size is None:
        tensors, n_resized, dominant = _unify_sizes(tensors, kept_paths, root, fit=fit, interpolation=interpolation)
        resize = "dominant size" if dominant is not None else None
    images = _stack(tensors)
    ds = FERDataset(
        images,
        kept_labels,
        classes,
        subjects=[subjects[i] for i in kept],
        paths=kept_paths,
        skipped=skipped,
        transform=transform,
        name=name,
        root=root,
        default_test_size=default_test_size,
        face_cropped=face_cropped,
        usage=None if usage is None else [usage[i] for i in kept],
    )
    _report(
        ds, n_files=len(files) + len(pre_skipped), n_resized=n_resized, resize=resize, fit=fit,
        seconds=time.perf_counter() - t0,
    )
    return ds


def _subject_matcher(subject_pattern: str | None) -> Callable[[Path], str | None] | None:
    """A function file -> subject from a ``--subject-pattern`` regex (None without a pattern).

    The subject is the named group ``subject`` if the pattern has one, else its first group,
    else the whole match, searched (``re.search``) in the file name (not the folders).
    """
    if subject_pattern is None:
        return None
    try:
        rx = re.compile(subject_pattern)
    except re.error as exc:
        raise DatasetError(f"--subject-pattern {subject_pattern!r} is not a valid regular expression: {exc}") from exc
    group: int | str = "subject" if "subject" in rx.groupindex else (1 if rx.groups else 0)

    def match(path: Path) -> str | None:
        m = rx.search(Path(path).name)
        value = m.group(group) if m else None
        return value or None

    return match


def _apply_subject_pattern(
    subject_pattern: str, files: Sequence[Path], root: Path
) -> list[str | None]:
    """Subjects of ``files`` by ``subject_pattern``; every file must match (else a DatasetError)."""
    match = _subject_matcher(subject_pattern)
    assert match is not None
    subjects = [match(p) for p in files]
    bad = [p for p, s in zip(files, subjects) if s is None]
    if bad:
        listing = "\n".join(f"  {p}" for p in bad[:_MAX_LISTED])
        if len(bad) > _MAX_LISTED:
            listing += f"\n  ... and {len(bad) - _MAX_LISTED} more"
        raise DatasetError(
            f"--subject-pattern {subject_pattern!r} does not match {len(bad)} of {len(files)} file name(s) "
            f"in {root} (the subject is the pattern's group named 'subject', else its first group, found "
            f"with re.search in the file name):\n{listing}"
        )
    return subjects


# --------------------------------------------------------------------- the three layouts
#: Part-folder names of the ``root/<part>/<class>/`` layout, lower case, and the official part
#: each stands for (``make_split(ds, "official")``).
PART_FOLDERS: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


def _part_folders(root: Path, folders: Sequence[Path]) -> list[Path] | None:
    """The part folders when ``root`` is ``<root>/train|val|test/<class>/``, else None.

    Detected when every sub-folder is a part name (:data:`PART_FOLDERS`, any case), one of them
    is a training part and another a test or validation part, and each holds sub-folders.
    """
    if len(folders) < 2:
        return None
    kinds = [PART_FOLDERS.get(p.name.lower()) for p in folders]
    if None in kinds or "train" not in kinds or not ({"val", "test"} & set(kinds)):
        return None
    if len(set(kinds)) != len(kinds):
        dup = [p.name for p, k in zip(folders, kinds) if kinds.count(k) > 1]
        raise DatasetError(f"{root} has more than one folder for the same part: {', '.join(dup)}")
    if not all(_class_folders(p) for p in folders):
        return None
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(folders, key=lambda p: order[PART_FOLDERS[p.name.lower()]])


def load_image_folder(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    image_size: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    fit: str | None = None,
    subject_fn: Callable[[Path], str] | None = None,
    subject_pattern: str | None = None,
    classes: Sequence[str] | None = None,
    labels: str | os.PathLike | None = None,
    transform: Callable[..., Tensor] | None = None,
    face_cropped: bool = False,
    preprocess: Callable[[Image.Image], tuple[Image.Image | None, str]] | None = None,
) -> FERDataset:
    """Load ``<root>/<class>/**/<image>`` (png, jpg, jpeg, bmp, tif, tiff, webp, gif).

    Layouts: class folders ``<root>/<class>/``; or part folders ``<root>/train/<class>/`` and
    ``<root>/test/<class>/`` (and/or ``val/``, ``validation/``; any case, see
    :data:`PART_FOLDERS`), detected automatically: all parts are loaded with one class list (the
    union of their class folders, sorted) and each item's part folder name is recorded in
    ``dataset.usage``, which ``make_split(ds, "official")`` uses. With ``labels`` the classes
    come from a label file instead (see :func:`load_label_file`).

    Sizes: with ``image_size`` every image is resized right after decoding, so memory stays
    ``N x image_size`` whatever the photos. ``fit="crop"`` (the default for an int size): scale
    the shorter side to the size (the covering scale for ``(H, W)``) and take the centre crop,
    keeping the aspect ratio; ``fit="stretch"`` (the default for an ``(H, W)`` tuple, as before,
    and torchvision's ``Resize`` convention) resizes to ``(H, W)`` directly. Without
    ``image_size`` images keep their size; when sizes differ but one size covers at least
    :data:`DOMINANT_SIZE_SHARE` (90 %) of the images, the others (a stray photo, a file whose
    header declares another size) are resized to it with ``fit`` (default crop) and logged;
    otherwise loading fails with an error naming ``--img-size``. Grey and colour are kept: an
    all-grey folder is stored with 1 channel, a folder with any colour image as RGB.

    Args:
        root: folder of class folders (or of part folders).
        strict: raise on an undecodable file instead of skipping it.
        image_size: int or (height, width): resize every image at load time (``--img-size``).
        interpolation: ``nearest``, ``bilinear`` or ``bicubic`` for resizing.
        fit: ``crop`` or ``stretch`` (see above); None: ``crop`` for an int, ``stretch`` for a
            tuple.
        subject_fn: maps a file path to its subject id (enables subject splits).
        subject_pattern: a regular expression searched in each file name whose group named
            ``subject`` (else its first group, else the whole match) is the subject
            (``--subject-pattern``); a file name it does not match is an error listing them.
        classes: the class folders to use, in label order; None uses every sub-folder, sorted.
        labels: a label file (CSV ``path,label[,subject]``, ``--labels``; relative paths are
            taken from ``root``): load that instead of class folders (see
            :func:`load_label_file`).
        transform: the dataset's transform.
        face_cropped: the images are already tight face crops (sets ``dataset.face_cropped``;
            evaluate them with ``crop_pct=1.0``).

    Returns:
        FERDataset with ``name="folder"``, ``load_report`` filled (see :class:`FERDataset`).
    """
    t0 = time.perf_counter()
    if labels is not None:
        csv_path = Path(labels).expanduser()
        if not csv_path.is_absolute():
            csv_path = Path(root).expanduser() / csv_path
        return load_label_file(
            csv_path, strict=strict, image_size=image_size, interpolation=interpolation, fit=fit,
            subject_fn=subject_fn, subject_pattern=subject_pattern, classes=classes, transform=transform,
            face_cropped=face_cropped, preprocess=preprocess,
        )
    root = _require_dir(Path(root).expanduser(), "dataset folder")
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
    size = _parse_size(image_size)
    fit = _resolve_fit(fit, image_size)
    if subject_fn is not None and subject_pattern is not None:
        raise ValueError("pass subject_fn or subject_pattern, not both")
    top = _class_folders(root)
    parts = _part_folders(root, top)
    sources = parts if parts is not None else [root]
    by_name: dict[str, list[Path]] = {}  # class name -> its folder in each source
    for src in sources:
        for p in _class_folders(src):
            by_name.setdefault(p.name, []).append(p)
    if classes is not None:
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise DatasetError(
                f"class folder(s) {missing} not found in {root}; found {len(by_name)} folder(s): "
                f"{_short_list(sorted(by_name))}"
            )
        names = list(classes)
    else:
        names = sorted(by_name)
    if not names:
        flat = _image_files(root, recursive=False)
        found = f"{len(flat)} image file(s) ({_short_list([p.name for p in flat])})" if flat else "no sub-folders"
        hint = "\n  hint: it looks like JAFFE: use --dataset jaffe / load_dataset(\"jaffe\", root)"
        raise DatasetError(
            f"no class folders in {root} (expected <root>/<class>/<image files>); found {found}"
            + (hint if _looks_like_jaffe(flat) else "")
        )
    files: list[Path] = []
    label_ids: list[int] = []
    usage: list[str | None] = []
    for src in sources:
        for k, cls in enumerate(names):
            folder = src / cls
            if parts is not None and not folder.is_dir():
                continue  # a class may be absent from one part
            found = _image_files(folder, recursive=True)
            if not found:
                raise DatasetError(f"class folder {folder} holds no image files")
            files += found
            label_ids += [k] * len(found)
            usage += [src.name if parts is not None else None] * len(found)
    if subject_pattern is not None:
        subjects = _apply_subject_pattern(subject_pattern, files, root)
    else:
        subjects = [subject_fn(p) if subject_fn else None for p in files]
    return _build(
        "folder", root, files, label_ids, subjects, names,
        strict=strict, image_size=size, interpolation=interpolation, fit=fit, transform=transform,
        face_cropped=face_cropped, usage=usage if parts is not None else None, preprocess=preprocess, t0=t0,
    )


def load_ckplus48(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    transform: Callable[..., Tensor] | None = None,
    image_size: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    fit: str | None = None,
) -> FERDataset:
    """Load CK+48: ``<root>/<class>/S<subject>_<seq>_<frame>.png``, 7 classes, 48x48 grey.

    Args:
        root: the CK+48 folder, or a folder holding ``ckplus48/``.
        strict: raise on an undecodable file instead of skipping it.
        transform: the dataset's transform.
        image_size, interpolation, fit: optional resizing at load time, as for
            :func:`load_image_folder` (None keeps the native size).

    Returns:
        FERDataset (981 images, 118 subjects for the public CK+48), classes
        :data:`CKPLUS48_CLASSES`, subject = the ``S###`` prefix, ``default_test_size=200``.
    """
    t0 = time.perf_counter()
    root = _resolve_root(root, "ckplus48")
    names = [p.name for p in _class_folders(root)]
    if names != list(CKPLUS48_CLASSES):
        raise DatasetError(_not_ckplus48_message(root, names))
    files, labels, subjects = [], [], []
    for k, cls in enumerate(CKPLUS48_CLASSES):
        folder = root / cls
        found = _image_files(folder, recursive=False)
        if not found:
            raise DatasetError(f"class folder {folder} holds no image files")
        for p in found:
            m = _CK_SUBJECT.match(p.name)
            if m is None:
                raise DatasetError(f"CK+48 file name {p} does not start with the subject (S<digits>_)")
            subjects.append(m.group(1))
        files += found
        labels += [k] * len(found)
    return _build(
        "ckplus48", root, files, labels, subjects, CKPLUS48_CLASSES,
        strict=strict, transform=transform, default_test_size=STUDY_TEST_SIZE["ckplus48"],
        image_size=_parse_size(image_size), interpolation=_check_interp(interpolation), fit=_resolve_fit(fit, image_size),
        face_cropped=True, t0=t0,
    )


def load_jaffe(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    transform: Callable[..., Tensor] | None = None,
    image_size: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    fit: str | None = None,
    preprocess: Callable[[Image.Image], tuple[Image.Image | None, str]] | None = None,
) -> FERDataset:
    """Load JAFFE: a flat folder of ``<subject>.<EXPR><n>.<id>.tiff`` (``KA.AN1.39.tiff``).

    Args:
        root: the JAFFE folder, or a folder holding ``jaffe/``.
        strict: raise on an undecodable file instead of skipping it.
        transform: the dataset's transform.
        image_size, interpolation, fit: optional resizing at load time, as for
            :func:`load_image_folder` (None keeps the native size).
        preprocess: a load-time step on each decoded image, as for :func:`load_image_folder`
            (e.g. keeping the face: JAFFE's 256x256 photos show head and shoulders, the face
            about half their width); give ``image_size`` with it when its crops differ in size.

    Returns:
        FERDataset (213 images, 10 subjects for the public JAFFE), classes :data:`JAFFE_CLASSES`,
        label from the code (:data:`JAFFE_CODES`), subject = the first field,
        ``default_test_size=70``. Palette (``P``) files are converted with ``.convert("L")``.

    Raises:
        DatasetError: a name without the three fields or with an unknown code (naming the file),
            or no image files.
    """
    t0 = time.perf_counter()
    root = _resolve_root(root, "jaffe")
    files = _image_files(root, recursive=False)
    if not files:
        raise DatasetError(_no_jaffe_files_message(root))
    codes = list(JAFFE_CODES)
    labels, subjects = [], []
    bad: list[tuple[Path, str]] = []
    for p in files:
        fields = p.name.split(".")
        if len(fields) < 3 or not fields[0]:
            bad.append((p, "not <subject>.<EXPR><n>.<id>.<ext>"))
            continue
        code = fields[1][:2].upper()
        if code not in JAFFE_CODES:
            bad.append((p, f"unknown expression code {fields[1][:2]!r}"))
            continue
        labels.append(codes.index(code))
        subjects.append(fields[0])
    if bad:
        raise DatasetError(_bad_jaffe_names_message(root, bad, len(files)))
    return _build(
        "jaffe", root, files, labels, subjects, JAFFE_CLASSES,
        strict=strict, transform=transform, default_test_size=STUDY_TEST_SIZE["jaffe"],
        image_size=_parse_size(image_size), interpolation=_check_interp(interpolation), fit=_resolve_fit(fit, image_size),
        face_cropped=True, preprocess=preprocess, t0=t0,
    )


_PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "img")
_LABEL_COLUMNS = ("label", "class", "expression", "emotion")
_SUBJECT_COLUMNS = ("subject", "subject_id", "person", "identity")
_LABEL_LAYOUT = "path,label[,subject] (a header row naming these columns is optional)"


def _natural_key(name: str) -> tuple[int, Any]:
    """Sort key: integers by value (``2`` before ``10``), then other names alphabetically."""
    return (0, int(name)) if name.isdigit() else (1, name)


def _read_label_file(csv_path: Path) -> list[tuple[int, str, str, str | None]]:
    """Rows of a label file: ``(line, path, label, subject or None)``; errors name file and line."""
    import csv

    rows: list[tuple[int, str, str, str | None]] = []
    columns: tuple[int, int, int | None] | None = None  # path, label, subject column
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"--labels: cannot read label file {csv_path}: {exc}") from exc
    with f:
        reader = csv.reader(f)
        try:
            for row in reader:
                line = reader.line_num
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                if columns is None:  # the first row: a header, or the first data row
                    lower = [c.lower() for c in cells]
                    if any(c in _PATH_COLUMNS + _LABEL_COLUMNS + _SUBJECT_COLUMNS for c in lower):
                        unknown = [c for c in lower if c not in _PATH_COLUMNS + _LABEL_COLUMNS + _SUBJECT_COLUMNS]
                        pick = [next((i for i, c in enumerate(lower) if c in names), None)
                                for names in (_PATH_COLUMNS, _LABEL_COLUMNS, _SUBJECT_COLUMNS)]
                        if unknown or pick[0] is None or pick[1] is None or len(set(lower)) != len(lower):
                            raise DatasetError(
                                f"label file {csv_path}, line {line}: unknown column layout {','.join(cells)}; "
                                f"expected {_LABEL_LAYOUT}"
                            )
                        columns = (pick[0], pick[1], pick[2])
                        n_columns = len(cells)
                        continue
                    if len(cells) not in (2, 3):
                        raise DatasetError(
                            f"label file {csv_path}, line {line}: {len(cells)} column(s); expected {_LABEL_LAYOUT}"
                        )
                    columns = (0, 1, 2 if len(cells) == 3 else None)
                    n_columns = len(cells)
                if len(cells) != n_columns:
                    raise DatasetError(
                        f"label file {csv_path}, line {line}: {len(cells)} column(s) where the file has "
                        f"{n_columns}; expected {_LABEL_LAYOUT}"
                    )
                ip, il, isub = columns
                if not cells[ip]:
                    raise DatasetError(f"label file {csv_path}, line {line}: empty path")
                if not cells[il]:
                    raise DatasetError(f"label file {csv_path}, line {line}: empty label for {cells[ip]}")
                rows.append((line, cells[ip], cells[il], (cells[isub] or None) if isub is not None else None))
        except csv.Error as exc:
            raise DatasetError(f"label file {csv_path}, line {reader.line_num}: not valid CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise DatasetError(f"label file {csv_path} is not a UTF-8 text file (--labels takes a CSV): {exc}") from exc
    if not rows:
        raise DatasetError(f"label file {csv_path} has no rows; expected {_LABEL_LAYOUT}")
    return rows


def load_label_file(
    csv_path: str | os.PathLike,
    *,
    strict: bool = False,
    image_size: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    fit: str | None = None,
    subject_fn: Callable[[Path], str] | None = None,
    subject_pattern: str | None = None,
    classes: Sequence[str] | None = None,
    transform: Callable[..., Tensor] | None = None,
    face_cropped: bool = False,
    preprocess: Callable[[Image.Image], tuple[Image.Image | None, str]] | None = None,
) -> FERDataset:
    """Load the images listed in a label file: a CSV of ``path,label[,subject]`` rows.

    The header row is optional (recognised when it names the columns: ``path``/``file``/
    ``filename``/``image``, ``label``/``class``/``expression``/``emotion``, and
    ``subject``/``person``; any order). Paths are relative to the CSV's folder (absolute paths
    work too); blank lines and lines starting with ``#`` are ignored. Classes are the distinct
    labels, sorted (numbers by value), or ``classes`` in that order. The subject column, when
    there is one, gives the subjects (an empty cell: unknown); ``subject_pattern`` /
    ``subject_fn`` take precedence. A listed file that does not exist or does not decode is
    skipped and named (``dataset.skipped``, one :class:`SkippedFilesWarning`; an error with
    ``strict=True``). An empty path or label, a row with another column count or a header with
    unknown columns is a :class:`~vitfer.data.io.DatasetError` naming the file and line.

    Args:
        csv_path: the label file (``--labels``).
        strict, image_size, interpolation, fit, subject_fn, subject_pattern, transform,
            face_cropped: as for :func:`load_image_folder`.
        classes: class names in label order; a label outside them is an error naming its line.

    Returns:
        FERDataset with ``name="labels"`` and ``root`` the CSV's folder.
    """
    t0 = time.perf_counter()
    csv_path = Path(csv_path).expanduser()
    if not csv_path.exists():
        raise DatasetError(f"--labels: label file not found: {csv_path}")
    if csv_path.is_dir():
        raise DatasetError(f"--labels: {csv_path} is a folder; pass the label file (a CSV of {_LABEL_LAYOUT})")
    size = _parse_size(image_size)
    fit = _resolve_fit(fit, image_size)
    _check_interp(interpolation)
    if subject_fn is not None and subject_pattern is not None:
        raise ValueError("pass subject_fn or subject_pattern, not both")
    rows = _read_label_file(csv_path)
    base = csv_path.parent
    if classes is not None:
        names = list(classes)
        index = {c: k for k, c in enumerate(names)}
        bad = [(line, label) for line, _, label, _ in rows if label not in index]
        if bad:
            line, label = bad[0]
            raise DatasetError(
                f"label file {csv_path}, line {line}: label {label!r} is not one of the classes "
                f"{', '.join(names)} ({len(bad)} such row(s))"
            )
    else:
        names = sorted({label for _, _, label, _ in rows}, key=_natural_key)
        index = {c: k for k, c in enumerate(names)}
    files: list[Path] = []
    label_ids: list[int] = []
    subjects: list[str | None] = []
    missing: list[tuple[Path, str]] = []
    for line, rel, label, subject in rows:
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            missing.append((path, f"file not found (line {line} of {csv_path.name})"))
            continue
        files.append(path)
        label_ids.append(index[label])
        subjects.append(subject)
    if not files:
        raise DatasetError(
            f"none of the {len(rows)} file(s) listed in {csv_path} exists (paths are relative to {base}); "
            f"first: {_short_list([str(p) for p, _ in missing], 3)}"
        )
    if subject_pattern is not None:
        subjects = _apply_subject_pattern(subject_pattern, files, csv_path)
    elif subject_fn is not None:
        subjects = [subject_fn(p) for p in files]
    return _build(
        "labels", base, files, label_ids, subjects, names,
        strict=strict, image_size=size, interpolation=interpolation, fit=fit, transform=transform,
        face_cropped=face_cropped, pre_skipped=missing, preprocess=preprocess, t0=t0,
    )


def _load_fer2013(root: str | os.PathLike, **kwargs: Any) -> FERDataset:
    from .fer2013 import load_fer2013

    return load_fer2013(root, **kwargs)


_KINDS: dict[str, Callable[..., FERDataset]] = {
    "ckplus48": load_ckplus48,
    "ck+48": load_ckplus48,
    "jaffe": load_jaffe,
    "folder": load_image_folder,
    "labels": load_label_file,
    "fer2013": _load_fer2013,
    "fer-2013": _load_fer2013,
}
#: The dataset kinds :func:`load_dataset` takes (aliases ``ck+48`` and ``fer-2013`` too).
DATASET_KINDS: tuple[str, ...] = ("ckplus48", "jaffe", "folder", "labels", "fer2013")


def load_dataset(kind: str, root: str | os.PathLike, *, strict: bool = False, **kwargs: Any) -> FERDataset:
    """Load a dataset into memory.

    Args:
        kind: ``ckplus48`` (alias ``ck+48``), ``jaffe``, ``folder``, ``labels`` or ``fer2013``
            (alias ``fer-2013``).
        root: its folder (for ``ckplus48`` / ``jaffe`` also the folder holding it); for
            ``labels`` the label file; for ``fer2013`` the ``fer2013.csv`` file or a folder
            holding it (or ``fer2013/fer2013.csv``).
        strict: raise :class:`~vitfer.data.io.DatasetError` on an undecodable file (a bad CSV
            row for ``fer2013``) instead of skipping it with a :class:`SkippedFilesWarning`.
        **kwargs: ``transform``, ``image_size``, ``interpolation``, ``fit`` for every kind;
            ``subject_fn``, ``subject_pattern``, ``classes`` for ``folder`` and ``labels``;
            ``labels`` (a label file) for ``folder`` (see :func:`load_image_folder`,
            :func:`load_label_file`, :func:`~vitfer.data.fer2013.load_fer2013`).

    Returns:
        FERDataset; ``dataset[i]`` is ``(float (C, H, W), label)``: C = 3 without a transform,
        the model's channels with a :func:`~vitfer.data.build_transforms` pipeline (see
        :class:`FERDataset` ``channels``). ``dataset.load_report`` says what loading did.
    """
    key = kind.lower()
    if key not in _KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    return _KINDS[key](root, strict=strict, **kwargs)
