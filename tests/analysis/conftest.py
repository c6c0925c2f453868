"""Fixtures of the analysis tests: tiny models and two tiny finished runs on the synthetic faces."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> list[Path]:
    """Two finished runs on 84 synthetic faces: a 3-block ConViT (2 GPSA blocks, 2 epochs) and a
    ResNet-18-D (1 epoch), both at 32 px."""
    from vitfer.engine import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("runs")
    common = dict(dataset="synthetic", synthetic_n=84, img_size=32, batch_size=16, warmup_steps=2)
    cfgs = [
        FinetuneConfig(model="convit_tiny", patch_size=8, epochs=2,
                       model_overrides={"depth": 3, "local_up_to_layer": 2}, out_dir=str(root / "convit"), **common),
        FinetuneConfig(model="resnet18d", epochs=1, out_dir=str(root / "resnet"), **common),
    ]
    for cfg in cfgs:
        finetune(cfg)
    return [Path(c.out_dir) for c in cfgs]


@pytest.fixture(scope="session")
def tiny_cv(tmp_path_factory) -> Path:
    """A finished 3-fold cross-validation (vitfer.engine.cv) of a 2-block ViT on 42 synthetic faces at 32 px."""
    from vitfer.engine import FinetuneConfig, run_folds

    out = tmp_path_factory.mktemp("cv") / "synth-cv"
    run_folds(FinetuneConfig(model="vit_tiny_patch16_224", dataset="synthetic", synthetic_n=42, img_size=32,
                             patch_size=8, model_overrides={"depth": 2, "embed_dim": 64, "num_heads": 2},
                             split="kfold", n_folds=3, epochs=1, batch_size=8, warmup_steps=2, out_dir=str(out)))
    return out
