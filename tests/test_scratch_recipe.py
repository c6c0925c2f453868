"""The from-scratch recipe (issue 12): a transformer by default, per-dataset settings, bf16 where
it is fast, and a short synthetic run that learns far above chance."""
from __future__ import annotations

import json

import pytest
import torch

from vitfer.cli import build_parser, main
from vitfer.engine import FinetuneConfig, finetune
from vitfer.engine.config import RECIPES, recipe_values
from vitfer.runtime import bf16_is_fast, resolve_amp
from vitfer.engine.model import build_model
from vitfer.layers import Attention
from vitfer.models import get_model_spec


def test_the_default_model_is_a_transformer():
    cfg = FinetuneConfig.from_recipe("scratch")
    assert cfg.model == FinetuneConfig().model
    model = build_model(cfg, 7)
    assert get_model_spec(cfg.model).family == "vit_hybrid"
    assert sum(isinstance(m, Attention) for m in model.modules()) == 4
    assert model.patch_embed.grid_size == (6, 6)  # 36 tokens at 48 px


def test_scratch_recipe_per_dataset():
    syn = FinetuneConfig.from_recipe("scratch")
    assert (syn.dataset, syn.synthetic_n, syn.epochs, syn.batch_size, syn.lr, syn.amp) == (
        "synthetic", RECIPES["scratch"]["datasets"]["synthetic"]["synthetic_n"],
        RECIPES["scratch"]["datasets"]["synthetic"]["epochs"], 64, 1e-3, "auto")
    assert syn.augment["rotation"] == 0.0 and "hflip" not in syn.augment  # the default flip stays
    ck = FinetuneConfig.from_recipe("scratch", dataset="ckplus48", data_dir="/nowhere")
    per = RECIPES["scratch"]["datasets"]["default"]
    assert (ck.epochs, ck.batch_size, ck.label_smoothing) == (per["epochs"], per["batch_size"], per["label_smoothing"])
    assert ck.augment == per.get("augment", {})
    # what the caller sets wins over both levels, augment keys merged
    mine = FinetuneConfig.from_recipe("scratch", epochs=2, augment={"noise": 0.01})
    assert mine.epochs == 2 and mine.augment["noise"] == 0.01 and mine.augment["rotation"] == 0.0
    assert "datasets" not in recipe_values("scratch", {})


def test_cli_main_job_uses_the_scratch_recipe(tmp_path):
    args = build_parser().parse_args(["finetune"])
    assert args.recipe is None and not args.pretrained  # -> scratch (vitfer/cli/finetune.py)
    out = tmp_path / "run"
    assert main(["finetune", "--synthetic-n", "70", "--epochs", "1", "--batch-size", "16", "--quiet",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    # recorded resolved: the recipe's amp "auto" as what this machine ran
    assert cfg["model"] == "vit_tiny_r18d_48" and cfg["recipe"] == "scratch"
    assert cfg["amp"] == resolve_amp("auto", torch.device("cpu"))
    assert cfg["lr"] == 1e-3 and cfg["synthetic_n"] == 70


def test_amp_auto_picks_bf16_only_where_it_is_fast():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == ("bf16" if bf16_is_fast(cpu) else "none")
    assert resolve_amp("none", cpu) == "none" and resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="amp"):
        FinetuneConfig(amp="fp8")


def test_short_synthetic_run_learns_far_above_chance(tmp_path):
    """About 20 s here: 1,400 faces, the recipe's model and optimiser. Chance is 1/7 = 0.14."""
    cfg = FinetuneConfig.from_recipe("scratch", synthetic_n=1400, epochs=4, batch_size=32, val_size=0,
                                     out_dir=str(tmp_path / "run"))
    res = finetune(cfg)
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"] - 0.3
    assert res["test"]["accuracy"] >= 0.45, res["test"]


def test_soft_targets_match_torch_label_smoothing():
    from vitfer.engine.mixing import soft_cross_entropy, soft_targets

    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 6, 2, 2])
    for s in (0.0, 0.1):
        want = torch.nn.functional.cross_entropy(logits, y, label_smoothing=s)
        assert torch.allclose(soft_cross_entropy(logits, soft_targets(y, 7, s)), want, atol=1e-6)


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mix_batch_targets_follow_the_pixels(mixup, cutmix):
    from vitfer.engine.mixing import mix_batch

    x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(4)])  # image i is all i
    y = torch.tensor([0, 1, 2, 3])
    for step in range(20):
        mixed, target, lam = mix_batch(x, y, 4, mixup=mixup, cutmix=cutmix, seed=1, step=step)
        assert 0.0 <= lam <= 1.0 and torch.allclose(target.sum(1), torch.ones(4))
        # each image's mean pixel is its own value weighted by lam plus the reversed partner's
        want = lam * torch.arange(4.0) + (1 - lam) * torch.arange(4.0).flip(0)
        assert torch.allclose(mixed.mean((1, 2, 3)), want, atol=1e-5)
        assert torch.allclose(target[0, 0], torch.tensor(lam)) and torch.allclose(target[0, 3], torch.tensor(1 - lam))
        again = mix_batch(x, y, 4, mixup=mixup, cutmix=cutmix, seed=1, step=step)
        assert torch.equal(again[0], mixed) and again[2] == lam  # reproducible from (seed, step): resumable
    off = mix_batch(x, y, 4)
    assert off[0] is x and off[2] == 1.0


def test_mixup_settings_are_checked_and_train(tmp_path):
    with pytest.raises(ValueError, match="mixup"):
        FinetuneConfig(mixup=-1.0)
    with pytest.raises(ValueError, match="cutmix"):
        FinetuneConfig(cutmix=float("nan"))
    res = finetune(FinetuneConfig.from_recipe("scratch", synthetic_n=64, epochs=1, batch_size=16, mixup=0.2,
                                              cutmix=1.0, out_dir=str(tmp_path / "m")))
    assert res["history"][0]["train_loss"] > 0


def test_runs_made_before_the_mixing_fields_still_resume():
    from dataclasses import asdict

    from vitfer.engine.runs import config_differences

    new = asdict(FinetuneConfig())
    old = {k: v for k, v in new.items() if k not in ("mixup", "cutmix")}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "mixup": 0.2}) == ["mixup: None -> 0.2"]
