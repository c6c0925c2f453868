"""The texts of the loaders' errors and warnings: what was expected, what was found, and a hint.

A folder that is not the layout asked for (a class-folder dataset given as ``ckplus48`` or
``jaffe``, say) gets a message that says what was expected, what was found (at most
:data:`MAX_LISTED` names, then "and N more") and, where the folder looks like another layout,
how to load it (``--dataset folder`` on the command line, ``load_dataset("folder", root)`` in
Python). Messages name paths; the loaders raise them as :class:`~vitfer.data.io.DatasetError`
or warn with them (:class:`~vitfer.data.SkippedFilesWarning`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .expressions import CKPLUS48_CLASSES, JAFFE_CODES
from .files import class_folders, has_images, image_files

__all__ = [
    "MAX_LISTED",
    "FOLDER_HINT",
    "JAFFE_PATTERN",
    "short_list",
    "listing",
    "found",
    "looks_like_jaffe",
    "layout_hints",
    "not_ckplus48_message",
    "no_jaffe_files_message",
    "bad_jaffe_names_message",
    "skipped_message",
]

#: Names listed in a message before "and N more".
MAX_LISTED = 5
#: How to load a folder of class folders, for a hint.
FOLDER_HINT = 'load it with --dataset folder (command line) or load_dataset("folder", root) (Python)'
#: JAFFE's file names, for messages.
JAFFE_PATTERN = f"<subject>.<EXPR><n>.<id>.<ext> with EXPR one of {' '.join(JAFFE_CODES)} (e.g. KA.AN1.39.tiff)"


def short_list(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``; ``(none)`` for no names."""
    names = list(names)
    if not names:
        return "(none)"
    head = ", ".join(names[:limit])
    return head if len(names) <= limit else f"{head} and {len(names) - limit} more"


def listing(items: Sequence[tuple[object, str]], *, more: str = "", limit: int = MAX_LISTED) -> str:
    """Indented ``  item: reason`` lines for the first ``limit`` pairs, then ``  ... and N more``
    (followed by ``more``, e.g. where the full list is) when there are more."""
    lines = [f"  {item}: {reason}" for item, reason in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more{more}")
    return "\n".join(lines)


def found(root: Path, folders: Sequence[Path]) -> str:
    """What ``root`` holds: its sub-folders and top-level files, as short lists."""
    files = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    parts = []
    if folders:
        parts.append(f"{len(folders)} sub-folder(s): {short_list([p.name for p in folders])}")
    if files:
        parts.append(f"{len(files)} file(s): {short_list(files)}")
    return "; ".join(parts) if parts else "nothing"


def looks_like_jaffe(files: Sequence[Path]) -> bool:
    """Whether image files are named like JAFFE's (``<subject>.<EXPR><n>.<id>.<ext>``, known EXPR)."""
    def ok(p: Path) -> bool:
        fields = p.name.split(".")
        return len(fields) >= 3 and bool(fields[0]) and fields[1][:2].upper() in JAFFE_CODES

    return bool(files) and all(ok(p) for p in files)


def layout_hints(root: Path, folders: Sequence[Path], kind: str) -> list[str]:
    """Suggestions for a folder that is not the ``kind`` layout, by what it looks like."""
    hints = []
    names = [p.name for p in folders]
    if kind != "ckplus48" and names == list(CKPLUS48_CLASSES):
        hints.append('it looks like CK+48: use --dataset ckplus48 / load_dataset("ckplus48", root)')
    elif any(has_images(f) for f in folders):
        hints.append(f"if its sub-folders are classes, {FOLDER_HINT}")
    if kind != "jaffe" and looks_like_jaffe(image_files(root, recursive=False)):
        hints.append('if it is JAFFE, use --dataset jaffe / load_dataset("jaffe", root)')
    return hints


def _with_hints(msg: str, hints: Sequence[str]) -> str:
    return msg + "".join(f"\n  hint: {h}" for h in hints)


def not_ckplus48_message(root: Path, names: Sequence[str]) -> str:
    """Error text for a ``ckplus48`` folder whose class folders are not :data:`CKPLUS48_CLASSES`."""
    folders = class_folders(root)
    msg = (
        f"{root} is not a CK+48 folder: expected the {len(CKPLUS48_CLASSES)} class folders "
        f"{', '.join(CKPLUS48_CLASSES)}; found {found(root, folders)}"
    )
    missing = [c for c in CKPLUS48_CLASSES if c not in names]
    extra = [n for n in names if n not in CKPLUS48_CLASSES]
    if len(missing) <= len(CKPLUS48_CLASSES) // 2:  # mostly CK+48: say what differs
        if missing:
            msg += f"; missing: {short_list(missing)}"
        if extra:
            msg += f"; unexpected: {short_list(extra)}"
    return _with_hints(msg, layout_hints(root, folders, "ckplus48"))


def no_jaffe_files_message(root: Path) -> str:
    """Error text for a ``jaffe`` folder without image files at its top level."""
    folders = class_folders(root)
    msg = (
        f"JAFFE folder {root} holds no image files: expected a flat folder of {JAFFE_PATTERN}; "
        f"found {found(root, folders)}"
    )
    return _with_hints(msg, layout_hints(root, folders, "jaffe"))


def bad_jaffe_names_message(root: Path, bad: Sequence[tuple[Path, str]], n_files: int) -> str:
    """Error text for JAFFE files whose names do not give a subject and an expression."""
    msg = f"{len(bad)} of {n_files} image file(s) in JAFFE folder {root} are not named {JAFFE_PATTERN}:\n"
    msg += listing(bad)
    if len(bad) == n_files:
        msg = _with_hints(msg, layout_hints(root, class_folders(root), "jaffe") or ["this does not look like JAFFE"])
    return msg


def skipped_message(source: Path, skipped: Sequence[tuple[Path, str]], n_files: int) -> str:
    """The text of a :class:`~vitfer.data.SkippedFilesWarning`: folder, count, the first few
    files and reasons."""
    return (
        f"skipped {len(skipped)} of {n_files} image file(s) in {source} that cannot be decoded or used "
        f"(strict=True makes this an error):\n" + listing(skipped, more=" (all of them in dataset.skipped)")
    )
