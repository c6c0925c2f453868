"""vitfer.data.io.load_image: every Pillow mode to L / RGB, and bad files named in errors."""
from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_image, noise_array, save, write_bad_files
from PIL import Image

import vitfer.data
from vitfer.data import DatasetError, ImageDecodeError, image_to_tensor, load_image


def test_l_and_rgb_are_unchanged(tmp_path: Path) -> None:
    for mode in ("L", "RGB"):
        im = make_image(mode, seed=1)
        out = load_image(save(im, tmp_path / f"{mode}.png"))
        assert out.mode == mode
        np.testing.assert_array_equal(np.asarray(out), np.asarray(im))


def test_grey_palette_becomes_l_like_convert_l(tmp_path: Path) -> None:
    im = make_image("P", seed=2)  # reversed grey palette: index != grey value
    path = save(im, tmp_path / "p.tiff")
    out = load_image(path)
    assert out.mode == "L"
    expected = np.asarray(Image.open(path).convert("L"))
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert not np.array_equal(np.asarray(out), np.asarray(Image.open(path)))  # not the indices


def test_colour_palette_becomes_rgb(tmp_path: Path) -> None:
    path = save(make_image("P-colour", seed=3), tmp_path / "pc.png")
    out = load_image(path)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.open(path).convert("RGB")))


def test_palette_with_transparent_index_is_composited_on_black(tmp_path: Path) -> None:
    arr = noise_array((6, 7), 4, high=4)
    im = Image.fromarray(arr, "L").convert("P")
    im.putpalette([v for i in range(256) for v in (min(60 * i + 20, 255),) * 3])
    path = save(im, tmp_path / "pt.png", transparency=1)
    out = np.asarray(load_image(path))
    expected = np.where(arr == 1, 0, np.minimum(60 * arr + 20, 255))
    np.testing.assert_array_equal(out, expected)


def test_rgba_and_la_are_composited_on_black(tmp_path: Path) -> None:
    rgba = make_image("RGBA", seed=5)
    out = load_image(save(rgba, tmp_path / "rgba.png"))
    assert out.mode == "RGB"
    src = np.asarray(rgba).astype(np.float64)
    expected = src[..., :3] * src[..., 3:] / 255.0
    assert np.abs(np.asarray(out) - expected).max() <= 1.0
    la = make_image("LA", seed=6)
    out = load_image(save(la, tmp_path / "la.png"))
    src = np.asarray(la).astype(np.float64)
    assert out.mode == "L"
    assert np.abs(np.asarray(out) - src[..., 0] * src[..., 1] / 255.0).max() <= 1.0
    # a white background is available too
    white = load_image(tmp_path / "la.png", background=255)
    expected_white = src[..., 0] * src[..., 1] / 255.0 + 255.0 * (1 - src[..., 1] / 255.0)
    assert np.abs(np.asarray(white) - expected_white).max() <= 1.0


def test_16_bit_is_scaled_by_the_mode_range_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 257 * 100, 32896, 65535]], dtype=np.uint16)
    for ext in ("png", "tiff"):
        path = save(Image.fromarray(values), tmp_path / f"16.{ext}")
        assert Image.open(path).mode.startswith("I")
        out = load_image(path)
        assert out.mode == "L"
        np.testing.assert_array_equal(np.asarray(out), [[0, 4, 100, 128, 255]])
    noisy = make_image("I;16", (9, 8), seed=7)
    out = np.asarray(load_image(save(noisy, tmp_path / "noise16.png"))).astype(np.float64)
    np.testing.assert_allclose(out, np.asarray(noisy) / 257.0, atol=0.5 + 1e-9)


def test_32_bit_int_and_float_images(tmp_path: Path) -> None:
    ints = np.array([[0, 257, 65535]], dtype=np.int32)
    out = load_image(save(Image.fromarray(ints), tmp_path / "i32.tiff"))
    np.testing.assert_array_equal(np.asarray(out), [[0, 1, 255]])
    wide = np.array([[-100, 0, 155]], dtype=np.int32)  # outside 16 bits: min..max rescaled
    out = load_image(save(Image.fromarray(wide), tmp_path / "wide.tiff"))
    np.testing.assert_array_equal(np.asarray(out), [[0, 100, 255]])
    floats = np.array([[0.0, 0.2, 1.0]], dtype=np.float32)  # [0, 1] intensities
    out = load_image(save(Image.fromarray(floats), tmp_path / "f.tiff"))
    np.testing.assert_array_equal(np.asarray(out), [[0, 51, 255]])
    hdr = np.array([[0.0, 2.0, 4.0]], dtype=np.float32)  # outside [0, 1]: min..max rescaled
    out = load_image(save(Image.fromarray(hdr), tmp_path / "hdr.tiff"))
    np.testing.assert_array_equal(np.asarray(out), [[0, 128, 255]])


