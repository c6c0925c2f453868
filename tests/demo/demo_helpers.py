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


#: One model a family (and each hybrid) at 48 px, small enough for a CPU test: name, overrides.
FAMILIES_48 = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 48, "patch_size": 8, "depth": 2}),
    "convit": ("convit_tiny", {"img_size": 48, "patch_size": 8, "depth": 3, "local_up_to_layer": 2}),
    "crossvit": ("crossvit_tiny_240", {"img_size": 48, "patch_size": (6, 8)}),
    "hybrid r50": ("vit_base_r50_s16_224", {"img_size": 48, "backbone_layers": (1, 1, 1), "embed_dim": 48,
                                            "depth": 2, "num_heads": 3}),
    "hybrid convstem": ("vit_tiny_cs_48", {"depth": 2}),
    "hybrid r18d": ("vit_tiny_r18d_48", {"depth": 2}),
    "resnet": ("resnet18d", {}),
    "vgg": ("vgg16", {"layers": (16, "M", 32, "M", 32, "M", 64, "M"), "mlp_ratio": 0.02}),
}


def save_family_48(family: str, path: Path) -> Path:
    """A randomly initialised 48-px checkpoint of a FAMILIES_48 entry with the expression classes
    (CNNs take any size: their checkpoint records 48 px, as ``vitfer finetune --img-size 48`` does)."""
    import torch

    import vitfer
    from vitfer.models import create_model

    name, overrides = FAMILIES_48[family]
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES), **overrides)
    c = model.pretrained_cfg["input_size"][0]
    model.pretrained_cfg["input_size"] = (c, 48, 48)
    vitfer.save(model, path, class_names=CLASSES)
    return path


def drawn_overlays(fig) -> list[np.ndarray]:
    """The heat maps a figure actually draws (its 'jet' images), as arrays (NaN where masked)."""
    out = []
    for ax in fig.axes:
        for im in ax.images:
            if im.get_cmap().name == "jet":
                out.append(np.ma.filled(np.ma.asarray(im.get_array(), dtype=np.float64), np.nan))
    return out


def face_std(m: np.ndarray, inner: float = 0.7) -> float:
    """Standard deviation of a drawn map over the face: the central ``inner`` part of the crop
    (the detected box inside the crop's margin, 1 / 1.4 of it at the default margin 0.2)."""
    h, w = m.shape
    dy, dx = int(round(h * (1 - inner) / 2)), int(round(w * (1 - inner) / 2))
    return float(np.nanstd(m[dy:h - dy, dx:w - dx]))
