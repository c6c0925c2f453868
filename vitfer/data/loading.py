"""What every file-based loader shares once it has its file list: decoding (with an optional
load-time step such as a face crop), sizes, the :class:`~vitfer.data.FERDataset`, and the report
of what loading did (``dataset.load_report``, one INFO line of this module's logger).

Bad input: a file with an image extension that does not decode is skipped, recorded in
``dataset.skipped`` as ``(path, reason)`` and reported by one
:class:`~vitfer.data.SkippedFilesWarning` listing every skipped file, or, with ``strict=True``,
raises a :class:`~vitfer.data.io.DatasetError` naming them.

Load-time steps (``preprocess``): a callable ``step(image) -> (image, "")`` or
``(None, reason)`` run on each decoded image before it is resized (e.g.
:class:`~vitfer.data.faces.FaceCropper`); an image it refuses is skipped with its reason. The
load line and report say how many images it changed and refused, in its own words when it has a
``label`` attribute (``"face-cropped"``) and a ``skip_label`` one (``"for no face"``).
"""
from __future__ import annotations

import logging
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .base import FERDataset, SkippedFilesWarning
from .io import DatasetError, ImageDecodeError, image_to_tensor, load_image
from .messages import MAX_LISTED, listing, skipped_message
from .sizes import check_native_memory, fit_image, unify_sizes

__all__ = [
    "Preprocess",
    "PREPROCESS_LABEL",
    "PREPROCESS_SKIP_LABEL",
    "Decoded",
    "decode_all",
    "stack",
    "report",
    "build",
    "subject_matcher",
    "apply_subject_pattern",
]

logger = logging.getLogger(__name__)

#: A load-time step: ``step(image) -> (image, "")``, or ``(None, reason)`` to skip the image.
Preprocess = Callable[[Image.Image], "tuple[Image.Image | None, str]"]
#: How the load line names the images a step without a ``label`` attribute kept.
PREPROCESS_LABEL = "preprocessed"
#: How the load line names the images a step without a ``skip_label`` attribute refused.
PREPROCESS_SKIP_LABEL = "by the preprocess step"


@dataclass
class Decoded:
    """What :func:`decode_all` made of a file list."""

    kept: list[int] = field(default_factory=list)  # positions in the file list
    tensors: list[Tensor] = field(default_factory=list)  # uint8 (C, H, W) of each kept file
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    n_resized: int = 0
    n_preprocessed: int = 0  # images the load-time step returned
    n_preprocess_skipped: int = 0  # images it refused


def decode_all(
    files: Sequence[Path],
    *,
    strict: bool,
    image_size: tuple[int, int] | None,
    interpolation: str,
    source: Path,
    fit: str = "crop",
    pre_skipped: Sequence[tuple[Path, str]] = (),
    preprocess: Preprocess | None = None,
) -> Decoded:
    """Decode ``files``: the kept positions, their uint8 (C, H, W) tensors, the skipped
    (``pre_skipped`` first) and the counts. With ``image_size`` every image is resized right
    after decoding (memory stays ``N x image_size``). ``preprocess(image)`` runs on each decoded
    image first (see the module docstring)."""
    out = Decoded(skipped=list(pre_skipped))
    if image_size is None:
        check_native_memory(files, source)
    for i, path in enumerate(files):
        try:
            im = load_image(path)
        except ImageDecodeError as exc:
            out.skipped.append((path, exc.reason))
            continue
        if preprocess is not None:
            im, reason = preprocess(im)
            if im is None:
                out.skipped.append((path, reason))
                out.n_preprocess_skipped += 1
                continue
            out.n_preprocessed += 1
        if image_size is not None and im.size != (image_size[1], image_size[0]):
            im = fit_image(im, image_size, fit=fit, interpolation=interpolation)
            out.n_resized += 1
        out.kept.append(i)
        out.tensors.append(image_to_tensor(im))
    if out.skipped:
        n_files = len(files) + len(pre_skipped)
        if strict:
            raise DatasetError(
                f"{len(out.skipped)} file(s) in {source} cannot be decoded (strict=True):\n"
                + listing(out.skipped, limit=len(out.skipped))
            )
        warnings.warn(skipped_message(source, out.skipped, n_files), SkippedFilesWarning, stacklevel=4)
    return out


def stack(tensors: list[Tensor]) -> Tensor:
    """Stack uint8 (C, H, W) images of one size into (N, C, H, W); grey becomes RGB if any image is RGB."""
    if any(t.shape[0] == 3 for t in tensors):
        tensors = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in tensors]
    return torch.stack(tensors).contiguous()


