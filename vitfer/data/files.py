"""Finding a dataset's files without decoding them: the folder checks, image listings and class
folders that every folder loader (and :func:`~vitfer.data.find_dataset`) uses.

Hidden files and folders (``.DS_Store``, ``._x.png``, ``.git/``) and files without an image
extension (:data:`~vitfer.data.io.IMAGE_EXTENSIONS`) are never listed.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .io import DatasetError, is_image_file

__all__ = ["FileListing", "require_dir", "resolve_root", "image_files", "class_folders", "has_images"]


@dataclass
class FileListing:
    """What a loader found before decoding anything: the files and what each one is.

    Attributes:
        root: the folder (or label file's folder) the dataset comes from.
        files: the image files, in dataset order.
        labels: class index of each file.
        subjects: subject of each file (None where unknown).
        classes: class names (label ``k`` is ``classes[k]``).
        usage: part of each file (``train``, ...) for datasets with parts, else None.
        missing: listed files that do not exist, ``(path, reason)`` (label files).
    """

    root: Path
    files: list[Path]
    labels: list[int]
    subjects: list[str | None]
    classes: Sequence[str]
    usage: list[str | None] | None = None
    missing: list[tuple[Path, str]] = field(default_factory=list)


def require_dir(path: Path, what: str) -> Path:
    """``path`` when it is a folder; a DatasetError naming ``what`` and the path otherwise."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a folder: {path}")
    return path


def resolve_root(root: str | os.PathLike, sub: str) -> Path:
    """``root`` itself, or ``root/sub`` when ``root`` holds it (e.g. ``VITFER_DATA_DIR``)."""
    root = Path(root).expanduser()
    if (root / sub).is_dir():
        return root / sub
    return require_dir(root, f"{sub} folder")


def image_files(folder: Path, recursive: bool) -> list[Path]:
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


def class_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` that are not hidden, sorted by name."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def has_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image file at any depth (stops at the first)."""
    return any(is_image_file(p) and p.is_file() for p in folder.rglob("*"))
