"""Procedurally drawn faces showing the seven basic expressions (the built-in default dataset).

Each image is a grey face drawn with Pillow: head, hair, eyes with pupils, brows, nose and mouth.
The expression lives in a handful of parameters, as in the Facial Action Coding System:

==========  =====================================================================================
anger       brows lowered and slanted inward (inner ends down), narrowed eyes, tight closed mouth
disgust     brows lowered, nose wrinkled, upper lip raised on one side, corners down, lips parted
fear        brows raised and pulled together (inner ends up), wide eyes, stretched open mouth
happy       upturned mouth corners, slightly parted lips, eyes a little narrowed (cheek raise)
neutral     flat brows, relaxed eyes, straight closed mouth
sad         inner brow ends raised, lids lowered, mouth corners down
surprise    brows raised high, eyes wide open, round open mouth
==========  =====================================================================================

Every sample draws its expression parameters around its class's values with noise, so that
neighbouring classes overlap, and adds a subject's face shape and resting expression (a
per-subject bias), a random pose (rotation +-15 degrees, shift, scale), lighting (brightness,
contrast and a linear gradient in a random direction), a textured background and pixel noise.
That makes the task hard for a linear model on pixels (features move with the pose) and
learnable for a small convolutional or attention model.

Determinism: sample ``i`` depends only on ``(seed, i)`` (and its subject on ``(seed, subject)``),
so the same seed gives bit-identical images (for given numpy and Pillow versions), and the
first ``m`` samples of ``SyntheticFaces(n)`` are those of ``SyntheticFaces(m)``.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .base import FERDataset

__all__ = ["EXPRESSION_PARAMETERS", "SYNTHETIC_CLASSES", "SyntheticFaces", "expression_parameters"]

logger = logging.getLogger(__name__)

#: Classes of :class:`SyntheticFaces` (the study's seven expressions), in label order.
SYNTHETIC_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise")


@dataclass(frozen=True)
class _Expression:
    """Expression parameters (dimensionless; 0 = neutral)."""

    brow_raise: float = 0.0  # + up
    brow_slant: float = 0.0  # + inner ends up (sad, fear), - inner ends down (anger)
    brow_pinch: float = 0.0  # + inner ends pulled together
    eye_open: float = 1.0  # lid opening, 1 = relaxed
    mouth_curve: float = 0.0  # + corners up (smile), - corners down
    mouth_open: float = 0.0  # lip gap
    mouth_width: float = 1.0  # relative width
    lip_raise: float = 0.0  # one-sided upper-lip raise (disgust)
    wrinkle: float = 0.0  # nose wrinkle lines (disgust)


_E = _Expression
_EXPRESSIONS: dict[str, _Expression] = {
    "anger": _E(brow_raise=-0.8, brow_slant=-1.0, brow_pinch=0.6, eye_open=0.6, mouth_curve=-0.25, mouth_width=0.8),
    "disgust": _E(
        brow_raise=-0.5, brow_slant=-0.3, brow_pinch=0.3, eye_open=0.65, mouth_curve=-0.5, mouth_open=0.25,
        lip_raise=1.0, wrinkle=1.0,
    ),
    "fear": _E(
        brow_raise=0.7, brow_slant=0.8, brow_pinch=0.6, eye_open=1.45, mouth_curve=-0.3, mouth_open=0.55,
        mouth_width=1.25,
    ),
    "happy": _E(brow_raise=0.1, eye_open=0.75, mouth_curve=1.1, mouth_open=0.3, mouth_width=1.25),
    "neutral": _E(),
    "sad": _E(brow_raise=0.1, brow_slant=0.9, brow_pinch=0.2, eye_open=0.7, mouth_curve=-0.9, mouth_width=0.95),
    "surprise": _E(brow_raise=1.2, brow_slant=0.2, eye_open=1.6, mouth_open=1.1, mouth_width=0.65),
}

# per-sample noise (standard deviation) of each expression parameter
_JITTER = _E(
    brow_raise=0.2, brow_slant=0.2, brow_pinch=0.15, eye_open=0.12, mouth_curve=0.2, mouth_open=0.1,
    mouth_width=0.08, lip_raise=0.2, wrinkle=0.2,
)
# standard deviation of a subject's resting offset from neutral
_SUBJECT_BIAS = _E(
    brow_raise=0.15, brow_slant=0.12, brow_pinch=0.0, eye_open=0.08, mouth_curve=0.12, mouth_open=0.0,
    mouth_width=0.05, lip_raise=0.0, wrinkle=0.0,
)


@dataclass(frozen=True)
class _Subject:
    """A face identity: shape, tones and resting expression."""

    head_w: float
    head_h: float
    eye_dx: float
    eye_y: float
    eye_size: float
    brow_gap: float
    brow_thick: float
    nose_len: float
    mouth_y: float
    mouth_w: float
    skin: float
    hair: float
    hair_style: int
    bias: _Expression


def _draw_subject(rng: np.random.Generator) -> _Subject:
    bias = {k: float(rng.normal(0.0, getattr(_SUBJECT_BIAS, k))) for k in _Expression.__dataclass_fields__}
    bias["eye_open"] += 1.0
    bias["mouth_width"] += 1.0
    return _Subject(
        head_w=rng.uniform(0.88, 1.12),
        head_h=rng.uniform(0.92, 1.08),
        eye_dx=rng.uniform(0.88, 1.12),
        eye_y=rng.uniform(-0.015, 0.015),
        eye_size=rng.uniform(0.85, 1.15),
        brow_gap=rng.uniform(0.85, 1.15),
        brow_thick=rng.uniform(0.8, 1.3),
        nose_len=rng.uniform(0.85, 1.15),
        mouth_y=rng.uniform(-0.015, 0.015),
        mouth_w=rng.uniform(0.85, 1.15),
        skin=rng.uniform(0.55, 0.85),
        hair=rng.uniform(0.05, 0.35),
        hair_style=int(rng.integers(0, 3)),
        bias=_Expression(**bias),
    )


def _mix(base: _Expression, subject: _Subject, rng: np.random.Generator) -> _Expression:
    """Class parameters + the subject's resting bias (relative to neutral) + per-sample noise."""
    values = {}
    neutral = _Expression()
    for k in _Expression.__dataclass_fields__:
        bias = getattr(subject.bias, k) - getattr(neutral, k)
        values[k] = getattr(base, k) + bias + float(rng.normal(0.0, getattr(_JITTER, k)))
    values["eye_open"] = max(values["eye_open"], 0.15)
    values["mouth_open"] = max(values["mouth_open"], 0.0)
    values["mouth_width"] = max(values["mouth_width"], 0.45)
    values["lip_raise"] = max(values["lip_raise"], 0.0)
    values["wrinkle"] = max(values["wrinkle"], 0.0)
    return _Expression(**values)


