"""Fixtures of the demo tests: two tiny checkpoints (a ViT and a ResNet) with the expression classes."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("cv2", reason="the demo finds faces with OpenCV (the detect extra, in the test extra)")
pytest.importorskip("matplotlib", reason="the demo draws attention with matplotlib (in the test extra)")


@pytest.fixture(scope="session")
def demo_ckpts(tmp_path_factory) -> list[Path]:
    from demo_helpers import save_tiny

    root = tmp_path_factory.mktemp("demo_ckpts")
    return [save_tiny("vit_tiny_patch16_224", root / "vit.safetensors"),
            save_tiny("resnet18d", root / "resnet.safetensors")]
