"""Label files: a CSV of ``path,label[,subject]`` rows (``--labels``), for images not laid out in
class folders.

The header row is optional (recognised when it names the columns: ``path``/``file``/
``filename``/``image``, ``label``/``class``/``expression``/``emotion``, and
``subject``/``person``; any order). Image paths are relative to the label file's folder
(absolute paths work too); blank lines and lines starting with ``#`` are ignored. Loaded with
``load_dataset("labels", "labels.csv")``, or ``load_dataset("folder", root, labels=...)`` (see
:func:`resolve_label_path` for where a relative label path is looked for).
"""
from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

from .base import FERDataset
from .files import FileListing
from .io import DatasetError
from .loading import apply_subject_pattern, build
from .messages import short_list
from .sizes import check_interp, parse_size, resolve_fit

__all__ = ["LABEL_LAYOUT", "natural_key", "read_label_file", "resolve_label_path", "scan_label_file", "load_label_file"]

_PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "img")
_LABEL_COLUMNS = ("label", "class", "expression", "emotion")
_SUBJECT_COLUMNS = ("subject", "subject_id", "person", "identity")
#: A label file's layout, for messages.
LABEL_LAYOUT = "path,label[,subject] (a header row naming these columns is optional)"


def natural_key(name: str) -> tuple[int, Any]:
    """Sort key: integers by value (``2`` before ``10``), then other names alphabetically."""
    return (0, int(name)) if name.isdigit() else (1, name)


def read_label_file(csv_path: Path) -> list[tuple[int, str, str, str | None]]:
    """Rows of a label file: ``(line, path, label, subject or None)``; errors name file and line."""
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
                                f"expected {LABEL_LAYOUT}"
                            )
                        columns = (pick[0], pick[1], pick[2])
                        n_columns = len(cells)
                        continue
                    if len(cells) not in (2, 3):
                        raise DatasetError(
                            f"label file {csv_path}, line {line}: {len(cells)} column(s); expected {LABEL_LAYOUT}"
                        )
                    columns = (0, 1, 2 if len(cells) == 3 else None)
                    n_columns = len(cells)
                if len(cells) != n_columns:
                    raise DatasetError(
                        f"label file {csv_path}, line {line}: {len(cells)} column(s) where the file has "
                        f"{n_columns}; expected {LABEL_LAYOUT}"
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
        raise DatasetError(f"label file {csv_path} has no rows; expected {LABEL_LAYOUT}")
    return rows




def resolve_label_path(labels: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Where the label file ``labels`` is, for ``load_dataset("folder", root, labels=labels)``.

    An absolute path is taken as it is. A relative path is relative to the current folder (as
    every path on a command line); only when it does not exist there but ``root/labels`` does
    (the earlier meaning: relative to ``root``) is that taken. Both existing and being different
    files is an error naming both; neither existing is an error naming the places looked in.

    Args:
        labels: the label file (``--labels``).
        root: the dataset folder (``--data-dir``), or None.

    Raises:
        DatasetError: the file is not found, or the relative path is ambiguous.
    """
    given = Path(labels).expanduser()
    if given.is_absolute() or root is None:
        if not given.exists():
            where = "" if given.is_absolute() else f" (relative to the current folder {Path.cwd()})"
            raise DatasetError(f"--labels: label file not found: {given}{where}")
        return given
    under_root = Path(root).expanduser() / given
    if given.exists() and under_root.exists():
        if given.resolve() != under_root.resolve():
            raise DatasetError(
                f"--labels {labels}: both {given} (relative to the current folder) and {under_root} (under "
                f"--data-dir {root}) exist; pass the one you mean as an absolute path"
            )
        return given
    if given.exists():
        return given
    if under_root.exists():
        return under_root
    raise DatasetError(
        f"--labels: label file not found: {given} (relative to the current folder {Path.cwd()}), nor {under_root} "
        f"(under --data-dir {root})"
    )


def scan_label_file(csv_path: str | os.PathLike, *, classes: Sequence[str] | None = None) -> FileListing:
    """The files a label file lists, their labels and subjects, nothing decoded.

    Listed files that do not exist are in ``missing`` (the loader skips and names them).

    Raises:
        DatasetError: no such file, a folder, a malformed row (naming its line), a label outside
            ``classes``, or none of the listed files exists.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.exists():
        raise DatasetError(f"--labels: label file not found: {csv_path}")
    if csv_path.is_dir():
        raise DatasetError(f"--labels: {csv_path} is a folder; pass the label file (a CSV of {LABEL_LAYOUT})")
    rows = read_label_file(csv_path)
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
        names = sorted({label for _, _, label, _ in rows}, key=natural_key)
        index = {c: k for k, c in enumerate(names)}
    found = FileListing(base, [], [], [], names)
    for line, rel, label, subject in rows:
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            found.missing.append((path, f"file not found (line {line} of {csv_path.name})"))
            continue
        found.files.append(path)
        found.labels.append(index[label])
        found.subjects.append(subject)
    if not found.files:
        raise DatasetError(
            f"none of the {len(rows)} file(s) listed in {csv_path} exists (paths are relative to {base}); "
            f"first: {short_list([str(p) for p, _ in found.missing], 3)}"
        )
    return found


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

    See the module docstring for the layout. Classes are the distinct labels, sorted (numbers by
    value), or ``classes`` in that order. The subject column, when there is one, gives the
    subjects (an empty cell: unknown); ``subject_pattern`` / ``subject_fn`` take precedence. A
    listed file that does not exist or does not decode is skipped and named
    (``dataset.skipped``, one :class:`~vitfer.data.SkippedFilesWarning`; an error with
    ``strict=True``). An empty path or label, a row with another column count or a header with
    unknown columns is a :class:`~vitfer.data.io.DatasetError` naming the file and line.

    Args:
        csv_path: the label file (``--labels``), absolute or relative to the current folder.
        strict, image_size, interpolation, fit, subject_fn, subject_pattern, transform,
            face_cropped, preprocess: as for :func:`~vitfer.data.load_image_folder`.
        classes: class names in label order; a label outside them is an error naming its line.

    Returns:
        FERDataset with ``name="labels"`` and ``root`` the CSV's folder.
    """
    t0 = time.perf_counter()
    size = parse_size(image_size)
    fit = resolve_fit(fit, image_size)
    check_interp(interpolation)
    if subject_fn is not None and subject_pattern is not None:
        raise ValueError("pass subject_fn or subject_pattern, not both")
    found = scan_label_file(csv_path, classes=classes)
    subjects = found.subjects
    if subject_pattern is not None:
        subjects = apply_subject_pattern(subject_pattern, found.files, Path(csv_path).expanduser())
    elif subject_fn is not None:
        subjects = [subject_fn(p) for p in found.files]
    return build(
        "labels", found.root, found.files, found.labels, subjects, found.classes,
        strict=strict, image_size=size, interpolation=interpolation, fit=fit, transform=transform,
        face_cropped=face_cropped, pre_skipped=found.missing, preprocess=preprocess, t0=t0,
    )
