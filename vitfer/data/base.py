"""The in-memory dataset every loader returns: :class:`FERDataset`, and the loaders' shared
warning :class:`SkippedFilesWarning`.

Every file is decoded once, at load time, into one uint8 tensor ``(N, C, H, W)`` (C = 1 when all
images are grey, 3 otherwise), so an epoch costs no decoding; ``dataset[i]`` scales to ``[0, 1]``
and applies the dataset's ``transform``.

Channels: a pipeline from :func:`~vitfer.data.build_transforms` converts to the model's channel
count itself (grey or RGB, see :func:`~vitfer.data.to_channels`), so with one the dataset hands
over its stored channels (1 or 3). Without such a transform (None, or a callable of your own),
``dataset[i]`` has 3 channels, grey repeated, as it always had; ``dataset.channels = 1`` (or 3)
forces a channel count for any transform.

Face crops: ``dataset.face_cropped`` is True where every image is already cropped to the face
(``ckplus48``, ``jaffe``, ``fer2013``, :class:`~vitfer.data.SyntheticFaces`; a ``folder``
dataset only with ``face_cropped=True``). Such images should not lose their border to ImageNet's
centre crop: build their transforms with ``build_transforms(cfg, train=..., crop_pct=1.0)``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import Transform, item_generator, to_channels

__all__ = ["FERDataset", "SkippedFilesWarning", "STUDY_TEST_SIZE"]

#: Test-set size of the study's random split (781/200 on CK+48, 143/70 on JAFFE).
STUDY_TEST_SIZE: dict[str, int] = {"ckplus48": 200, "jaffe": 70}

_KEEP: Any = object()  # sentinel: keep the parent's transform in FERDataset.subset


class SkippedFilesWarning(UserWarning):
    """Some files of a dataset could not be decoded and were left out.

    The message alone says it all (for a command line to print without a traceback): the
    folder, how many files were skipped and the first few with their reasons; the full list is
    ``dataset.skipped``.
    """



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
            for datasets with parts; ``preprocess`` (the load-time step's label, e.g.
            ``"face-cropped"``), ``n_preprocessed`` and ``n_preprocess_skipped`` (images it
            kept and refused) with a load-time step; ``n_rows``, ``n_bad_rows``, ``bad_rows``
            for CSV datasets. A view (:meth:`subset`) keeps the report of the whole dataset.
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

