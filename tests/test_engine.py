"""The experiment engine: exact resume (also after SIGKILL), multi-process training, cross-validation."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

from vitfer.cli import main
from vitfer.engine import (
    STATE_FILE, Callback, EpochBatchSampler, FinetuneConfig, RunFolderError, finetune, run_folds,
)

REPO = Path(__file__).resolve().parents[1]


def _cfg(out: Path, **kw) -> FinetuneConfig:
    """A small ViT on synthetic faces; dropout-free except drop-path, which uses the global RNG
    and so checks that its state is restored."""
    base = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, synthetic_n=60, epochs=2, batch_size=8,
                model_overrides={"depth": 2, "embed_dim": 64, "num_heads": 2}, drop_path_rate=0.1, lr=1e-3,
                warmup_steps=2, out_dir=str(out))
    base.update(kw)
    return FinetuneConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in safetensors.torch.load_file(str(out / STATE_FILE)).items() if k.startswith(("model.", "optim."))}


def _history(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds"), r.pop("images_per_s"), r.pop("phase_seconds"), r.pop("val_seconds", None)
    return rows


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    finetune(_cfg(out))
    return out


class _StopAfterEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, record):
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_resume_is_bit_identical(straight, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(out), callbacks=[_StopAfterEpoch(1)])
    assert json.loads((out / "config.json").read_text())["status"] == "failed"
    assert len(_history(out)) == 1
    res = finetune(_cfg(out), resume=True)
    _assert_identical(_weights(out), _weights(straight))
    assert _history(out) == _history(straight)
    assert res["test"] == json.loads((straight / "metrics.json").read_text())["test"]
    assert json.loads((out / "config.json").read_text())["status"] == "finished"
    # resuming a finished run trains nothing and returns its metrics
    assert finetune(_cfg(out), resume=True)["test"] == res["test"]


def test_resume_after_sigkill_mid_epoch(straight, tmp_path):
    """A run killed with SIGKILL in the middle of epoch 2 (a separate process), then resumed, ends
    with the weights of the uninterrupted run; no partial file is left where a reader looks."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_engine import _cfg
        from vitfer.engine import Callback, finetune
        from pathlib import Path

        class Kill(Callback):
            def on_step(self, info):
                if info["epoch"] == 2 and info["step"] == info["steps_per_epoch"] + 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        finetune(_cfg(Path({str(out)!r})), callbacks=[Kill()])
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == -9, r.stderr[-2000:]
    assert len(_history(out)) == 1 and (out / STATE_FILE).is_file()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    finetune(_cfg(out), resume=True)
    _assert_identical(_weights(out), _weights(straight))
    assert _history(out) == _history(straight)


def test_resume_refuses_another_config_and_missing_state(straight, tmp_path, capsys):
    with pytest.raises(RunFolderError, match=r"differing fields: lr: 0.001 -> 0.002"):
        finetune(_cfg(straight, lr=2e-3), resume=True)
    with pytest.raises(RunFolderError, match="holds no run"):
        finetune(_cfg(tmp_path / "nothing"), resume=True)
    # the CLI: the stored config is used, an option that differs is named, status 2
    assert main(["finetune", "--resume", str(straight), "--lr", "0.003"]) == 2
    err = capsys.readouterr().err
    assert "lr: 0.001 -> 0.003" in err and "Traceback" not in err
    assert main(["finetune", "--resume", str(straight), "--epochs", "1"]) == 2  # extended, never shortened
    assert "extended, not shortened" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path / "nothing")]) == 2


def test_cli_resume_continues_a_stopped_run(straight, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(out), callbacks=[_StopAfterEpoch(1)])
    assert main(["finetune", "--resume", str(out)]) == 0
    assert "resumed" in capsys.readouterr().out
    _assert_identical(_weights(out), _weights(straight))


