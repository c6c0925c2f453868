"""Tests of vitfer.inference.detect (Haar-cascade face detection and face crops).

Real-data tests read JAFFE in place through the ``data_root`` fixture; nothing is written to
disk except small non-image files under pytest's ``tmp_path``.
"""
from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vitfer.data.io import load_image
from vitfer.data import faces as det
from vitfer.data.faces import (
    Box,
    FaceDetector,
    crop_face,
    crop_largest_face,
    largest_face,
)

try:
    import cv2  # noqa: F401

    HAS_CV2 = True
except ImportError:
    HAS_CV2 = False
needs_cv2 = pytest.mark.skipif(not HAS_CV2, reason="needs OpenCV: pip install 'vitfer[detect]'")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def jaffe_images(data_root):
    files = sorted((data_root / "jaffe").rglob("*.tiff"))
    assert len(files) >= 200, f"expected the 213 JAFFE images under {data_root / 'jaffe'}"
    return [(f.name, load_image(f)) for f in files]


@pytest.fixture(scope="module")
def detector():
    if not HAS_CV2:
        pytest.skip("needs OpenCV: pip install 'vitfer[detect]'")
    return FaceDetector()


def _noise(h=300, w=400, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


# ----------------------------------------------------------------------------- (a) JAFFE


@needs_cv2
@pytest.mark.parametrize("equalize", [False, True])
def test_jaffe_single_face_rate(jaffe_images, equalize):
    d = FaceDetector(equalize=equalize)
    counts, bad = [], []
    for name, im in jaffe_images:
        boxes = d.detect(im)
        counts.append(len(boxes))
        if len(boxes) != 1:
            bad.append((name, boxes))
        if boxes:  # the largest box is the face: central and of a plausible size
            b = boxes[0]
            cx, cy = b.center
            assert 0.3 * im.width < cx < 0.7 * im.width and 0.3 * im.height < cy < 0.75 * im.height, (
                name,
                b,
            )
            assert 0.35 * im.width < b.w < 0.85 * im.width, (name, b)
    rate = float(np.mean(np.asarray(counts) == 1))
    print(f"JAFFE single-face rate (equalize={equalize}): {rate:.4f} over {len(counts)}")
    assert rate >= 0.95, (rate, bad[:10])
    assert min(counts) >= 1, bad  # every photo has its face found


@needs_cv2
def test_jaffe_crop_largest_face(jaffe_images, detector):
    _name, im = jaffe_images[0]
    crop = crop_largest_face(im, margin=0.2, detector=detector)
    box = largest_face(im, detector)
    assert crop is not None and box is not None
    assert crop.mode == im.mode == "L"
    side = round(box.w * 1.4)
    assert crop.size == (side, side)
    # default detector (cached) gives the same box
    assert largest_face(im) == box


# ----------------------------------------------------------------------------- (b) canvas


def _canvas(jaffe_images, background):
    """Three JAFFE faces (central 176x176 crops) pasted at known places and scales."""
    rng = np.random.default_rng(0)
    if background == "flat":
        bg = np.full((400, 900), 128, np.uint8)
    else:
        bg = np.clip(rng.normal(128, 30, (400, 900)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(bg)
    places = [(30, 60, 264), (350, 110, 176), (620, 150, 106)]  # x, y, side: large to small
    picks = [jaffe_images[i][1] for i in (0, len(jaffe_images) // 2, len(jaffe_images) - 1)]
    pasted = []
    for im, (x, y, s) in zip(picks, places):
        face = im.crop((40, 50, 216, 226)).resize((s, s), Image.Resampling.BILINEAR)
        canvas.paste(face, (x, y))
        pasted.append(Box(x, y, s, s))
    return canvas, pasted


@needs_cv2
@pytest.mark.parametrize("equalize", [False, True])
@pytest.mark.parametrize("background", ["flat", "noise"])
def test_canvas_three_faces(jaffe_images, background, equalize):
    canvas, pasted = _canvas(jaffe_images, background)
    boxes = FaceDetector(equalize=equalize).detect(canvas)
    assert len(boxes) == 3, boxes
    # largest first, and the i-th largest box is on the i-th largest pasted face
    assert [b.area for b in boxes] == sorted((b.area for b in boxes), reverse=True)
    for b, p in zip(boxes, pasted):
        assert b.iou(p) > 0.4, (b, p, b.iou(p))
        assert b.neighbours is not None and b.neighbours >= 5
    # the same canvas as an RGB tensor (C, H, W) gives the same boxes
    t = torch.from_numpy(np.asarray(canvas.convert("RGB")).copy()).permute(2, 0, 1)
    assert FaceDetector(equalize=equalize).detect(t) == boxes


# ----------------------------------------------------------------------------- input types


@needs_cv2
def test_input_types_agree(jaffe_images, detector):
    im = jaffe_images[5][1]
    arr = np.asarray(im)
    ref = detector.detect(im)
    assert len(ref) == 1
    variants = {
        "RGB": im.convert("RGB"),
        "RGBA": im.convert("RGBA"),
        "LA": im.convert("LA"),
        "P": im.convert("P"),
        "I;16": Image.fromarray(arr.astype(np.uint16) * 257),
        "numpy HW": arr,
        "numpy HWC": np.repeat(arr[..., None], 3, axis=2),
        "numpy HW1": arr[..., None],
        "torch HW": torch.from_numpy(arr.copy()),
        "torch 1HW": torch.from_numpy(arr.copy())[None],
        "torch 3HW": torch.from_numpy(arr.copy())[None].expand(3, -1, -1),
    }
    for name, v in variants.items():
        assert np.array_equal(det.to_grey_array(v), arr), name
        assert detector.detect(v) == ref, name
    with pytest.raises(TypeError, match="uint8"):
        detector.detect(arr.astype(np.float32))
    with pytest.raises(TypeError, match="PIL image"):
        detector.detect([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((2, 3, 4, 5), np.uint8))


def test_grey_conversion_modes():
    a = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    # 16-bit scaled by range, not clipped
    assert np.array_equal(det.to_grey_array(Image.fromarray(a.astype(np.uint16) * 257)), a)
    # alpha composited over black
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :20, 3] = 255
    g = det.to_grey_array(Image.fromarray(rgba))
    assert (g[:, :20] == 200).all() and (g[:, 20:] == 0).all()
    # float in [0, 1]
    f = Image.fromarray(a.astype(np.float32) / 255.0)
    assert np.abs(det.to_grey_array(f).astype(int) - a).max() <= 1


@needs_cv2
def test_deterministic_and_picklable(jaffe_images, detector):
    canvas, _ = _canvas(jaffe_images, "noise")
    first = detector.detect(canvas)
    assert detector.detect(canvas) == first
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.detect(canvas) == first
    assert clone.cascade_path == detector.cascade_path


# ----------------------------------------------------------------------------- (c) crop_face


def _ramp(h=80, w=100):
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 2 + y * 3) % 256).astype(np.uint8)


def test_crop_face_corner_pads_with_edge():
    a = _ramp()
    im = Image.fromarray(a)
    crop = crop_face(im, Box(0, 0, 40, 40), margin=0.25)  # side 60, 10 px outside left/top
    assert crop.mode == "L" and crop.size == (60, 60)
    c = np.asarray(crop)
    assert np.array_equal(c[10:, 10:], a[:50, :50])
    assert np.array_equal(c[10:, :10], np.repeat(a[:50, :1], 10, axis=1))  # left: first column
    assert np.array_equal(c[:10, 10:], np.repeat(a[:1, :50], 10, axis=0))  # top: first row
    assert (c[:10, :10] == a[0, 0]).all()  # corner: the corner pixel


def test_crop_face_bottom_right_and_non_square():
    a = _ramp()
    im = Image.fromarray(a)
    crop = crop_face(im, Box(70, 60, 30, 20), margin=0.2, square=True)  # 42x28 -> 42x42
    assert crop.size == (42, 42)
    c = np.asarray(crop)
    # centre (85, 70): columns 64..105 (6 past the right edge), rows 49..90 (11 past the bottom)
    assert np.array_equal(c[:31, :36], a[49:80, 64:100])
    assert (c[:31, 36:] == a[49:80, 99:100]).all()
    assert (c[31:, :36] == a[79:80, 64:100]).all()
    assert (c[31:, 36:] == a[79, 99]).all()
    rect = crop_face(im, Box(10, 10, 40, 20), margin=0.2, square=False)
    assert rect.size == (56, 28)
    assert np.array_equal(np.asarray(rect), a[6:34, 2:58])
    # margin 0 and a box inside the image: exactly the box
    inside = crop_face(im, Box(20, 15, 30, 30), margin=0.0)
    assert np.array_equal(np.asarray(inside), a[15:45, 20:50])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "I;16", "F", "LA", "1"])
def test_crop_face_keeps_mode(mode):
    a = _ramp()
    if mode == "I;16":
        im = Image.fromarray(a.astype(np.uint16) * 257)
    elif mode == "P":
        im = Image.fromarray(np.stack([a, a // 2, 255 - a], axis=-1)).convert("P")
    else:
        im = Image.fromarray(a).convert(mode)
    crop = crop_face(im, Box(0, 0, 40, 40), margin=0.25)
    assert crop.mode == im.mode and crop.size == (60, 60)
    # same pixels as the L/RGB reference path: compare through numpy
    ref = np.asarray(im)
    c = np.asarray(crop)
    assert np.array_equal(c[10:, 10:], ref[:50, :50])
    assert np.array_equal(c[:10, :10], np.broadcast_to(ref[:1, :1], (10, 10) + ref.shape[2:]))
    if mode == "P":
        assert crop.getpalette() == im.getpalette()


def test_crop_face_arrays_and_errors():
    a = _ramp()
    crop = crop_face(torch.from_numpy(a.copy())[None], Box(0, 0, 40, 40), margin=0.25)
    assert crop.mode == "L" and crop.size == (60, 60)
    rgb = crop_face(np.repeat(a[..., None], 3, axis=2), Box(0, 0, 40, 40))
    assert rgb.mode == "RGB" and rgb.size == (56, 56)
    with pytest.raises(ValueError, match="outside the image"):
        crop_face(a, Box(500, 500, 10, 10), margin=0.0)
    with pytest.raises(ValueError, match="margin"):
        crop_face(a, Box(0, 0, 10, 10), margin=-0.5)
    with pytest.raises(TypeError):
        crop_face(a, (0, 0, 10, 10))


def test_box():
    b = Box(np.int32(3), 4, 10, 20, neighbours=np.int32(7))
    assert b.area == 200 and b.center == (8.0, 14.0) and b.as_xyxy() == (3, 4, 13, 24)
    assert type(b.x) is int and type(b.neighbours) is int
    assert b.iou(b) == 1.0 and b.iou(Box(100, 100, 5, 5)) == 0.0
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 10, 10)) == pytest.approx(50 / 150)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.x = 5  # type: ignore[misc]
    with pytest.raises(ValueError):
        Box(0, 0, 0, 5)
    with pytest.raises(TypeError):
        Box(0.5, 0, 5, 5)


# ----------------------------------------------------------------------------- (d) missing extra


def test_missing_opencv_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'vitfer\[detect\]'"):
        FaceDetector()
    with pytest.raises(ImportError, match=r"pip install 'vitfer\[detect\]'"):
        det.default_cascade_path()


def test_module_imports_without_opencv():
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "import vitfer.inference, vitfer.inference.detect as d\n"
        "print(d.crop_face(__import__('numpy').zeros((8, 8), 'uint8'), d.Box(0, 0, 4, 4)).size)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(6, 6)"


# ----------------------------------------------------------------------------- cascade & params


@needs_cv2
def test_cascade_errors_name_the_path(tmp_path):
    missing = tmp_path / "no-such-cascade.xml"
    with pytest.raises(FileNotFoundError, match="no-such-cascade.xml"):
        FaceDetector(cascade=missing)
    bad = tmp_path / "bad-cascade.xml"
    bad.write_text("<opencv_storage>not a cascade")
    with pytest.raises(ValueError, match="bad-cascade.xml"):
        FaceDetector(cascade=bad)
    assert det.default_cascade_path().name == "haarcascade_frontalface_default.xml"
    assert det.default_cascade_path().is_file()


@needs_cv2
@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale_factor": 1.0},
        {"scale_factor": 0.5},
        {"min_neighbors": -1},
        {"min_neighbors": 2.5},
        {"min_size": (0, 24)},
        {"min_size": 24},
    ],
)
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        FaceDetector(**kwargs)


# ----------------------------------------------------------------------------- (e) no face


@needs_cv2
@pytest.mark.parametrize("equalize", [False, True])
def test_noise_has_no_face(equalize):
    d = FaceDetector(equalize=equalize)
    noise = _noise()
    assert d.detect(noise) == []
    assert d.detect(np.full((100, 120), 77, np.uint8)) == []  # flat image
    assert d.detect(np.zeros((10, 10), np.uint8)) == []  # smaller than min_size
    assert largest_face(noise, d) is None
    assert crop_largest_face(noise, detector=d) is None
    assert largest_face(noise) is None
