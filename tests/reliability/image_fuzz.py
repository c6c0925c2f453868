"""The image fuzzer: seed images (real CK+48 / JAFFE files read from ``VITFER_DATA_DIR`` at test
time, and images drawn here in every mode Pillow writes) and byte-level mutations of them.

Nothing here is written anywhere but the folder a test passes in (pytest's ``tmp_path``): the
research-only datasets are read, never copied into the repository.

A :class:`Case` is one file's bytes, its extension and, for a file that is valid by construction
(an unmutated seed, or a seed saved under another image extension), ``expect``: the image
``load_image`` must return (mode, size and pixels, compared exactly or within a tolerance).
"""
from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageOps

EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class Expect:
    mode: str
    array: np.ndarray  # the pixels load_image must give (H, W) or (H, W, 3), uint8
    tolerance: int = 0  # max |difference| per pixel (lossy re-encodings)


@dataclass
class Case:
    name: str  # what it is: seed kind + mutation
    data: bytes
    ext: str
    expect: Optional[Expect] = None


# -- seeds drawn here -----------------------------------------------------------------------------
def _face(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth grey 'face' (an ellipse, two eyes, a mouth) with some noise, uint8 (h, w)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h / 2, w / 2
    img = 60.0 + 120 * (((yy - cy) / (0.45 * h)) ** 2 + ((xx - cx) / (0.35 * w)) ** 2 < 1)
    for ex in (0.35, 0.65):
        img -= 80 * (((yy - 0.4 * h) / (0.06 * h)) ** 2 + ((xx - ex * w) / (0.08 * w)) ** 2 < 1)
    img -= 70 * (((yy - 0.72 * h) / (0.05 * h)) ** 2 + ((xx - cx) / (0.18 * w)) ** 2 < 1)
    img += rng.normal(0, 6, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decoded(data: bytes) -> Image.Image:
    """Pillow's own decode of ``data`` (first frame, EXIF applied): the reference for lossless checks."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def drawn_seeds(rng: np.random.Generator) -> list[Case]:
    """Valid images of every kind the loader must read, each with what it must read them as."""
    g48 = _face(48, 48, rng)
    rgb = np.stack([_face(40, 56, rng), _face(40, 56, rng), _face(40, 56, rng)], -1)
    seeds: list[Case] = []

    def add(name: str, data: bytes, ext: str, mode: str, array: np.ndarray, tol: int = 0) -> None:
        seeds.append(Case(name, data, ext, Expect(mode, np.asarray(array, dtype=np.uint8), tol)))

    add("grey-png", _save(Image.fromarray(g48), "PNG"), ".png", "L", g48)
    add("rgb-png", _save(Image.fromarray(rgb), "PNG"), ".png", "RGB", rgb)
    jpg = _save(Image.fromarray(rgb), "JPEG", quality=90)
    add("rgb-jpeg", jpg, ".jpg", "RGB", np.asarray(_decoded(jpg)))
    grey_jpg = _save(Image.fromarray(g48), "JPEG", quality=90)
    add("grey-jpeg", grey_jpg, ".jpeg", "L", np.asarray(_decoded(grey_jpg)))
    add("grey-bmp", _save(Image.fromarray(g48), "BMP"), ".bmp", "L", g48)
    add("rgb-bmp", _save(Image.fromarray(rgb), "BMP"), ".bmp", "RGB", rgb)
    add("1bit-bmp", _save(Image.fromarray(g48).convert("1"), "BMP"), ".bmp", "L",
        np.asarray(Image.fromarray(g48).convert("1").convert("L")))
    try:
        webp = _save(Image.fromarray(rgb), "WEBP", lossless=True)
        add("rgb-webp", webp, ".webp", "RGB", rgb)
    except (KeyError, OSError):  # Pillow built without WebP
        pass
    # 16-bit: scaled by the mode's range, never clipped
    g16 = (g48.astype(np.uint16) * 257 + rng.integers(0, 257, size=g48.shape)).astype(np.uint16)
    want16 = np.clip(np.rint(g16.astype(np.float64) * 255 / 65535), 0, 255)
    add("16bit-png", _save(Image.fromarray(g16), "PNG"), ".png", "L", want16)
    add("16bit-tiff", _save(Image.fromarray(g16), "TIFF"), ".tiff", "L", want16)
    # 32-bit float and integer TIFFs
    f = g48.astype(np.float32) / 255.0
    add("float-tiff", _save(Image.fromarray(f, mode="F"), "TIFF"), ".tif", "L", np.rint(f * 255), 1)
    # CMYK (Pillow's conversion is the reference)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    add("cmyk-tiff", _save(cmyk, "TIFF"), ".tif", "RGB", np.asarray(cmyk.convert("RGB")))
    cmyk_jpg = _save(cmyk, "JPEG", quality=95)
    add("cmyk-jpeg", cmyk_jpg, ".jpg", "RGB", np.asarray(_decoded(cmyk_jpg).convert("RGB")))
    # palette with transparency: transparent pixels composited over black
    pal = Image.fromarray(rgb).quantize(16)
    p_arr = np.asarray(pal)
    t_index = int(p_arr[0, 0])
    palette = np.asarray(pal.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
    want_p = palette[p_arr].copy()
    want_p[p_arr == t_index] = 0
    add("palette-trns-png", _save(pal, "PNG", transparency=t_index), ".png", "RGB", want_p)
    add("palette-trns-gif", _save(pal, "GIF", transparency=t_index), ".gif", "RGB", want_p)
    grey_pal = Image.fromarray(g48).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    if np.all(np.ptp(np.asarray(grey_pal.getpalette("RGB")).reshape(-1, 3), axis=1) == 0):
        add("grey-palette-tiff", _save(grey_pal, "TIFF"), ".tiff", "L", np.asarray(grey_pal.convert("L")))
    # alpha: composited over black
    alpha = (rng.random(g48.shape) * 255).astype(np.uint8)
    la = Image.fromarray(np.stack([g48, alpha], -1), mode="LA")
    add("la-png", _save(la, "PNG"), ".png", "L", np.rint(g48.astype(np.float64) * alpha / 255), 1)
    rgba = Image.fromarray(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 128, np.uint8)], -1), mode="RGBA")
    add("rgba-png", _save(rgba, "PNG"), ".png", "RGB", np.rint(rgb.astype(np.float64) * 128 / 255), 1)
    # multi-frame: the first frame
    frames = [Image.fromarray(_face(32, 32, rng)) for _ in range(3)]
    gif = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    add("multiframe-gif", gif, ".gif", "L", np.asarray(_decoded(gif).convert("L")))
    add("multiframe-tiff", _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]), ".tiff", "L",
        np.asarray(frames[0]))
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): 56x40 stored, 40x56 read
    exif = Image.Exif()
    exif[0x0112] = 6
    ex_jpg = _save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(ex_jpg)) as raw:
        raw.load()
        want_ex = np.asarray(raw.transpose(Image.Transpose.ROTATE_270))
    add("exif-rotated-jpeg", ex_jpg, ".jpg", "RGB", want_ex)
    return seeds


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grey PNG that declares ``width x height`` pixels but carries one
    compressed row: a decompression bomb header (the decoder must refuse it or fail cheaply)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x80" * min(width, 4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def real_seeds(data_root: Path, rng: random.Random, k: int = 24) -> list[Case]:
    """``k`` CK+48 PNGs and ``k`` JAFFE TIFFs (read from ``data_root``, never copied), each with
    Pillow's own decode as the reference."""
    out: list[Case] = []
    for ds, ext in (("ckplus48", ".png"), ("jaffe", ".tiff")):
        files = sorted(p for p in (data_root / ds).rglob("*") if p.is_file() and p.suffix.lower() in EXTS)
        for p in rng.sample(files, min(k, len(files))):
            data = p.read_bytes()
            ref = _decoded(data)
            ref = ref.convert("L") if ref.mode in ("L", "P", "1") else ref.convert("RGB")
            out.append(Case(f"{ds}-real", data, p.suffix.lower(), Expect(ref.mode, np.asarray(ref))))
    return out


# -- mutations ----------------------------------------------------------------------------------
def _flip(data: bytes, rng: random.Random, lo: int, hi: int, n: int) -> bytes:
    b = bytearray(data)
    hi = min(hi, len(b))
    if hi <= lo:
        return bytes(b)
    for _ in range(n):
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    return bytes(b)


def _png_dims(data: bytes, w: int, h: int) -> Optional[bytes]:
    if not data.startswith(b"\x89PNG") or data[12:16] != b"IHDR":
        return None
    body = struct.pack(">II", w, h) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:16] + body + crc + data[33:]


def _jpeg_dims(data: bytes, w: int, h: int) -> Optional[bytes]:
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        i = data.find(marker)
        if i > 0 and i + 9 <= len(data):
            return data[:i + 5] + struct.pack(">HH", min(h, 65535), min(w, 65535)) + data[i + 9:]
    return None


def _bmp_dims(data: bytes, w: int, h: int) -> Optional[bytes]:
    if not data.startswith(b"BM") or len(data) < 26:
        return None
    return data[:18] + struct.pack("<ii", w, h) + data[26:]


def _gif_dims(data: bytes, w: int, h: int) -> Optional[bytes]:
    if not data.startswith(b"GIF") or len(data) < 10:
        return None
    w, h = min(w, 65535), min(h, 65535)
    out = data[:6] + struct.pack("<HH", w, h) + data[10:]
    i = out.find(b"\x2c", 13)  # the first image descriptor (approximately)
    if 0 < i and i + 9 <= len(out):
        out = out[:i + 5] + struct.pack("<HH", w, h) + out[i + 9:]
    return out


def huge_dims(data: bytes, rng: random.Random) -> Optional[bytes]:
    """The file with its header declaring huge dimensions (over and under the bomb limit)."""
    side = rng.choice([12_000, 20_000, 40_000, 65_535, 100_000, 1 << 30])
    w, h = (side, side) if rng.random() < 0.5 else (side, rng.randrange(1, 64))
    for f in (_png_dims, _jpeg_dims, _bmp_dims, _gif_dims):
        out = f(data, w, h)
        if out is not None:
            return out
    return None


MUTATIONS = ("truncate", "flip_header", "flip_data", "wrong_ext", "zero_bytes", "huge_dims", "garbage",
             "splice", "truncate_flip", "duplicate_tail")


def mutate(seed: Case, rng: random.Random) -> Case:
    """One mutant of ``seed`` (the kind drawn at random)."""
    kind = rng.choice(MUTATIONS)
    d = seed.data
    name = f"{seed.name}/{kind}"
    if kind == "truncate":
        return Case(name, d[:rng.randrange(0, max(1, len(d)))], seed.ext)
    if kind == "flip_header":
        return Case(name, _flip(d, rng, 0, 128, rng.randint(1, 4)), seed.ext)
    if kind == "flip_data":
        return Case(name, _flip(d, rng, min(128, len(d) // 2), len(d), rng.randint(1, 8)), seed.ext)
    if kind == "wrong_ext":  # the content is intact: it must read exactly as the seed does
        ext = rng.choice([e for e in EXTS if e != seed.ext])
        return Case(name + ext, d, ext, seed.expect)
    if kind == "zero_bytes":
        return Case(name, b"", seed.ext)
    if kind == "huge_dims":
        out = huge_dims(d, rng)
        if out is None:  # a TIFF / WebP: flip header bytes instead
            return Case(name + "(flip)", _flip(d, rng, 0, 64, 2), seed.ext)
        return Case(name, out, seed.ext)
    if kind == "garbage":
        return Case(name, rng.randbytes(rng.choice([1, 7, 64, 1000, 20_000])), seed.ext)
    if kind == "splice":  # a real header, then junk
        cut = rng.randrange(8, max(9, min(len(d), 256)))
        return Case(name, d[:cut] + rng.randbytes(rng.randrange(1, 4096)), seed.ext)
    if kind == "truncate_flip":
        t = d[:rng.randrange(len(d) // 2, max(len(d) // 2 + 1, len(d)))]
        return Case(name, _flip(t, rng, 0, len(t), rng.randint(1, 6)), seed.ext)
    # duplicate_tail: a second copy of the file's end appended (trailing junk after a valid image)
    return Case(name, d + d[-rng.randrange(1, max(2, min(len(d), 512))):], seed.ext)


def matches(im: Image.Image, expect: Expect) -> Optional[str]:
    """None when ``im`` is what ``expect`` says, else why not."""
    if im.mode != expect.mode:
        return f"mode {im.mode}, expected {expect.mode}"
    arr = np.asarray(im)
    if arr.shape != expect.array.shape:
        return f"shape {arr.shape}, expected {expect.array.shape}"
    diff = int(np.abs(arr.astype(np.int32) - expect.array.astype(np.int32)).max()) if arr.size else 0
    if diff > expect.tolerance:
        return f"pixels differ by up to {diff} (tolerance {expect.tolerance})"
    return None


def build_cases(n: int, seed: int, real: list[Case], rng_np: Callable[[], np.random.Generator]) -> list[Case]:
    """The seeds themselves, a few bomb headers, then mutants of random seeds, ``n`` in all."""
    rng = random.Random(seed)
    seeds = drawn_seeds(rng_np()) + real
    cases = list(seeds)
    for w, h in ((100_000, 100_000), ((1 << 31) - 1, 1), (70_000, 70_000), (16_384, 16_384), (65_535, 2),
                 (10_000, 10_000), (12_000, 12_000)):
        cases.append(Case(f"bomb-png-{w}x{h}", bomb_png(w, h), ".png"))
    while len(cases) < n:
        cases.append(mutate(rng.choice(seeds), rng))
    return cases[:n]
