"""FER-2013 from its original CSV (``fer2013.csv``: columns ``emotion,pixels,Usage``).

Each row is one 48x48 grey face: ``emotion`` is the class index 0-6 (:data:`FER2013_CLASSES`:
angry, disgust, fear, happy, sad, surprise, neutral), ``pixels`` 2304 space-separated values
0-255 in row-major order, ``Usage`` the official part (``Training``, ``PublicTest``,
``PrivateTest``), stored per item in ``dataset.usage`` for ``make_split(ds, "official")``
(train = Training, val = PublicTest, test = PrivateTest). The columns are found by the header,
in any order; a file without ``Usage`` (Kaggle's ``train.csv``) loads with ``usage`` all None.

The file (about 300 MB) is streamed: rows are parsed one at a time with :mod:`csv` and numpy
into preallocated uint8 blocks of :data:`_BLOCK` rows, so memory stays close to the decoded
images (about 83 MB for the 35,887 rows). A bad row (wrong field or pixel count, a non-numeric
or out-of-range pixel, an unknown emotion or Usage) is skipped and reported with its line number
(``dataset.bad_rows``, ``load_report["bad_rows"]`` and one
:class:`~vitfer.data.SkippedFilesWarning`), or raises a :class:`~vitfer.data.io.DatasetError`
listing them with ``strict=True``.
"""
from __future__ import annotations

import csv
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .base import FERDataset, SkippedFilesWarning
from .expressions import FER2013_CLASSES
from .io import DatasetError
from .loading import report
from .messages import listing
from .sizes import check_interp, fit_image, parse_size, resolve_fit

__all__ = ["FER2013_USAGES", "FER2013_SIDE", "resolve_csv", "find_fer2013_csv", "load_fer2013"]

#: The Usage values of FER-2013, in official-split order (train, val, test).
FER2013_USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
#: Side of FER-2013's square images.
FER2013_SIDE = 48
_BLOCK = 4096
_USAGE_LOOKUP = {u.lower(): u for u in FER2013_USAGES}
_HEADER = "emotion,pixels,Usage"


def resolve_csv(root: str | os.PathLike) -> Path:
    """The FER-2013 CSV of ``root``: the file itself, or ``root/fer2013.csv``, or
    ``root/fer2013/fer2013.csv``; a DatasetError naming the places looked in otherwise."""
    path = Path(root).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "fer2013.csv", path / "fer2013" / "fer2013.csv"):
            if candidate.is_file():
                return candidate
        raise DatasetError(
            f"no fer2013.csv in {path} (nor in {path / 'fer2013'}); --data-dir must be the original FER-2013 "
            f"CSV ({_HEADER}) or the folder that holds it"
        )
    raise DatasetError(f"FER-2013 not found: {path} (--data-dir must be fer2013.csv or the folder that holds it)")


def _check_header(path: Path, header: list[str] | None) -> tuple[int, int, int | None, int]:
    """Column indices of ``emotion``, ``pixels`` and ``Usage`` (None without it) and the field
    count, from the header row; a DatasetError naming the file when it is not FER-2013's."""
    names = [h.strip().lower() for h in header] if header else []
    if "emotion" not in names or "pixels" not in names:
        shown = ",".join(header)[:80] if header else "(empty file)"
        raise DatasetError(f"{path} is not a FER-2013 CSV: line 1 is {shown!r}; expected the header {_HEADER}")
    return names.index("emotion"), names.index("pixels"), names.index("usage") if "usage" in names else None, len(names)


def find_fer2013_csv(root: str | os.PathLike) -> Path:
    """The CSV that ``load_fer2013(root)`` reads, checked by its header line alone (cheap: the
    rows are not read).

    Raises:
        DatasetError: no CSV there, it cannot be read, or its header is not FER-2013's.
    """
    path = resolve_csv(root)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read FER-2013 file {path}: {exc}") from exc
    _check_header(path, header)
    return path


def _parse_row(
    row: list[str], n_fields: int, ie: int, ip: int, iu: int | None, n_pixels: int
) -> tuple[int, np.ndarray, str | None] | str:
    """``(emotion, pixels uint8, usage)`` of a row, or the reason it is bad."""
    if len(row) != n_fields:
        return f"{len(row)} field(s), expected {n_fields}"
    emotion = row[ie].strip()
    if not emotion.isascii() or not emotion.isdigit() or int(emotion) >= len(FER2013_CLASSES):
        return f"unknown emotion {emotion!r} (expected 0-{len(FER2013_CLASSES) - 1})"
    usage = None
    if iu is not None:
        usage = _USAGE_LOOKUP.get(row[iu].strip().lower())
        if usage is None:
            return f"unknown Usage {row[iu].strip()!r} (expected {', '.join(FER2013_USAGES)})"
    text = row[ip].strip()
    if not text.isascii() or not text.replace(" ", "").isdigit():
        bad = next((t for t in text.split() if not (t.isascii() and t.isdigit())), text[:20])
        return f"non-numeric pixel value {bad!r}" if text else "no pixels"
    values = np.array(text.split(), dtype=np.int64)
    if values.size != n_pixels:
        return f"{values.size} pixel values, expected {n_pixels} ({FER2013_SIDE}x{FER2013_SIDE})"
    if values.max() > 255:
        return f"pixel value {int(values.max())} out of range 0-255"
    return int(emotion), values.astype(np.uint8), usage


