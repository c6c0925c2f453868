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
  is ``subject_fn(path)`` when given, else None.

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
        if len(self.subjects) != n or len(self.paths) != n:
            raise ValueError(f"{n} images but {len(self.subjects)} subjects and {len(self.paths)} paths")
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


def _decode_all(
    files: Sequence[Path],
    *,
    strict: bool,
    image_size: tuple[int, int] | None,
    interpolation: str,
    source: Path,
) -> tuple[list[int], list[Tensor], list[tuple[Path, str]]]:
    """Decode ``files``; returns kept positions, their uint8 (C, H, W) tensors and the skipped."""
    kept: list[int] = []
    tensors: list[Tensor] = []
    skipped: list[tuple[Path, str]] = []
    for i, path in enumerate(files):
        try:
            im = load_image(path)
        except ImageDecodeError as exc:
            skipped.append((path, exc.reason))
            continue
        if image_size is not None and im.size != (image_size[1], image_size[0]):
            im = im.resize((image_size[1], image_size[0]), _INTERP[interpolation])
        kept.append(i)
        tensors.append(image_to_tensor(im))
    if skipped:
        if strict:
            listing = "\n".join(f"  {p}: {reason}" for p, reason in skipped)
            raise DatasetError(f"{len(skipped)} file(s) in {source} cannot be decoded (strict=True):\n{listing}")
        warnings.warn(_skipped_message(source, skipped, len(files)), SkippedFilesWarning, stacklevel=4)
    return kept, tensors, skipped


def _skipped_message(source: Path, skipped: Sequence[tuple[Path, str]], n_files: int) -> str:
    """The text of a :class:`SkippedFilesWarning`: folder, count, the first few files and reasons."""
    lines = [f"  {p}: {reason}" for p, reason in skipped[:_MAX_LISTED]]
    if len(skipped) > _MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - _MAX_LISTED} more (all of them in dataset.skipped)")
    return (
        f"skipped {len(skipped)} of {n_files} image file(s) in {source} that cannot be decoded "
        f"(strict=True makes this an error):\n" + "\n".join(lines)
    )


def _stack(tensors: list[Tensor], paths: Sequence[Path], source: Path) -> Tensor:
    """Stack uint8 (C, H, W) images into (N, C, H, W); grey becomes RGB if any image is RGB."""
    sizes = Counter(tuple(t.shape[-2:]) for t in tensors)
    if len(sizes) > 1:
        (common, _), *_ = sizes.most_common()
        odd = next(p for p, t in zip(paths, tensors) if tuple(t.shape[-2:]) != common)
        odd_h, odd_w = next(tuple(t.shape[-2:]) for t in tensors if tuple(t.shape[-2:]) != common)
        raise DatasetError(
            f"images in {source} have different sizes ({common[0]}x{common[1]} for most, "
            f"{odd_h}x{odd_w} for {odd}); pass image_size=(height, width) to resize them at load time"
        )
    if any(t.shape[0] == 3 for t in tensors):
        tensors = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in tensors]
    return torch.stack(tensors).contiguous()


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
    transform: Callable[..., Tensor] | None = None,
    default_test_size: int | float = 0.2,
    face_cropped: bool = False,
    t0: float,
) -> FERDataset:
    kept, tensors, skipped = _decode_all(
        files, strict=strict, image_size=image_size, interpolation=interpolation, source=root
    )
    kept_labels = [labels[i] for i in kept]
    counts = Counter(kept_labels)
    for k in sorted(set(labels)):
        if counts.get(k, 0) == 0:
            raise DatasetError(f"class {classes[k]!r} of {root} has no decodable image (all its files were skipped)")
    kept_paths = [files[i] for i in kept]
    images = _stack(tensors, kept_paths, root)
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
    )
    seconds = time.perf_counter() - t0
    logger.info("loaded %s from %s: %d images in %.2f s (%d skipped)", name, root, len(ds), seconds, len(skipped))
    return ds


