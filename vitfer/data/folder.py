"""Any folder of class folders: ``<root>/<class>/**/<image>`` (``load_dataset("folder", root)``).

Classes are the sub-folder names, sorted; the subject is captured from the file name by
``subject_pattern`` (``--subject-pattern``) or given by ``subject_fn(path)``, else None. The
common layout ``<root>/train/<class>/``, ``<root>/test/<class>/`` (optionally ``val/`` or
``validation/``) is detected: every part is loaded with one class list and each item's part
recorded in ``dataset.usage`` (for ``make_split(ds, "official")``). With ``labels=`` a label file
gives the images and classes instead (:mod:`vitfer.data.labels`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image
from torch import Tensor

from .base import FERDataset
from .files import FileListing, class_folders, image_files, require_dir
from .io import DatasetError
from .labels import load_label_file, resolve_label_path
from .loading import apply_subject_pattern, build
from .messages import looks_like_jaffe, short_list
from .sizes import check_interp, parse_size, resolve_fit

__all__ = ["PART_FOLDERS", "part_folders", "scan_image_folder", "load_image_folder"]

#: Part-folder names of the ``root/<part>/<class>/`` layout, lower case, and the official part
#: each stands for (``make_split(ds, "official")``).
PART_FOLDERS: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


def part_folders(root: Path, folders: Sequence[Path]) -> list[Path] | None:
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
    if not all(class_folders(p) for p in folders):
        return None
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(folders, key=lambda p: order[PART_FOLDERS[p.name.lower()]])


def scan_image_folder(root: str | os.PathLike, *, classes: Sequence[str] | None = None) -> FileListing:
    """The image files of a folder of class folders (or of part folders), their labels and parts,
    nothing decoded (subjects all None).

    Raises:
        DatasetError: no such folder, no class folders (with a hint where it looks like JAFFE), a
            class of ``classes`` not found, or an empty class folder.
    """
    root = require_dir(Path(root).expanduser(), "dataset folder")
    parts = part_folders(root, class_folders(root))
    sources = parts if parts is not None else [root]
    by_name: dict[str, list[Path]] = {}  # class name -> its folder in each source
    for src in sources:
        for p in class_folders(src):
            by_name.setdefault(p.name, []).append(p)
    if classes is not None:
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise DatasetError(
                f"class folder(s) {missing} not found in {root}; found {len(by_name)} folder(s): "
                f"{short_list(sorted(by_name))}"
            )
        names = list(classes)
    else:
        names = sorted(by_name)
    if not names:
        flat = image_files(root, recursive=False)
        found = f"{len(flat)} image file(s) ({short_list([p.name for p in flat])})" if flat else "no sub-folders"
        hint = "\n  hint: it looks like JAFFE: use --dataset jaffe / load_dataset(\"jaffe\", root)"
        raise DatasetError(
            f"no class folders in {root} (expected <root>/<class>/<image files>); found {found}"
            + (hint if looks_like_jaffe(flat) else "")
        )
    listing = FileListing(root, [], [], [], names, usage=[] if parts is not None else None)
    for src in sources:
        for k, cls in enumerate(names):
            folder = src / cls
            if parts is not None and not folder.is_dir():
                continue  # a class may be absent from one part
            found_files = image_files(folder, recursive=True)
            if not found_files:
                raise DatasetError(f"class folder {folder} holds no image files")
            listing.files += found_files
            listing.labels += [k] * len(found_files)
            if listing.usage is not None:
                listing.usage += [src.name] * len(found_files)
    listing.subjects = [None] * len(listing.files)
    return listing


def load_image_folder(
    root: str | os.PathLike | None,
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
    ``dataset.usage``, which ``make_split(ds, "official")`` uses. With ``labels`` the images and
    classes come from a label file instead (see :func:`~vitfer.data.load_label_file`).

    Sizes: with ``image_size`` every image is resized right after decoding, so memory stays
    ``N x image_size`` whatever the photos. ``fit="crop"`` (the default for an int size): scale
    the shorter side to the size (the covering scale for ``(H, W)``) and take the centre crop,
    keeping the aspect ratio; ``fit="stretch"`` (the default for an ``(H, W)`` tuple, as before,
    and torchvision's ``Resize`` convention) resizes to ``(H, W)`` directly. Without
    ``image_size`` images keep their size; when sizes differ but one size covers at least
    :data:`~vitfer.data.DOMINANT_SIZE_SHARE` (90 %) of the images, the others (a stray photo, a
    file whose header declares another size) are resized to it with ``fit`` (default crop) and
    logged; otherwise loading fails with an error naming ``--img-size``. Grey and colour are
    kept: an all-grey folder is stored with 1 channel, a folder with any colour image as RGB.

    Args:
        root: folder of class folders (or of part folders); with ``labels``, the dataset folder
            (``--data-dir``) or None.
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
        labels: a label file (CSV ``path,label[,subject]``, ``--labels``): load the images it
            lists instead of class folders (see :func:`~vitfer.data.load_label_file`; the image
            paths in it are relative to the label file's folder). An absolute path is taken as
            it is; a relative one is relative to the current folder, or, when it is not found
            there, to ``root`` (see :func:`~vitfer.data.labels.resolve_label_path`).
        transform: the dataset's transform.
        face_cropped: the images are already tight face crops (sets ``dataset.face_cropped``;
            evaluate them with ``crop_pct=1.0``).
        preprocess: a load-time step on each decoded image, e.g.
            :class:`~vitfer.data.faces.FaceCropper` (see :mod:`vitfer.data.loading`).

    Returns:
        FERDataset with ``name="folder"`` (``"labels"`` with ``labels``), ``load_report``
        filled (see :class:`~vitfer.data.FERDataset`).
    """
    t0 = time.perf_counter()
    if labels is not None:
        return load_label_file(
            resolve_label_path(labels, root), strict=strict, image_size=image_size, interpolation=interpolation,
            fit=fit, subject_fn=subject_fn, subject_pattern=subject_pattern, classes=classes, transform=transform,
            face_cropped=face_cropped, preprocess=preprocess,
        )
    if root is None:
        raise DatasetError("the folder dataset needs its folder (--data-dir), or a label file (--labels)")
    check_interp(interpolation)
    size = parse_size(image_size)
    fit = resolve_fit(fit, image_size)
    if subject_fn is not None and subject_pattern is not None:
        raise ValueError("pass subject_fn or subject_pattern, not both")
    found = scan_image_folder(root, classes=classes)
    if subject_pattern is not None:
        subjects = apply_subject_pattern(subject_pattern, found.files, found.root)
    else:
        subjects = [subject_fn(p) if subject_fn else None for p in found.files]
    return build(
        "folder", found.root, found.files, found.labels, subjects, found.classes,
        strict=strict, image_size=size, interpolation=interpolation, fit=fit, transform=transform,
        face_cropped=face_cropped, usage=found.usage, preprocess=preprocess, t0=t0,
    )