def load_fer2013(
    root: str | os.PathLike,
    *,
    strict: bool = False,
    transform: Callable[..., Tensor] | None = None,
    image_size: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    fit: str | None = None,
) -> FERDataset:
    """Load FER-2013 from ``fer2013.csv`` (see the module docstring).

    Args:
        root: the CSV file, or a folder holding ``fer2013.csv`` (or ``fer2013/fer2013.csv``).
        strict: raise on a bad row instead of skipping it.
        transform: the dataset's transform.
        image_size, interpolation, fit: optional resizing at load time, as for
            :func:`~vitfer.data.load_image_folder` (None keeps 48x48).

    Returns:
        FERDataset with ``name="fer2013"``, classes :data:`FER2013_CLASSES`, 1 channel,
        ``usage`` per item, ``face_cropped=True``, ``paths`` ``"fer2013.csv:<line>"``,
        ``bad_rows`` (``(line, reason)`` pairs) and ``load_report``.

    Raises:
        DatasetError: no such file, a header without ``emotion`` and ``pixels``, no good row,
            or (``strict=True``) any bad row.
    """
    t0 = time.perf_counter()
    path = resolve_csv(root)
    size = parse_size(image_size)
    fit = resolve_fit(fit, image_size)
    check_interp(interpolation)
    n_pixels = FER2013_SIDE * FER2013_SIDE
    blocks: list[np.ndarray] = []
    block = np.empty((_BLOCK, n_pixels), dtype=np.uint8)
    filled = 0
    labels: list[int] = []
    usage: list[str | None] = []
    lines: list[int] = []
    bad: list[tuple[int, str]] = []
    n_rows = 0
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"cannot read FER-2013 file {path}: {exc}") from exc
    with f:
        reader = csv.reader(f)
        try:
            ie, ip, iu, n_fields = _check_header(path, next(reader, None))
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    continue
                n_rows += 1
                parsed = _parse_row(row, n_fields, ie, ip, iu, n_pixels)
                if isinstance(parsed, str):
                    bad.append((reader.line_num, parsed))
                    continue
                emotion, pixels, part = parsed
                if filled == _BLOCK:
                    blocks.append(block)
                    block = np.empty((_BLOCK, n_pixels), dtype=np.uint8)
                    filled = 0
                block[filled] = pixels
                filled += 1
                labels.append(emotion)
                usage.append(part)
                lines.append(reader.line_num)
        except csv.Error as exc:
            raise DatasetError(f"{path}, line {reader.line_num}: not valid CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path} is not a text CSV file: {exc}") from exc
    if bad:
        rows = listing([(f"line {line}", reason) for line, reason in bad], more=" (all of them in dataset.bad_rows)")
        if strict:
            raise DatasetError(f"{len(bad)} bad row(s) in {path} (strict=True):\n" + rows)
        warnings.warn(
            f"skipped {len(bad)} of {n_rows} row(s) of {path} that are not valid FER-2013 rows "
            f"(strict=True makes this an error):\n" + rows,
            SkippedFilesWarning,
            stacklevel=3,
        )
    if not labels:
        raise DatasetError(f"{path} holds no valid FER-2013 row ({n_rows} row(s), {len(bad)} bad)")
    blocks.append(block[:filled])
    flat = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    del blocks, block
    images = torch.from_numpy(flat).view(-1, 1, FER2013_SIDE, FER2013_SIDE)
    n_resized = 0
    if size is not None and size != (FER2013_SIDE, FER2013_SIDE):
        out = torch.empty((images.shape[0], 1, *size), dtype=torch.uint8)
        for i in range(images.shape[0]):
            im = fit_image(Image.fromarray(flat[i].reshape(FER2013_SIDE, FER2013_SIDE)), size, fit=fit,
                           interpolation=interpolation)
            out[i, 0] = torch.from_numpy(np.array(im, dtype=np.uint8))
        images, n_resized = out, images.shape[0]
    ds = FERDataset(
        images,
        labels,
        FER2013_CLASSES,
        paths=[f"{path.name}:{line}" for line in lines],
        transform=transform,
        name="fer2013",
        root=path,
        face_cropped=True,
        usage=usage if iu is not None else None,
    )
    ds.bad_rows = bad  # type: ignore[attr-defined]
    extra: dict[str, Any] = {"n_rows": n_rows, "n_bad_rows": len(bad), "bad_rows": list(bad), "n_skipped": len(bad)}
    report(ds, n_files=1, n_resized=n_resized, resize="image_size" if n_resized else None, fit=fit,
            seconds=time.perf_counter() - t0, **extra)
    return ds