# --------------------------------------------------------------------- the three layouts
def load_image_folder(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    image_size: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    subject_fn: Callable[[Path], str] | None = None,
    classes: Sequence[str] | None = None,
    transform: Callable[..., Tensor] | None = None,
    face_cropped: bool = False,
) -> FERDataset:
    """Load ``<root>/<class>/**/<image>`` (png, jpg, jpeg, bmp, tif, tiff, webp, gif).

    Args:
        root: folder of class folders.
        strict: raise on an undecodable file instead of skipping it.
        image_size: int or (height, width) to resize every image at load time (needed when
            sizes differ); None keeps the native size, which must then be the same for all.
        interpolation: ``nearest``, ``bilinear`` or ``bicubic`` for ``image_size``.
        subject_fn: maps a file path to its subject id (enables subject splits).
        classes: the class folders to use, in label order; None uses every sub-folder, sorted.
        transform: the dataset's transform.
        face_cropped: the images are already tight face crops (sets ``dataset.face_cropped``;
            evaluate them with ``crop_pct=1.0``).

    Returns:
        FERDataset with ``name="folder"``.
    """
    t0 = time.perf_counter()
    root = _require_dir(Path(root).expanduser(), "dataset folder")
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    size = None if size is None else tuple(int(v) for v in size)
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"image_size must be an int or (height, width) > 0, got {image_size!r}")
    folders = _class_folders(root)
    if classes is not None:
        by_name = {p.name: p for p in folders}
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise DatasetError(
                f"class folder(s) {missing} not found in {root}; found {len(by_name)} folder(s): "
                f"{_short_list(sorted(by_name))}"
            )
        folders = [by_name[c] for c in classes]
    if not folders:
        flat = _image_files(root, recursive=False)
        found = f"{len(flat)} image file(s) ({_short_list([p.name for p in flat])})" if flat else "no sub-folders"
        hint = "\n  hint: it looks like JAFFE: use --dataset jaffe / load_dataset(\"jaffe\", root)"
        raise DatasetError(
            f"no class folders in {root} (expected <root>/<class>/<image files>); found {found}"
            + (hint if _looks_like_jaffe(flat) else "")
        )
    files, labels, subjects = [], [], []
    for k, folder in enumerate(folders):
        found = _image_files(folder, recursive=True)
        if not found:
            raise DatasetError(f"class folder {folder} holds no image files")
        files += found
        labels += [k] * len(found)
        subjects += [subject_fn(p) if subject_fn else None for p in found]
    return _build(
        "folder", root, files, labels, subjects, [p.name for p in folders],
        strict=strict, image_size=size, interpolation=interpolation, transform=transform,
        face_cropped=face_cropped, t0=t0,
    )


def load_ckplus48(
    root: str | os.PathLike, *, strict: bool = False, transform: Callable[..., Tensor] | None = None
) -> FERDataset:
    """Load CK+48: ``<root>/<class>/S<subject>_<seq>_<frame>.png``, 7 classes, 48x48 grey.

    Args:
        root: the CK+48 folder, or a folder holding ``ckplus48/``.
        strict: raise on an undecodable file instead of skipping it.
        transform: the dataset's transform.

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
        face_cropped=True, t0=t0,
    )


def load_jaffe(
    root: str | os.PathLike, *, strict: bool = False, transform: Callable[..., Tensor] | None = None
) -> FERDataset:
    """Load JAFFE: a flat folder of ``<subject>.<EXPR><n>.<id>.tiff`` (``KA.AN1.39.tiff``).

    Args:
        root: the JAFFE folder, or a folder holding ``jaffe/``.
        strict: raise on an undecodable file instead of skipping it.
        transform: the dataset's transform.

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
        face_cropped=True, t0=t0,
    )


_KINDS: dict[str, Callable[..., FERDataset]] = {
    "ckplus48": load_ckplus48,
    "ck+48": load_ckplus48,
    "jaffe": load_jaffe,
    "folder": load_image_folder,
}


def load_dataset(kind: str, root: str | os.PathLike, *, strict: bool = False, **kwargs: Any) -> FERDataset:
    """Load a dataset into memory.

    Args:
        kind: ``ckplus48`` (alias ``ck+48``), ``jaffe`` or ``folder``.
        root: its folder (for ``ckplus48`` / ``jaffe`` also the folder holding it).
        strict: raise :class:`~vitfer.data.io.DatasetError` on an undecodable file instead of
            skipping it with a :class:`SkippedFilesWarning`.
        **kwargs: ``transform`` for every kind; ``image_size``, ``interpolation``,
            ``subject_fn``, ``classes`` for ``folder`` (see :func:`load_image_folder`).

    Returns:
        FERDataset; ``dataset[i]`` is ``(float (C, H, W), label)``: C = 3 without a transform,
        the model's channels with a :func:`~vitfer.data.build_transforms` pipeline (see
        :class:`FERDataset` ``channels``).
    """
    key = kind.lower()
    if key not in _KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of ckplus48, jaffe, folder")
    return _KINDS[key](root, strict=strict, **kwargs)