def _grey(v: float) -> int:
    return int(round(min(max(v, 0.0), 1.0) * 255))


def _curve(x0: float, x1: float, y_mid: float, y_ends: float, n: int = 9) -> list[tuple[float, float]]:
    """Parabola from ``(x0, y_ends)`` through ``(mid, y_mid)`` to ``(x1, y_ends)``: n points."""
    pts = []
    for j in range(n):
        t = j / (n - 1)
        x = x0 + (x1 - x0) * t
        u = 2.0 * t - 1.0
        pts.append((x, y_mid + (y_ends - y_mid) * u * u))
    return pts


def _render_face(
    expression: str | _Expression,
    subject: _Subject,
    rng: np.random.Generator,
    size: int = 64,
    supersample: int = 2,
) -> np.ndarray:
    """Draw one face.

    Args:
        expression: a class name of :data:`SYNTHETIC_CLASSES` (jittered with ``rng``) or
            explicit parameters.
        subject: identity (shape, tones, resting expression).
        rng: draws the jitter, pose, lighting, background and noise.
        size: output side in pixels.
        supersample: the face is drawn at ``size * supersample`` and box-filtered down.

    Returns:
        uint8 array (size, size).
    """
    expr = _mix(_EXPRESSIONS[expression], subject, rng) if isinstance(expression, str) else expression
    big = size * supersample
    s = float(big)
    cx, cy = s / 2.0, s / 2.0

    bg = rng.uniform(0.15, 0.85)
    img = Image.new("L", (big, big), _grey(bg))
    d = ImageDraw.Draw(img)
    # background clutter: a few soft blobs
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.1, 0.3) * s
        x, y = rng.uniform(0, s), rng.uniform(0, s)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_grey(bg + rng.uniform(-0.2, 0.2)))

    hw, hh = 0.30 * s * subject.head_w, 0.38 * s * subject.head_h
    skin = subject.skin
    hair = _grey(subject.hair)
    # hair behind the head
    if subject.hair_style >= 1:
        bottom = cy + hh * (0.2 if subject.hair_style == 1 else 0.7)
        d.ellipse([cx - hw * 1.08, cy - hh * 1.08, cx + hw * 1.08, bottom], fill=hair)
    d.ellipse([cx - hw, cy - hh, cx + hw, cy + hh], fill=_grey(skin))
    # fringe
    if subject.hair_style != 1:
        d.chord([cx - hw, cy - hh, cx + hw, cy + hh * 0.1], start=200, end=340, fill=hair)
    else:
        d.chord([cx - hw, cy - hh, cx + hw, cy - hh * 0.2], start=180, end=360, fill=hair)

    dark = _grey(skin * 0.25)
    thin = max(1, supersample)  # about one output pixel
    eye_y = cy - 0.08 * s + subject.eye_y * s
    eye_dx = 0.125 * s * subject.eye_dx
    ew = 0.058 * s * subject.eye_size
    eh = max(0.032 * s * subject.eye_size * expr.eye_open, 0.004 * s)
    brow_w = max(int(round(0.022 * s * subject.brow_thick)), 1)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        # eye: light sclera, dark outline, pupil clipped by the lids
        sclera = _grey(min(skin + 0.3, 0.97))
        d.ellipse([ex - ew, eye_y - eh, ex + ew, eye_y + eh], fill=sclera, outline=dark, width=thin)
        pr = min(0.45 * ew, eh)
        d.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=dark)
        # brow: outer end at brow height, inner end moved by slant and pinch
        by = eye_y - 0.085 * s * subject.brow_gap - 0.035 * s * expr.brow_raise
        inner_x = ex - side * (0.06 * s - 0.02 * s * expr.brow_pinch)
        outer_x = ex + side * 0.07 * s
        inner_y = by - 0.03 * s * expr.brow_slant
        outer_y = by + 0.006 * s * expr.brow_slant
        arch = (ex, (outer_y + inner_y) / 2 - 0.006 * s)
        d.line([(outer_x, outer_y), arch, (inner_x, inner_y)], fill=dark, width=brow_w, joint="curve")

    # nose, wrinkles across its bridge
    nose_top, nose_tip = eye_y + 0.02 * s, eye_y + 0.14 * s * subject.nose_len
    nose = [(cx, nose_top), (cx + 0.015 * s, nose_tip), (cx - 0.02 * s, nose_tip + 0.01 * s)]
    d.line(nose, fill=_grey(skin * 0.6), width=thin)
    for j in range(int(round(min(expr.wrinkle, 1.5) * 2))):
        wy = nose_top + 0.015 * s * (j + 1)
        d.line([(cx - 0.03 * s, wy), (cx + 0.03 * s, wy - 0.004 * s)], fill=_grey(skin * 0.5), width=thin)

    # mouth: upper lip curve, lower lip curve below it by the opening
    my = cy + 0.2 * s + subject.mouth_y * s
    mw = 0.11 * s * subject.mouth_w * expr.mouth_width
    rise = 0.045 * s * expr.mouth_curve  # corners above the middle when smiling
    gap = 0.075 * s * expr.mouth_open
    side = 1 if rng.random() < 0.5 else -1
    upper = _curve(cx - mw, cx + mw, my, my - rise, n=11)
    lift = 0.03 * s * expr.lip_raise
    upper = [(x, y - lift * max(0.0, side * (x - cx) / mw) ** 0.7) for x, y in upper]
    if gap > 0.004 * s:
        # the lips part around the closed line: a third of the gap above it, the rest below
        bulge = [math.sin(math.pi * j / (len(upper) - 1)) for j in range(len(upper))]
        lower = [(x, y + 0.65 * gap * b) for (x, y), b in zip(upper, bulge)]
        upper = [(x, y - 0.35 * gap * b) for (x, y), b in zip(upper, bulge)]
        d.polygon(upper + lower[::-1], fill=_grey(skin * 0.15), outline=dark)
    lip_w = max(int(round(0.014 * s)), 1)
    d.line(upper, fill=dark, width=lip_w, joint="curve")

    # pose: rotation, scale and shift about the centre (inverse map for Image.transform)
    angle = math.radians(rng.uniform(-15.0, 15.0))
    scale = rng.uniform(0.85, 1.12)
    tx, ty = rng.uniform(-0.09, 0.09, size=2) * s
    cos, sin = math.cos(angle), math.sin(angle)
    a, b = cos / scale, sin / scale
    coeffs = (a, b, cx - a * (cx + tx) - b * (cy + ty), -b, a, cy + b * (cx + tx) - a * (cy + ty))
    img = img.transform(
        (big, big), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=_grey(bg)
    )
    img = img.resize((size, size), Image.Resampling.BOX)

    # lighting: gain, offset and a linear gradient; then sensor noise
    x = np.asarray(img, dtype=np.float32) / 255.0
    u = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    grad = math.cos(theta) * u[None, :] + math.sin(theta) * u[:, None]
    x = x * rng.uniform(0.7, 1.2) * (1.0 + rng.uniform(0.0, 0.35) * grad) + rng.uniform(-0.1, 0.1)
    x = x + rng.normal(0.0, rng.uniform(0.01, 0.06), size=x.shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


#: The names of the expression parameters :func:`expression_parameters` returns, in column order.
EXPRESSION_PARAMETERS: tuple[str, ...] = tuple(_Expression.__dataclass_fields__)


def expression_parameters(
    n: int, seed: int = 0, classes: Sequence[str] = SYNTHETIC_CLASSES, n_subjects: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """The drawn expression parameters of the samples ``SyntheticFaces(n, seed=seed, classes=classes,
    n_subjects=n_subjects)`` shows, without drawing them: ``(params (n, 9) float32, labels (n,))``,
    columns named by :data:`EXPRESSION_PARAMETERS`.

    They are what the picture encodes of its class (after the subject's resting bias and the
    per-sample noise), so a classifier on them measures the task's ceiling: what any model of the
    images could reach at best, since pose, lighting and drawing only hide them further.
    """
    classes = list(classes)
    subjects = [_draw_subject(np.random.default_rng([seed, 1, s])) for s in range(n_subjects)]
    params = np.empty((n, len(EXPRESSION_PARAMETERS)), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, 0, i])
        label = i % len(classes)
        sid = int(rng.integers(n_subjects))
        # the same draws, in the same order, as SyntheticFaces.__init__ and _render_face make
        expr = _mix(_EXPRESSIONS[classes[label]], subjects[sid], rng)
        params[i] = [getattr(expr, k) for k in EXPRESSION_PARAMETERS]
        labels[i] = label
    return params, labels


class SyntheticFaces(FERDataset):
    """Procedurally drawn grey faces of the seven expressions; a :class:`FERDataset`.

    Args:
        n: number of images; labels cycle through the classes (balanced).
        image_size: side of the square images.
        seed: fixes everything; the same seed gives bit-identical images.
        classes: which expressions (names from :data:`SYNTHETIC_CLASSES`), in label order.
        n_subjects: number of face identities; each sample picks one at random. Subjects
            make subject-independent splits meaningful.
        transform: the dataset's transform (see :class:`FERDataset`).

    Images are stored grey (1 channel); ``dataset[i]`` is ``(float (3, image_size, image_size),
    label)`` without a transform and has the model's channels with a
    :func:`~vitfer.data.build_transforms` pipeline (see :class:`FERDataset` ``channels``).
    ``subjects`` are ``"synth000"``...; ``paths`` are generated names; ``skipped`` is empty;
    ``face_cropped`` is True (the face fills the image). Generating takes about 2 ms an image
    (64x64) on one CPU core.
    """

    def __init__(
        self,
        n: int = 1000,
        image_size: int = 64,
        seed: int = 0,
        classes: Sequence[str] = SYNTHETIC_CLASSES,
        n_subjects: int = 40,
        transform: Callable[..., Tensor] | None = None,
    ) -> None:
        classes = list(classes)
        unknown = [c for c in classes if c not in _EXPRESSIONS]
        if unknown or not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct names from {SYNTHETIC_CLASSES}, got {classes}")
        if n < 1 or image_size < 16 or n_subjects < 1:
            raise ValueError(f"need n >= 1, image_size >= 16, n_subjects >= 1; got {n}, {image_size}, {n_subjects}")
        t0 = time.perf_counter()
        subjects = [_draw_subject(np.random.default_rng([seed, 1, s])) for s in range(n_subjects)]
        images = np.empty((n, 1, image_size, image_size), dtype=np.uint8)
        supersample = 3 if image_size < 48 else 2  # drawing canvas of about 100-150 pixels
        labels, subject_ids, names = [], [], []
        for i in range(n):
            rng = np.random.default_rng([seed, 0, i])
            label = i % len(classes)
            sid = int(rng.integers(n_subjects))
            images[i, 0] = _render_face(classes[label], subjects[sid], rng, size=image_size, supersample=supersample)
            labels.append(label)
            subject_ids.append(f"synth{sid:03d}")
            names.append(f"synthetic/seed{seed}/{i:06d}_{classes[label]}")
        super().__init__(
            torch.from_numpy(images),
            labels,
            classes,
            subjects=subject_ids,
            paths=names,
            transform=transform,
            name="synthetic",
            root=None,
            default_test_size=0.2,
            face_cropped=True,
        )
        self.generation_seed = seed
        seconds = time.perf_counter() - t0
        logger.info("generated %d synthetic faces (%dx%d) in %.2f s", n, image_size, image_size, seconds)