def test_cmyk_jpeg_and_bilevel(tmp_path: Path) -> None:
    path = save(make_image("CMYK", (16, 16), seed=8), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.open(path).convert("RGB")))
    bilevel = Image.fromarray(noise_array((5, 6), 9) > 127)
    out = load_image(save(bilevel, tmp_path / "one.png"))
    assert out.mode == "L" and set(np.unique(np.asarray(out))) <= {0, 255}


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = make_image("RGB", (8, 4), seed=10)  # W 8, H 4
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(im, tmp_path / "rotated.jpg", exif=exif)
    assert load_image(path).size == (4, 8)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "text"])
def test_bad_files_raise_an_error_naming_them(tmp_path: Path, kind: str) -> None:
    path = write_bad_files(tmp_path)[kind]
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == path and info.value.reason
    assert isinstance(info.value, DatasetError) and isinstance(info.value, ValueError)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_limit_stays_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Image.MAX_IMAGE_PIXELS is not None  # importing vitfer.data did not disable it
    path = save(make_image("L", (40, 40)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x limit
    with pytest.raises(ImageDecodeError, match="big.png") as info:
        load_image(path)
    assert "DecompressionBomb" in info.value.reason


def test_image_to_tensor_layout() -> None:
    rgb = make_image("RGB", (5, 3), seed=11)
    t = image_to_tensor(rgb)
    assert t.shape == (3, 3, 5) and t.dtype.is_floating_point is False
    np.testing.assert_array_equal(t.permute(1, 2, 0).numpy(), np.asarray(rgb))
    assert image_to_tensor(make_image("L", (5, 3))).shape == (1, 3, 5)
    with pytest.raises(ValueError, match="RGBA"):
        image_to_tensor(make_image("RGBA"))


def test_package_imports_neither_torchvision_nor_timm() -> None:
    folder = Path(vitfer.data.__file__).parent
    for source in folder.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("torchvision", "timm"), f"{source} imports {name}"


def test_pillow_warnings_name_the_file_and_can_be_made_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(make_image("L", (40, 40)), tmp_path / "largish.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: over the limit, under 2x
    with pytest.warns(Image.DecompressionBombWarning, match="largish.png"):
        assert load_image(path).size == (40, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageDecodeError, match="largish.png"):
            load_image(path)


def test_small_file_declaring_a_huge_image_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the reliability fuzzer: a JPEG whose header was patched to 12000 x 12000 (inside
    Pillow's warning zone, 1-2 x MAX_IMAGE_PIXELS) over 2 KB of data took over 1 GB to load
    (Pillow stores RGB in 4 bytes a pixel, and the EXIF rotation copied it)."""
    import io
    import struct

    buf = io.BytesIO()
    make_image("RGB", (40, 24)).save(buf, format="JPEG")
    data = buf.getvalue()
    i = data.find(b"\xff\xc0")
    path = tmp_path / "bomb.jpg"
    path.write_bytes(data[:i + 5] + struct.pack(">HH", 12000, 12000) + data[i + 9:])
    with pytest.raises(ImageDecodeError, match="bomb.jpg") as info:
        load_image(path)
    assert "12000x12000" in info.value.reason and "MAX_DECODED_BYTES" in info.value.reason
    # the limit counts Pillow's bytes a pixel (4 for RGB, 1 for L) and can be raised or removed
    rgb, grey = save(make_image("RGB", (40, 40)), tmp_path / "rgb.png"), save(make_image("L", (40, 40)), tmp_path / "l.png")
    monkeypatch.setattr(vitfer.data.io, "MAX_DECODED_BYTES", 40 * 40 * 2)
    assert load_image(grey).size == (40, 40)
    with pytest.raises(ImageDecodeError, match="rgb.png"):
        load_image(rgb)
    monkeypatch.setattr(vitfer.data.io, "MAX_DECODED_BYTES", None)
    assert load_image(rgb).size == (40, 40)


def test_high_bit_depth_conversion_memory_is_bounded(tmp_path: Path) -> None:
    """Found by the reliability fuzzer: a 16-bit TIFF whose header height was flipped to 1 M rows
    (48 x 1048624, 50 M pixels) took 11 s and 1.3 GB to load, in float64 temporaries of the whole
    image and a copy made by exif_transpose of an upright image. Scaling now goes a block of rows
    at a time, with the same result."""
    import tracemalloc

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(2000, 1000), dtype=np.uint16)
    path = tmp_path / "tall16.tif"
    Image.fromarray(arr).save(path)
    tracemalloc.start()
    try:
        im = load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    want = np.clip(np.rint(arr.astype(np.float64) * (255.0 / 65535)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(im), want)
    assert peak < 30e6, f"{peak / 1e6:.0f} MB of temporaries for a 2 M pixel image (52 MB before the fix)"
