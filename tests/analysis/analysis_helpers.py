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
