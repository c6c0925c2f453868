"""Helpers for the data tests: images generated here (noise), never dataset files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def noise_array(shape: tuple[int, ...], seed: int = 0, dtype=np.uint8, high: int = 256) -> np.ndarray:
    """Random integers in ``[0, high)``: shape as given."""
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(dtype)


def make_image(mode: str, size: tuple[int, int] = (12, 10), seed: int = 0) -> Image.Image:
    """A random image of ``mode`` and ``size = (W, H)``."""
    w, h = size
    if mode == "L":
        return Image.fromarray(noise_array((h, w), seed), "L")
    if mode == "RGB":
        return Image.fromarray(noise_array((h, w, 3), seed), "RGB")
    if mode == "RGBA":
        return Image.fromarray(noise_array((h, w, 4), seed), "RGBA")
    if mode == "LA":
        return Image.fromarray(noise_array((h, w, 2), seed), "LA")
    if mode == "CMYK":
        return Image.fromarray(noise_array((h, w, 4), seed), "CMYK")
    if mode == "I;16":
        return Image.fromarray(noise_array((h, w), seed, np.uint16, 65536))
    if mode == "P":  # grey palette in reversed order: indices differ from grey values
        im = Image.fromarray(noise_array((h, w), seed), "L").convert("P")
        im.putpalette([v for i in range(256) for v in (255 - i,) * 3])
        return im
    if mode == "P-colour":
        im = Image.fromarray(noise_array((h, w), seed, high=8), "L").convert("P")
        im.putpalette([v for i in range(256) for v in (i * 30 % 256, i * 70 % 256, i * 110 % 256)])
        return im
    raise ValueError(mode)


def save(im: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Write a corrupt PNG (random bytes), a truncated PNG and a text file named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(noise_array((300,), 5).tobytes())
    data = png_bytes(make_image("RGB", (32, 32), seed=6))
    truncated = folder / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    text = folder / "notes.jpg"
    text.write_text("this is not a JPEG\n")
    return {"corrupt": corrupt, "truncated": truncated, "text": text}
