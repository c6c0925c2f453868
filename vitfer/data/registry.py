"""The dataset kinds by name: :func:`load_dataset` loads one, :func:`find_dataset` finds where one
is without loading it.

==============  ==========================================================================
kind            ``root``
==============  ==========================================================================
``ckplus48``    the CK+48 folder (:mod:`vitfer.data.ckplus48`), or the folder holding
                ``ckplus48/``; alias ``ck+48``
``jaffe``       the JAFFE folder (:mod:`vitfer.data.jaffe`), or the folder holding ``jaffe/``
``folder``      a folder of class folders or part folders (:mod:`vitfer.data.folder`); with
                ``labels=``, the dataset folder or None (:mod:`vitfer.data.labels`)
``labels``      a label file, CSV ``path,label[,subject]`` (:mod:`vitfer.data.labels`)
``fer2013``     ``fer2013.csv``, or a folder holding it or ``fer2013/fer2013.csv``
                (:mod:`vitfer.data.fer2013`); alias ``fer-2013``
==============  ==========================================================================
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .base import FERDataset
from .ckplus48 import load_ckplus48, scan_ckplus48
from .fer2013 import find_fer2013_csv, load_fer2013
from .folder import load_image_folder, scan_image_folder
from .io import DatasetError
from .jaffe import load_jaffe, scan_jaffe
from .labels import load_label_file, scan_label_file

__all__ = ["DATASET_KINDS", "load_dataset", "find_dataset"]

#: The dataset kinds :func:`load_dataset` takes (aliases ``ck+48`` and ``fer-2013`` too).
DATASET_KINDS: tuple[str, ...] = ("ckplus48", "jaffe", "folder", "labels", "fer2013")

_ALIASES = {"ck+48": "ckplus48", "fer-2013": "fer2013"}
_LOADERS: dict[str, Callable[..., FERDataset]] = {
    "ckplus48": load_ckplus48,
    "jaffe": load_jaffe,
    "folder": load_image_folder,
    "labels": load_label_file,
    "fer2013": load_fer2013,
}
# What each kind looks for, without decoding an image; raises DatasetError (or OSError) when
# load_dataset(kind, root) would not find its data there.
_FINDERS: dict[str, Callable[[Any], Any]] = {
    "ckplus48": scan_ckplus48,
    "jaffe": scan_jaffe,
    "folder": scan_image_folder,
    "labels": scan_label_file,
    "fer2013": find_fer2013_csv,
}


def _kind(kind: str) -> str:
    key = str(kind).lower()
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    return key


def load_dataset(
    kind: str, root: str | os.PathLike | None = None, *, strict: bool = False, **kwargs: Any
) -> FERDataset:
    """Load a dataset into memory.

    Args:
        kind: ``ckplus48`` (alias ``ck+48``), ``jaffe``, ``folder``, ``labels`` or ``fer2013``
            (alias ``fer-2013``).
        root: its folder (for ``ckplus48`` / ``jaffe`` also the folder holding it); for
            ``labels`` the label file; for ``fer2013`` the ``fer2013.csv`` file or a folder
            holding it (or ``fer2013/fer2013.csv``); for ``folder`` with ``labels=``, the
            dataset folder or None (a relative label path is relative to the current folder,
            else to ``root``: :func:`~vitfer.data.labels.resolve_label_path`).
        strict: raise :class:`~vitfer.data.io.DatasetError` on an undecodable file (a bad CSV
            row for ``fer2013``) instead of skipping it with a
            :class:`~vitfer.data.SkippedFilesWarning`.
        **kwargs: ``transform``, ``image_size``, ``interpolation``, ``fit`` for every kind;
            ``preprocess`` (a load-time step such as :class:`~vitfer.data.faces.FaceCropper`)
            for every kind but ``fer2013``; ``subject_fn``, ``subject_pattern``, ``classes``,
            ``face_cropped`` for ``folder`` and ``labels``; ``labels`` (a label file) for
            ``folder`` (see :func:`~vitfer.data.load_image_folder`,
            :func:`~vitfer.data.load_label_file`, :func:`~vitfer.data.load_fer2013`).

    Returns:
        FERDataset; ``dataset[i]`` is ``(float (C, H, W), label)``: C = 3 without a transform,
        the model's channels with a :func:`~vitfer.data.build_transforms` pipeline (see
        :class:`~vitfer.data.FERDataset` ``channels``). ``dataset.load_report`` says what
        loading did.
    """
    key = _kind(kind)
    if root is None and not (key == "folder" and kwargs.get("labels") is not None):
        what = "label file" if key == "labels" else "file" if key == "fer2013" else "folder"
        raise DatasetError(f"dataset {kind!r} needs its {what} (--data-dir): load_dataset({kind!r}, None) has none")
    return _LOADERS[key](root, strict=strict, **kwargs)


def find_dataset(kind: str, candidates: Sequence[str | os.PathLike | None]) -> Path | None:
    """The first of ``candidates`` from which ``load_dataset(kind, candidate)`` would load, or None.

    Cheap: nothing is decoded. Each candidate is checked by the files its loader looks for:
    CK+48's seven class folders and ``S###_`` file names, JAFFE's file names, a folder's class
    (or part) folders holding image files, a label file's rows and listed files, FER-2013's CSV
    (``fer2013.csv``, ``DIR/fer2013.csv`` or ``DIR/fer2013/fer2013.csv``) and its header line. A
    candidate that passes can still fail to load when its images do not decode.

    Args:
        kind: a dataset kind of :func:`load_dataset` (aliases too).
        candidates: folders (or files) to try, in order; None entries are passed over.

    Returns:
        The first candidate that holds ``kind``, as a ``Path`` (as given, ``~`` expanded), or
        None when none does.
    """
    finder = _FINDERS[_kind(kind)]
    for candidate in candidates:
        if candidate is None:
            continue
        path = Path(candidate).expanduser()
        try:
            finder(path)
        except (DatasetError, OSError):
            continue
        return path
    return None
