"""The moving average of the weights (``FinetuneConfig.ema``, ``--ema``): its arithmetic, that
validation, the checkpoint and the test use it, and that a run keeping one resumes exactly."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from torch import nn

from vitfer.engine import STATE_FILE, Callback, FinetuneConfig, finetune
from vitfer.engine.ema import ModelEma


def test_ema_follows_the_formula_with_a_warm_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, 0.9)
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10_000) == 0.9
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    want = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))  # moves BatchNorm's running statistics and counter
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            want[k] = d * want[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    for k, v in ema.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-6), k
    assert ema.state_dict()["1.num_batches_tracked"].item() == 5
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, 1.0)


def test_ema_setting_is_checked():
    for bad in (-0.1, 1.0, True, float("nan")):
        with pytest.raises(ValueError, match="ema"):
            FinetuneConfig(ema=bad)


def _cfg(out, **kw) -> FinetuneConfig:
    base = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, synthetic_n=60, epochs=2, batch_size=8,
                model_overrides={"depth": 2, "embed_dim": 64, "num_heads": 2}, drop_path_rate=0.1, lr=1e-3,
                warmup_steps=2, ema=0.9, out_dir=str(out))
    base.update(kw)
    return FinetuneConfig(**base)


class _Stop(Callback):
    def on_epoch_end(self, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt


def test_run_with_ema_saves_the_average_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    res = finetune(_cfg(straight))
    state = safetensors.torch.load_file(str(straight / STATE_FILE))
    ema_sd = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
    live_sd = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    assert ema_sd.keys() == live_sd.keys()
    assert any(not torch.equal(ema_sd[k], live_sd[k]) for k in ema_sd)  # an average, not a copy
    # the best epoch's checkpoint holds averaged weights (the last epoch's when it was the best)
    saved = safetensors.torch.load_file(str(straight / "model.safetensors"))
    if res["best_epoch"] == 2:
        assert all(torch.equal(saved[k], ema_sd[k]) for k in saved)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(out), callbacks=[_Stop()])
    again = finetune(_cfg(out), resume=True)
    after = safetensors.torch.load_file(str(out / STATE_FILE))
    for k, v in state.items():
        if k.startswith(("model.", "optim.", "ema.")):
            assert torch.equal(after[k], v), k
    assert again["test"] == res["test"]
    assert json.loads((out / "config.json").read_text())["config"]["ema"] == 0.9


def test_resume_needs_the_average_a_run_keeps(tmp_path):
    """A state written without an average (older runs) cannot continue a run that keeps one."""
    from vitfer.engine.runs import load_train_state, save_train_state
    from vitfer.weights.errors import CheckpointError

    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = save_train_state(tmp_path / "s.safetensors", model, opt, {"epoch": 1})
    with pytest.raises(CheckpointError, match="weight average"):
        load_train_state(path, model, opt, ema=ModelEma(model, 0.9))
    assert load_train_state(path, model, opt)["epoch"] == 1
