"""Example photos the demo offers, drawn by :class:`vitfer.data.SyntheticFaces` (vitfer may ship
these: no dataset image is involved): one face a expression, and a canvas of all seven.

    from vitfer.demo.examples import write_examples
    for ex in write_examples("/tmp/examples"):
        ex.path, ex.label, ex.faces, ex.found      # found: faces OpenCV's detector finds in it

Each face is the first of the synthetic faces of its expression (seed :data:`EXAMPLE_SEED`) that
OpenCV's Haar cascade finds, on its own and on the canvas (the cascade misses some of the
cartoon faces); ``found`` records what the detector finds in the written example, so the page
can say when an example gives fewer faces than it shows.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["EXAMPLE_SEED", "EXAMPLE_SIZE", "Example", "example_faces", "faces_canvas", "write_examples"]

_logger = logging.getLogger(__name__)

#: The SyntheticFaces seed the examples are drawn from.
EXAMPLE_SEED = 1
#: Side of one example face, in pixels.
EXAMPLE_SIZE = 128
#: Candidates looked at an expression before giving up on finding one the detector finds.
_CANDIDATES = 12


@dataclass(frozen=True)
class Example:
    """An example photo: its file, a label for the page, how many faces it shows and how many the
    detector finds in it."""

    path: Path
    label: str
    faces: int
    found: int

    @property
    def note(self) -> str:
        """``""`` when the detector finds every face, else a sentence saying what it finds."""
        if self.found == self.faces:
            return ""
        return f"{self.path.name}: OpenCV's detector finds {self.found} of the {self.faces} synthetic faces."


def _grey_canvas(w: int, h: int, seed: int) -> Image.Image:
    """A soft grey gradient with a little noise: a plain backdrop, not a flat colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 150 - 30 * (yy / max(1, h - 1)) + 10 * np.sin(xx / max(1, w) * 3.0)
    return Image.fromarray(np.clip(base + rng.normal(0, 4, (h, w)), 0, 255).astype(np.uint8), "L")


def faces_canvas(faces: list[Image.Image], columns: int = 4, gap: int = 36, seed: int = 0) -> Image.Image:
    """``faces`` (square, one size) laid out ``columns`` a row on a grey backdrop, ``gap``
    pixels apart."""
    if not faces:
        raise ValueError("faces_canvas needs at least one face")
    s = faces[0].size[0]
    cols = min(columns, len(faces))
    rows = -(-len(faces) // cols)
    canvas = _grey_canvas(cols * (s + gap) + gap, rows * (s + gap) + gap, seed)
    for k, face in enumerate(faces):
        r, c = divmod(k, cols)
        in_row = min(cols, len(faces) - r * cols)
        x0 = gap + c * (s + gap) + (cols - in_row) * (s + gap) // 2  # a short last row centred
        canvas.paste(face.convert("L"), (x0, gap + r * (s + gap)))
    return canvas


def example_faces(detector: Any = None, size: int = EXAMPLE_SIZE, seed: int = EXAMPLE_SEED) -> dict[str, Image.Image]:
    """One synthetic face an expression (``size`` px): the first candidate of each expression that
    ``detector`` (default: :class:`~vitfer.data.faces.FaceDetector`) finds exactly once, or the
    first candidate when none is found."""
    from vitfer.data import SyntheticFaces
    from vitfer.data.faces import FaceDetector

    det = detector if detector is not None else FaceDetector()
    classes = list(SyntheticFaces(n=1, image_size=16).classes)
    out: dict[str, Image.Image] = {}
    done = 0
    for k in (1, 3, _CANDIDATES):  # face i depends on (seed, i) only: draw more only when needed
        data = SyntheticFaces(n=len(classes) * k, image_size=size, seed=seed)
        for i in range(done, len(data)):
            name = classes[int(data.labels[i])]
            if name in out and out[name].info.get("found"):
                continue
            im = Image.fromarray(data.images[i, 0].numpy(), "L")
            found = len(det.detect(im)) == 1
            im.info["found"] = found
            if name not in out or found:
                out[name] = im
        done = len(data)
        if all(im.info.get("found") for im in out.values()) and len(out) == len(classes):
            break
    return {c: out[c] for c in classes}


def write_examples(folder: os.PathLike | str, detector: Any = None) -> list[Example]:
    """Write the example photos into ``folder`` (PNG): ``synthetic_faces.png`` (a canvas of the
    seven expressions) first, then ``synthetic_<expression>.png``; returns them with what the
    detector finds in each."""
    from vitfer.data.faces import FaceDetector

    det = detector if detector is not None else FaceDetector()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faces = example_faces(det)
    out: list[Example] = []
    canvas = faces_canvas(list(faces.values()))
    items = [("synthetic_faces.png", canvas, f"{len(faces)} synthetic faces", len(faces))]
    for name, im in faces.items():
        pad = Image.new("L", (im.width + 64, im.height + 64), 128)  # a margin, as in a photo
        pad.paste(im, (32, 32))
        items.append((f"synthetic_{name}.png", pad, f"synthetic face: {name}", 1))
    for fname, im, label, n in items:
        path = folder / fname
        tmp = path.with_name(f".{fname}.tmp")
        im.save(tmp, format="PNG")
        os.replace(tmp, path)
        ex = Example(path, label, n, len(det.detect(im)))
        if ex.note:
            _logger.info("demo example %s", ex.note)
        out.append(ex)
    return out
