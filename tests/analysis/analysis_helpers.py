"""Helpers of the analysis tests (imported by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny(name: str, **overrides):
    """A tiny, randomly initialised model of a family (7 classes, 32-px input where it has one)."""
    from vitfer.models import create_model

    sizes = {
        "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, depth=2),
        "vit_base_r50_s16_224": dict(img_size=32, backbone_layers=(1, 1, 1), embed_dim=48, depth=2, num_heads=3),
        "convit_tiny": dict(img_size=32, patch_size=8, depth=3, local_up_to_layer=2),
        "crossvit_tiny_240": dict(img_size=48, patch_size=(6, 8)),
        "resnet18d": {},
        "vgg16": dict(layers=(16, "M", 32, "M", 32, "M", 64, "M"), mlp_ratio=0.02),
    }[name]
    m = create_model(name, num_classes=7, **{**sizes, **overrides})
    return m.eval()


def png_variance(path: Path) -> float:
    """Pixel variance of a PNG in grey levels (0-255): about 0 for a blank figure."""
    from PIL import Image

    with Image.open(path) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).var())


#: One model a family (and each hybrid) at 48 px, small enough for a CPU test: name, overrides.
FAMILIES_48 = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=48, patch_size=8, depth=2)),  # 6x6 tokens
    "convit": ("convit_tiny", dict(img_size=48, patch_size=8, depth=3, local_up_to_layer=2)),
    "crossvit": ("crossvit_tiny_240", dict(img_size=48, patch_size=(6, 8))),
    "hybrid r50": ("vit_base_r50_s16_224", dict(img_size=48, backbone_layers=(1, 1, 1), embed_dim=48, depth=2,
                                                num_heads=3)),  # 3x3 tokens
    "hybrid convstem": ("vit_tiny_cs_48", dict(depth=2)),
    "hybrid r18d": ("vit_tiny_r18d_48", dict(depth=2)),
    "resnet": ("resnet18d", {}),
    "vgg": ("vgg16", dict(layers=(16, "M", 32, "M", 32, "M", 64, "M"), mlp_ratio=0.02)),
}


def family_48(family: str, seed: int = 0):
    """The FAMILIES_48 model of ``family``, randomly initialised with ``seed``, in eval mode."""
    import torch

    from vitfer.models import create_model

    name, overrides = FAMILIES_48[family]
    torch.manual_seed(seed)
    model = create_model(name, num_classes=7, **overrides).eval()
    c = model.pretrained_cfg["input_size"][0]
    model.pretrained_cfg["input_size"] = (c, 48, 48)  # CNNs take any size: a 48-px run records 48 (as finetune does)
    return model


def synthetic_batch(model, n: int = 7, size: int = 48):
    """``n`` synthetic faces (one an expression), as ``model``'s eval transform gives them: (n, C, size, size)."""
    import torch

    from vitfer.data import SyntheticFaces, build_transforms

    data = SyntheticFaces(n=n, image_size=size, seed=3, transform=build_transforms(model.pretrained_cfg, train=False))
    return torch.stack([data[i][0] for i in range(n)]), [data.classes[y] for y in data.labels]


def drawn_overlays(fig) -> list[np.ndarray]:
    """The heat maps a figure actually draws (its 'jet' images), as arrays (NaN where masked)."""
    out = []
    for ax in fig.axes:
        for im in ax.images:
            if im.get_cmap().name == "jet":
                out.append(np.ma.filled(np.ma.asarray(im.get_array(), dtype=np.float64), np.nan))
    return out


def face_std(m: np.ndarray, inner: float = 0.8) -> float:
    """Standard deviation of a drawn map over the face: its central ``inner`` part (the face
    without the margin around it)."""
    h, w = m.shape
    dy, dx = int(round(h * (1 - inner) / 2)), int(round(w * (1 - inner) / 2))
    return float(np.nanstd(m[dy:h - dy, dx:w - dx]))
