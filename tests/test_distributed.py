"""torchrun with 2 CPU processes (gloo) trains exactly as one process with the same global batch:
mixup and CutMix pair images across the global batch, drop-path masks are the global batch's, and a
training part smaller than the batch is split between the processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from test_engine import REPO, _cfg, _free_port, _history, _weights
from vitfer.engine import EpochBatchSampler, finetune
from vitfer.engine.distributed import batch_part
from vitfer.engine.mixing import mix_batch
from vitfer.layers import DropPath, drop_path
from vitfer.layers.drop_path import global_batch

#: The scratch recipe's regularisation (mixup 0.2, CutMix 1.0, drop-path 0.1, label smoothing 0.1)
#: on the tests' small ViT (no BatchNorm, which normalises per process).
SCRATCH = dict(mixup=0.2, cutmix=1.0, drop_path_rate=0.1, label_smoothing=0.1)


def torchrun_weights(tmp_path: Path, cases: dict[str, dict]) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Run ``finetune(_cfg(tmp_path / NAME, **overrides))`` for every case under one ``torchrun``
    with 2 CPU processes; each rank's final weights by case and rank."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import safetensors.torch
        from pathlib import Path
        from test_engine import _cfg
        from vitfer.engine import Callback, finetune

        class Keep(Callback):
            def on_train_start(self, info):
                self.model = info["model"]

        for name, kw in json.loads({json.dumps(cases)!r}).items():
            keep = Keep()
            finetune(_cfg(Path({str(tmp_path)!r}) / ("two-" + name), **kw), callbacks=[keep])
            sd = {{k: v.contiguous() for k, v in keep.model.state_dict().items()}}
            safetensors.torch.save_file(sd, {str(tmp_path)!r} + f"/{{name}}-rank{{os.environ['RANK']}}.safetensors")
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: {rank: safetensors.torch.load_file(str(tmp_path / f"{name}-rank{rank}.safetensors"))
                   for rank in (0, 1)} for name in cases}


def max_weight_difference(one: Path, two: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between a one-process run's final weights and ``two``."""
    ref = {k[len("model."):]: v for k, v in _weights(one).items() if k.startswith("model.")}
    assert ref.keys() == two.keys()
    return max((ref[k] - two[k]).abs().max().item() for k in ref)


def test_two_processes_match_one_under_the_scratch_recipes_regularisation(tmp_path):
    """Mixup + CutMix + drop-path (before: 6e-3 apart), and a training part of 7 images with
    batch 8 (before: 0 steps, then "checkpoint file not found"), split 4 + 3 between the ranks."""
    cases = {"scratch": dict(SCRATCH), "small": dict(SCRATCH, synthetic_n=12, val_size=0.0, test_size=5)}
    ranks = torchrun_weights(tmp_path, cases)
    for name, kw in cases.items():
        one = tmp_path / f"one-{name}"
        finetune(_cfg(one, **kw))
        two = tmp_path / f"two-{name}"
        assert all(torch.equal(ranks[name][0][k], ranks[name][1][k]) for k in ranks[name][0])
        worst = max_weight_difference(one, ranks[name][0])
        assert worst < 1e-4, (name, worst)
        assert json.loads((two / "config.json").read_text())["world_size"] == 2
        h1, h2 = _history(one), _history(two)
        assert [r["step"] for r in h2] == [r["step"] for r in h1]
        assert [r["train_loss"] for r in h2] == pytest.approx([r["train_loss"] for r in h1], abs=1e-4)
    assert json.loads((tmp_path / "one-small" / "metrics.json").read_text())["split_sizes"]["train"] == 7
    assert _history(tmp_path / "two-small")[-1]["step"] == 2  # one step of 7 images an epoch


def test_mixing_a_slice_of_the_global_batch_pairs_across_it():
    """Rank r's rows of the mixed global batch: its images blended with the images of the other
    end of the global batch (not of its own slice)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(7, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 5, 6])
    for kw in (dict(mixup=0.2), dict(cutmix=1.0)):
        whole, target, lam = mix_batch(x, y, 7, seed=3, step=5, **kw)
        for rank in (0, 1):
            part = batch_part(7, rank, 2)
            mine, t, lam2 = mix_batch(x, y, 7, seed=3, step=5, rows=part.rows, **kw)
            assert torch.equal(mine, whole[part.rows]) and torch.equal(t, target[part.rows]) and lam2 == lam
    # the partner of image 0 is image 6: its label is in row 0's target
    assert target[0, 6] > 0 and target[0, 1:6].sum() == 0


def test_drop_path_under_a_global_batch_draws_that_batchs_mask():
    x = torch.ones(6, 4, 5)
    torch.manual_seed(1)
    whole = drop_path(x, 0.5, training=True)
    dropped = DropPath(0.5).train()
    for offset, n in ((0, 4), (4, 2)):
        torch.manual_seed(1)
        with global_batch(offset, 6):
            part = dropped(x[offset:offset + n])
        assert torch.equal(part, whole[offset:offset + n])
    assert not torch.equal(whole[:3], whole[3:])  # the halves are not one mask twice (seed 1)
    with global_batch(0, 6), pytest.raises(ValueError, match="rows 0:7 of a global batch of 6"):
        drop_path(torch.ones(7, 2), 0.5, training=True)
    torch.manual_seed(1)
    assert torch.equal(drop_path(x, 0.5, training=True), whole)  # outside the context: as before


def test_sampler_splits_a_batch_larger_than_the_training_part():
    halves = [EpochBatchSampler(7, 8, seed=3, drop_last=False, rank=r, world=2) for r in (0, 1)]
    one = EpochBatchSampler(7, 8, seed=3, drop_last=False)
    for s in (*halves, one):
        s.set_epoch(2)
    assert [len(b) for b in halves[0]] == [4] and [len(b) for b in halves[1]] == [3]
    assert [a + b for a, b in zip(*map(list, halves))] == list(one)
    assert halves[1].part(0) == batch_part(7, 1, 2) and halves[1].part(0).rows == slice(4, 7)
    assert halves[1].part(0).weight == pytest.approx(3 * 2 / 7)
    with pytest.raises(ValueError, match="training part has 1 image.*2 processes"):
        EpochBatchSampler(1, 8, seed=0, drop_last=False, rank=0, world=2)