def test_epoch_batches_depend_on_seed_and_epoch_only():
    s = EpochBatchSampler(20, 4, seed=3, drop_last=True)
    s.set_epoch(1)
    a = list(s)
    s2 = EpochBatchSampler(20, 4, seed=3, drop_last=True)
    s2.set_epoch(1)
    assert list(s2) == a and sorted(i for b in a for i in b) == list(range(20))
    s2.set_epoch(2)
    assert list(s2) != a
    halves = [EpochBatchSampler(20, 4, seed=3, drop_last=True, rank=r, world=2) for r in (0, 1)]
    for h in halves:
        h.set_epoch(1)
    assert [x + y for x, y in zip(*map(list, halves))] == a


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks end with identical weights, equal within
    float tolerance to one process with the same global batch; only rank 0 writes."""
    one = tmp_path / "one"
    finetune(_cfg(one, drop_path_rate=0.0, epochs=2))
    two = tmp_path / "two"
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import safetensors.torch
        from pathlib import Path
        from test_engine import _cfg
        from vitfer.engine import Callback, finetune

        class Keep(Callback):
            def on_train_start(self, info):
                self.model = info["model"]

        keep = Keep()
        finetune(_cfg(Path({str(two)!r}), drop_path_rate=0.0, epochs=2), callbacks=[keep])
        sd = {{k: v.contiguous() for k, v in keep.model.state_dict().items()}}
        safetensors.torch.save_file(sd, {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.safetensors")
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    r0 = safetensors.torch.load_file(str(tmp_path / "rank0.safetensors"))
    r1 = safetensors.torch.load_file(str(tmp_path / "rank1.safetensors"))
    _assert_identical(r0, r1)
    ref = {k[len("model."):]: v for k, v in _weights(one).items() if k.startswith("model.")}
    assert ref.keys() == r0.keys()
    worst = max((ref[k] - r0[k]).abs().max().item() for k in ref)
    assert worst < 1e-4, worst
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert _history(two)[-1]["step"] == _history(one)[-1]["step"]


def test_every_fold_then_summary_and_rerun_skips(tmp_path, capsys):
    out = tmp_path / "cv"
    cfg = _cfg(out, split="kfold", n_folds=3, epochs=1, val_size=0.0, synthetic_n=42)
    summary = run_folds(cfg)
    assert summary["n_folds"] == 3 and len(summary["folds"]) == 3
    assert sum(f["n"] for f in summary["folds"]) == 42 == summary["pooled"]["n"]
    accs = [f["accuracy"] for f in summary["folds"]]
    assert summary["accuracy"]["mean"] == pytest.approx(sum(accs) / 3)
    assert (out / "summary.md").read_text().count("\n| ") >= 3 + 7
    before = {k: (out / f"fold-{k}" / "model.safetensors").stat().st_mtime_ns for k in range(3)}
    # the CLI rerun of the same job: every fold finished, nothing retrained, same summary
    rc = main(["finetune", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8",
               "--synthetic-n", "42", "--epochs", "1", "--batch-size", "8", "--split", "kfold", "--n-folds", "3",
               "--fold", "all", "--val-size", "0", "--out", str(out)])
    assert rc == 2  # the CLI's config (no depth override, other lr) is another run: refused, named
    assert "another config" in capsys.readouterr().err
    again = run_folds(cfg)
    assert {k: (out / f"fold-{k}" / "model.safetensors").stat().st_mtime_ns for k in range(3)} == before
    assert again["accuracy"] == summary["accuracy"]


def test_interrupted_fold_is_resumed(tmp_path):
    out = tmp_path / "cv"
    cfg = _cfg(out, split="kfold", n_folds=2, epochs=2, val_size=0.0, synthetic_n=32)
    with pytest.raises(KeyboardInterrupt):
        run_folds(cfg, callbacks=[_StopAfterEpoch(1)])
    assert json.loads((out / "fold-0" / "config.json").read_text())["status"] == "failed"
    summary = run_folds(cfg)
    ref = tmp_path / "ref"
    finetune(replace(cfg, fold=0, out_dir=str(ref)))
    _assert_identical(_weights(out / "fold-0"), _weights(ref))
    assert summary["n_folds"] == 2


def test_evaluate_reproduces_the_runs_test_accuracy(straight, capsys):
    from vitfer.engine import evaluate_checkpoint

    metrics = json.loads((straight / "metrics.json").read_text())["test"]
    res = evaluate_checkpoint(straight / "model.safetensors")
    assert res["accuracy"] == metrics["accuracy"] and res["confusion"] == metrics["confusion"]
    assert main(["evaluate", str(straight / "model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * metrics['accuracy']:.1f}%" in out and "random split" in out
    assert main(["evaluate", str(straight / "model.safetensors"), "--json", "--split", "all"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 60


def test_evaluate_needs_data_for_a_checkpoint_without_a_run(tmp_path, capsys):
    import vitfer
    from vitfer.models import create_model

    m = create_model("vit_tiny_patch16_224", num_classes=7, img_size=32, patch_size=8, depth=1)
    vitfer.save(m, tmp_path / "m.safetensors", class_names=["a"] * 7)
    assert main(["evaluate", str(tmp_path / "m.safetensors")]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_cross_dataset_evaluation_on_shared_expressions(data_root, tmp_path, capsys):
    """A CK+48 model evaluated on JAFFE: only the 6 shared expressions (not JAFFE's neutral),
    the model choosing among its scores of those six."""
    out = tmp_path / "ck"
    finetune(FinetuneConfig(model="resnet18d", dataset="ckplus48", data_dir=str(data_root), img_size=32, epochs=1,
                            max_steps=3, out_dir=str(out)))
    rc = main(["evaluate", str(out / "model.safetensors"), "--dataset", "jaffe", "--data-dir", str(data_root), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    cross = res["cross_dataset"]
    assert len(cross["shared"]) == 6 and cross["dataset_only"] == ["neutral"] and cross["model_only"] == ["contempt"]
    assert res["n"] + cross["images_left_out"] == 213 and len(res["confusion"]) == 6


@pytest.mark.parametrize(
    "args,words",
    [
        (["--model", "vit_tiny_patch16_22"], "vit_tiny_patch16_224"),  # closest name suggested
        (["--dataset", "ckplus48", "--data-dir", "/nonexistent/faces"], "/nonexistent/faces"),
        (["--split", "subject-kfold", "--n-folds", "3", "--fold", "3"], "fold"),
    ],
)
def test_failures_are_one_line_and_leave_the_folder_alone(straight, tmp_path, capsys, args, words):
    before = {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()}
    assert main(["finetune", *args, "--out", str(straight)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()} == before


def test_two_epochs_on_real_ckplus48(data_root, tmp_path):
    """A 2-epoch CK+48 run at a small size: history, checkpoint and an exact re-evaluation."""
    from vitfer.engine import evaluate_checkpoint

    out = tmp_path / "ck"
    res = finetune(FinetuneConfig(model="vit_tiny_patch16_224", dataset="ckplus48", data_dir=str(data_root),
                                  split="subject", img_size=32, patch_size=8, model_overrides={"depth": 1},
                                  epochs=2, batch_size=32, out_dir=str(out)))
    assert [r["epoch"] for r in _history(out)] == [1, 2]
    assert sum(res["split_sizes"].values()) == 981 and res["test_subjects"]
    again = evaluate_checkpoint(out / "model.safetensors")
    assert again["accuracy"] == res["test"]["accuracy"] and again["n"] == res["split_sizes"]["test"]


def test_a_subject_split_shared_by_other_seeds_is_warned_about(data_root, tmp_path, caplog, monkeypatch):
    """JAFFE's subject split holds out KL, KM and YM for seed 1 as for several other seeds of 0-9:
    the run's log says so, and which seeds (vitfer.data.seeds_sharing_test_subjects); once a
    process, so that a second run on the split (a --distill run's teacher) does not repeat it."""
    import vitfer.engine.run as run_module
    from vitfer.data import load_dataset, seeds_sharing_test_subjects

    monkeypatch.setattr(run_module, "_SHARED_SPLITS_WARNED", set())  # whatever earlier tests warned about
    others = [s for s in seeds_sharing_test_subjects(load_dataset("jaffe", data_root), 1) if s != 1]
    assert 2 in others
    with caplog.at_level(logging.WARNING, logger="vitfer.engine.run"):
        for run in ("jaffe", "again"):
            finetune(FinetuneConfig(model="vit_tiny_patch16_224", dataset="jaffe", data_dir=str(data_root),
                                    split="subject", seed=1, img_size=32, patch_size=8,
                                    model_overrides={"depth": 1, "embed_dim": 64, "num_heads": 2},
                                    epochs=1, batch_size=32, out_dir=str(tmp_path / run)))
    warned = [r.getMessage() for r in caplog.records if "same test people" in r.getMessage()]
    assert warned == [
        f"jaffe's subject split holds out the same test people (KL, KM, YM) for seed 1 as for seeds "
        f"{', '.join(map(str, others))} of 0-9, so runs over these seeds share one test set; --split subject-kfold "
        "tests every person once"
    ]


class _PoisonInEpoch(Callback):
    """Turns the weights to NaN after a step of epoch ``epoch``: the next loss is not finite."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_start(self, info):
        self.model = info["model"]

    def on_step(self, info):
        if info["epoch"] == self.epoch:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))


def test_non_finite_loss_keeps_the_last_good_epoch(straight, tmp_path):
    from vitfer.engine import TrainingError

    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"at epoch 2, step \d+.*checkpoint and state of epoch 1"):
        finetune(_cfg(out), callbacks=[_PoisonInEpoch(2)])
    import vitfer

    assert vitfer.load(out / "model.safetensors") is not None  # the last good checkpoint loads
    finetune(_cfg(out), resume=True)  # and the state resumes: the same weights as the straight run
    _assert_identical(_weights(out), _weights(straight))
