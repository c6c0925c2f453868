"""JAFFE: a flat folder of ``<subject>.<EXPR><n>.<id>.tiff`` (``KA.AN1.39.tiff``), 213 photos.

The label is the first two letters of the second field (see :data:`~vitfer.data.JAFFE_CODES`),
the subject the first field. ``root`` may also be the folder that holds ``jaffe/``
(``VITFER_DATA_DIR``). A name with an unknown expression code, or a folder without image files,
raises a :class:`~vitfer.data.io.DatasetError` naming the files (and, where the folder looks like
another layout, how to load it).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image
from torch import Tensor

from .base import STUDY_TEST_SIZE, FERDataset
from .expressions import JAFFE_CLASSES, JAFFE_CODES
from .files import FileListing, image_files, resolve_root
from .io import DatasetError
from .loading import build
from .messages import bad_jaffe_names_message, no_jaffe_files_message
from .sizes import check_interp, parse_size, resolve_fit

__all__ = ["JAFFE_CLASSES", "JAFFE_CODES", "scan_jaffe", "load_jaffe"]


def scan_jaffe(root: str | os.PathLike) -> FileListing:
    """JAFFE's files, labels and subjects under ``root`` (or ``root/jaffe``), by their names.

    Raises:
        DatasetError: no image files, or a name without the three fields or with an unknown code
            (the message names every such file, up to a few).
    """
    folder = resolve_root(root, "jaffe")
    files = image_files(folder, recursive=False)
    if not files:
        raise DatasetError(no_jaffe_files_message(folder))
    codes = list(JAFFE_CODES)
    labels: list[int] = []
    subjects: list[str | None] = []
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
        raise DatasetError(bad_jaffe_names_message(folder, bad, len(files)))
    return FileListing(folder, files, labels, subjects, JAFFE_CLASSES)


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
            :func:`~vitfer.data.load_image_folder` (None keeps the native size).
        preprocess: a load-time step on each decoded image (see :mod:`vitfer.data.loading`),
            e.g. :class:`~vitfer.data.faces.FaceCropper` keeping the face: JAFFE's 256x256
            photos show head and shoulders, the face about half their width; give
            ``image_size`` with it when its crops differ in size.

    Returns:
        FERDataset (213 images, 10 subjects for the public JAFFE), classes
        :data:`~vitfer.data.JAFFE_CLASSES`, label from the code, subject = the first field,
        ``default_test_size=70``. Palette (``P``) files are converted with ``.convert("L")``.

    Raises:
        DatasetError: a name without the three fields or with an unknown code (naming the file),
            or no image files.
    """
    t0 = time.perf_counter()
    found = scan_jaffe(root)
    return build(
        "jaffe", found.root, found.files, found.labels, found.subjects, found.classes,
        strict=strict, transform=transform, default_test_size=STUDY_TEST_SIZE["jaffe"],
        image_size=parse_size(image_size), interpolation=check_interp(interpolation), fit=resolve_fit(fit, image_size),
        face_cropped=True, preprocess=preprocess, t0=t0,
    )
