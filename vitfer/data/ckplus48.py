"""CK+48: ``<root>/<class>/S<subject>_<sequence>_<frame>.png``, 7 classes, 48x48 grey faces.

The 7 class folders are :data:`~vitfer.data.CKPLUS48_CLASSES`; the subject is the ``S###``
prefix of a file name. ``root`` may also be the folder that holds ``ckplus48/``
(``VITFER_DATA_DIR``). A folder that is not this layout raises a
:class:`~vitfer.data.io.DatasetError` that says what was expected, what was found and, where it
looks like another layout, how to load it.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image
from torch import Tensor

from .base import STUDY_TEST_SIZE, FERDataset
from .expressions import CKPLUS48_CLASSES
from .files import FileListing, class_folders, image_files, resolve_root
from .io import DatasetError
from .loading import build
from .messages import not_ckplus48_message
from .sizes import check_interp, parse_size, resolve_fit

__all__ = ["CKPLUS48_CLASSES", "scan_ckplus48", "load_ckplus48"]

_CK_SUBJECT = re.compile(r"^(S\d+)_")


def scan_ckplus48(root: str | os.PathLike) -> FileListing:
    """CK+48's files, classes and subjects under ``root`` (or ``root/ckplus48``), nothing decoded.

    Raises:
        DatasetError: not the CK+48 layout (the message says what was found), an empty class
            folder, or a file name without the ``S<digits>_`` subject.
    """
    folder = resolve_root(root, "ckplus48")
    names = [p.name for p in class_folders(folder)]
    if names != list(CKPLUS48_CLASSES):
        raise DatasetError(not_ckplus48_message(folder, names))
    files: list[Path] = []
    labels: list[int] = []
    subjects: list[str | None] = []
    for k, cls in enumerate(CKPLUS48_CLASSES):
        found = image_files(folder / cls, recursive=False)
        if not found:
            raise DatasetError(f"class folder {folder / cls} holds no image files")
        for p in found:
            m = _CK_SUBJECT.match(p.name)
            if m is None:
                raise DatasetError(f"CK+48 file name {p} does not start with the subject (S<digits>_)")
            subjects.append(m.group(1))
        files += found
        labels += [k] * len(found)
    return FileListing(folder, files, labels, subjects, CKPLUS48_CLASSES)


def load_ckplus48(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    transform: Callable[..., Tensor] | None = None,
    image_size: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    fit: str | None = None,
    preprocess: Callable[[Image.Image], tuple[Image.Image | None, str]] | None = None,
) -> FERDataset:
    """Load CK+48: ``<root>/<class>/S<subject>_<seq>_<frame>.png``, 7 classes, 48x48 grey.

    Args:
        root: the CK+48 folder, or a folder holding ``ckplus48/``.
        strict: raise on an undecodable file instead of skipping it.
        transform: the dataset's transform.
        image_size, interpolation, fit: optional resizing at load time, as for
            :func:`~vitfer.data.load_image_folder` (None keeps the native size).
        preprocess: a load-time step on each decoded image (see :mod:`vitfer.data.loading`).

    Returns:
        FERDataset (981 images, 118 subjects for the public CK+48), classes
        :data:`~vitfer.data.CKPLUS48_CLASSES`, subject = the ``S###`` prefix,
        ``default_test_size=200``.
    """
    t0 = time.perf_counter()
    found = scan_ckplus48(root)
    return build(
        "ckplus48", found.root, found.files, found.labels, found.subjects, found.classes,
        strict=strict, transform=transform, default_test_size=STUDY_TEST_SIZE["ckplus48"],
        image_size=parse_size(image_size), interpolation=check_interp(interpolation), fit=resolve_fit(fit, image_size),
        face_cropped=True, preprocess=preprocess, t0=t0,
    )