def report(
    ds: FERDataset,
    *,
    n_files: int,
    n_resized: int,
    resize: str | None,
    fit: str | None,
    seconds: float,
    preprocess: Preprocess | None = None,
    n_preprocessed: int = 0,
    n_preprocess_skipped: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """Fill ``ds.load_report`` and log it at INFO (one line: images, size, channels, what the
    load-time step did, resized, skipped, time, per class and per part)."""
    out: dict[str, Any] = {
        "kind": ds.name,
        "source": str(ds.root) if ds.root is not None else None,
        "n_images": len(ds),
        "n_files": n_files,
        "n_resized": n_resized,
        "n_skipped": len(ds.skipped),
        "class_counts": ds.class_counts(),
        "image_size": ds.image_size,
        "resize": resize,
        "fit": fit if n_resized else None,
        "channels": ds.stored_channels,
        "seconds": round(seconds, 3),
    }
    step = ""
    if preprocess is not None:
        label = getattr(preprocess, "label", None) or PREPROCESS_LABEL
        skip_label = getattr(preprocess, "skip_label", None) or PREPROCESS_SKIP_LABEL
        out.update(preprocess=label, n_preprocessed=n_preprocessed, n_preprocess_skipped=n_preprocess_skipped)
        step = f"{n_preprocessed} {label} ({n_preprocess_skipped} skipped {skip_label}), "
    if any(u is not None for u in ds.usage):
        out["part_counts"] = dict(Counter(u for u in ds.usage if u is not None))
    out.update(extra)
    ds.load_report = out
    h, w = ds.image_size
    counts = ", ".join(f"{c} {n}" for c, n in out["class_counts"].items())
    parts = out.get("part_counts")
    logger.info(
        "loaded %s from %s: %d images (%dx%d, %d channel(s)), %s%d resized, %d skipped in %.2f s; by class: %s%s",
        ds.name, ds.root, len(ds), h, w, ds.stored_channels, step, n_resized, out["n_skipped"], seconds, counts,
        "" if not parts else "; by part: " + ", ".join(f"{k} {v}" for k, v in parts.items()),
    )
    return out


def build(
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
    fit: str = "crop",
    transform: Callable[..., Tensor] | None = None,
    default_test_size: int | float = 0.2,
    face_cropped: bool = False,
    usage: list[str | None] | None = None,
    pre_skipped: Sequence[tuple[Path, str]] = (),
    preprocess: Preprocess | None = None,
    t0: float,
) -> FERDataset:
    """Decode ``files`` (see :func:`decode_all`), bring them to one size, and return the
    :class:`~vitfer.data.FERDataset` with its ``load_report``. A class all of whose files were
    skipped, or no decodable file at all, is a DatasetError naming ``root``."""
    dec = decode_all(
        files, strict=strict, image_size=image_size, interpolation=interpolation, source=root, fit=fit,
        pre_skipped=pre_skipped, preprocess=preprocess,
    )
    kept_labels = [labels[i] for i in dec.kept]
    counts = Counter(kept_labels)
    for k in sorted(set(labels)):
        if counts.get(k, 0) == 0:
            raise DatasetError(f"class {classes[k]!r} of {root} has no decodable image (all its files were skipped)")
    if not dec.kept:
        raise DatasetError(f"no decodable image in {root}")
    kept_paths = [files[i] for i in dec.kept]
    tensors, n_resized = dec.tensors, dec.n_resized
    resize = "image_size" if image_size is not None else None
    if image_size is None:
        tensors, n_resized, dominant = unify_sizes(tensors, kept_paths, root, fit=fit, interpolation=interpolation)
        resize = "dominant size" if dominant is not None else None
    ds = FERDataset(
        stack(tensors),
        kept_labels,
        classes,
        subjects=[subjects[i] for i in dec.kept],
        paths=kept_paths,
        skipped=dec.skipped,
        transform=transform,
        name=name,
        root=root,
        default_test_size=default_test_size,
        face_cropped=face_cropped,
        usage=None if usage is None else [usage[i] for i in dec.kept],
    )
    report(
        ds, n_files=len(files) + len(pre_skipped), n_resized=n_resized, resize=resize, fit=fit,
        seconds=time.perf_counter() - t0, preprocess=preprocess, n_preprocessed=dec.n_preprocessed,
        n_preprocess_skipped=dec.n_preprocess_skipped,
    )
    return ds


def subject_matcher(subject_pattern: str | None) -> Callable[[Path], str | None] | None:
    """A function file -> subject from a ``--subject-pattern`` regex (None without a pattern).

    The subject is the named group ``subject`` if the pattern has one, else its first group,
    else the whole match, searched (``re.search``) in the file name (not the folders).
    """
    if subject_pattern is None:
        return None
    try:
        rx = re.compile(subject_pattern)
    except re.error as exc:
        raise DatasetError(f"--subject-pattern {subject_pattern!r} is not a valid regular expression: {exc}") from exc
    group: int | str = "subject" if "subject" in rx.groupindex else (1 if rx.groups else 0)

    def match(path: Path) -> str | None:
        m = rx.search(Path(path).name)
        value = m.group(group) if m else None
        return value or None

    return match


def apply_subject_pattern(subject_pattern: str, files: Sequence[Path], root: Path) -> list[str | None]:
    """Subjects of ``files`` by ``subject_pattern``; every file must match (else a DatasetError)."""
    match = subject_matcher(subject_pattern)
    assert match is not None
    subjects = [match(p) for p in files]
    bad = [p for p, s in zip(files, subjects) if s is None]
    if bad:
        names = "\n".join(f"  {p}" for p in bad[:MAX_LISTED])
        if len(bad) > MAX_LISTED:
            names += f"\n  ... and {len(bad) - MAX_LISTED} more"
        raise DatasetError(
            f"--subject-pattern {subject_pattern!r} does not match {len(bad)} of {len(files)} file name(s) "
            f"in {root} (the subject is the pattern's group named 'subject', else its first group, found "
            f"with re.search in the file name):\n{names}"
        )
    return subjects
