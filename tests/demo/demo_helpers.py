"""Helpers of the demo tests (imported by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["anger", "disgust", "fear", "happy", "neutral", "sadness", "surprise"]


def save_tiny(name: str, path: Path, **overrides) -> Path:
    """A tiny, randomly initialised checkpoint of a family with the seven expression classes."""
    import torch

    import vitfer
    from vitfer.models import create_model

    sizes = {
        "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8, "depth": 2},
        "convit_tiny": {"img_size": 32, "patch_size": 8, "depth": 3, "local_up_to_layer": 2},
        "crossvit_tiny_240": {"img_size": 48, "patch_size": (6, 8)},
        "resnet18d": {},
    }[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES), **{**sizes, **overrides})
    vitfer.save(model, path, class_names=CLASSES)
    return path


def faces_canvas(data_root: Path, n: int, path: Path, start: int = 0) -> list[tuple[int, int, int, int]]:
    """``n`` JAFFE faces pasted side by side on a noisy grey canvas, written to ``path`` (a
    tmp_path: the research-only images are never kept). Returns the pasted squares."""
    files = sorted((data_root / "jaffe").glob("*.tiff"))[start:start + n]
    assert len(files) == n, f"JAFFE has fewer than {start + n} images under {data_root}"
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(100, 140, (300, 20 + 250 * n), dtype=np.uint8), "L")
    pasted = []
    for i, f in enumerate(files):
        x, y = 20 + 250 * i, 35
        with Image.open(f) as im:
            canvas.paste(im.convert("L").resize((230, 230)), (x, y))
        pasted.append((x, y, 230, 230))
    canvas.save(path)
    return pasted


def not_an_image(path: Path) -> Path:
    """A text file with an image's name."""
    path.write_text("this is a text file, not a JPEG\n" * 20)
    return path


def noise_image(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    Image.fromarray(np.random.default_rng(2).integers(0, 255, size[::-1], dtype=np.uint8), "L").save(path)
    return path
