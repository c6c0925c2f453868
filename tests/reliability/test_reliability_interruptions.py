"""Interrupted and failed writes: a run killed with SIGKILL during an epoch or inside a checkpoint
write resumes to the weights of an uninterrupted run, and no partial file is ever where a reader
looks; a write that fails (disk full, simulated) leaves the previous file intact and says so.

The kills happen in a child process: during an epoch (a training-step callback), and inside the
write of ``state.safetensors`` / ``model.safetensors`` (``safetensors.torch.save_file``, which
vitfer looks up at call time, wrapped in the child to SIGKILL itself half-way through the
temporary file or once it is complete, before it is moved into place). No fault-injection hook
in vitfer itself.
"""
from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch
from reliability_helpers import record, subprocess_env, tiny_vit

import vitfer
from vitfer.engine import STATE_FILE, FinetuneConfig, finetune
from vitfer.engine.runs import load_train_state, save_train_state
from vitfer.weights.io import read_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _cfg(out: Path) -> FinetuneConfig:
    """A 2-block ViT at 32 px on 40 synthetic faces, 2 epochs of 5 steps; drop-path uses the
    global RNG, so an exact resume also needs the RNG state restored."""
    return FinetuneConfig(model="vit_tiny_patch16_224", img_size=32, patch_size=8, synthetic_n=40, epochs=2,
                          batch_size=8, model_overrides={"depth": 2, "embed_dim": 32, "num_heads": 2},
                          drop_path_rate=0.1, lr=1e-3, warmup_steps=2, out_dir=str(out))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    sd = safetensors.torch.load_file(str(out / STATE_FILE))
    return {k: v for k, v in sd.items() if k.startswith(("model.", "optim."))}


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _readers_see_whole_files(out: Path) -> list[str]:
    """What a reader of the run folder would trip over: a checkpoint or state that does not read
    (checksum included), a config.json or metrics.jsonl line that is not JSON, a visible temp."""
    bad = []
    for name in ("model.safetensors", STATE_FILE):
        if (out / name).exists():
            try:
                read_checkpoint(out / name)
            except Exception as e:  # noqa: BLE001
                bad.append(f"{name}: {e}")
    for name in ("config.json",):
        try:
            json.loads((out / name).read_text())
        except Exception as e:  # noqa: BLE001
            bad.append(f"{name}: {e}")
    if (out / "metrics.jsonl").exists():
        for ln in (out / "metrics.jsonl").read_text().splitlines():
            try:
                json.loads(ln)
            except ValueError as e:
                bad.append(f"metrics.jsonl line {ln[:40]!r}: {e}")
    bad += [f"visible temporary file {p.name}" for p in out.iterdir() if p.name.endswith(".tmp")
            and not p.name.startswith(".")]
    return bad


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    finetune(_cfg(out))
    return out


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {here!r})
    import safetensors.torch
    from test_reliability_interruptions import _cfg
    from vitfer.engine import Callback, finetune

    where = {where!r}
    real_save = safetensors.torch.save_file
    calls = {{}}

    def killing_save(tensors, filename, metadata=None):
        name = Path(filename).name.split(".")[1]  # .state.safetensors.XXXX.tmp -> state
        calls[name] = calls.get(name, 0) + 1
        if where.startswith(name) and calls[name] == 2:  # epoch 2's write
            if where.endswith("-half"):
                real_save(tensors, filename, metadata=metadata)
                with open(filename, "r+b") as f:
                    f.truncate(os.path.getsize(filename) // 2)
            else:  # the temporary file complete, not yet moved into place
                real_save(tensors, filename, metadata=metadata)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(tensors, filename, metadata=metadata)

    safetensors.torch.save_file = killing_save

    class Kill(Callback):
        def on_step(self, info):
            if where == "epoch" and info["epoch"] == 2 and info["step"] == info["steps_per_epoch"] + 2:
                os.kill(os.getpid(), signal.SIGKILL)

    finetune(_cfg(Path({out!r})), callbacks=[Kill()])
    sys.exit(3)  # never killed
""")


@pytest.mark.parametrize("where", ["epoch", "state-half", "state-complete", "model-half"])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(where, straight, tmp_path):
    out = tmp_path / "run"
    script = _CHILD.format(here=str(Path(__file__).parent), where=where, out=str(out))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO,
                       env=subprocess_env())
    assert r.returncode == -9, r.stderr[-3000:]
    bad = _readers_see_whole_files(out)
    record("damaged" if bad else "handled", f"run folder after SIGKILL ({where})", "; ".join(bad))
    assert not bad, bad
    # epoch 1's state is what is there: the interrupted write of epoch 2 cost nothing else
    assert json.loads(safetensors.safe_open(str(out / STATE_FILE), "pt").metadata()["vitfer_train_state"])["epoch"] == 1
    try:
        finetune(_cfg(out), resume=True)
    except Exception as e:  # noqa: BLE001
        record("crash", f"resume after SIGKILL ({where})", f"{type(e).__name__}: {e}")
        raise
    same = _identical(_weights(out), _weights(straight))
    same_model = _identical(vitfer.load(out / "model.safetensors").state_dict(),
                            vitfer.load(straight / "model.safetensors").state_dict())
    record("handled" if same and same_model else "damaged", f"resume after SIGKILL ({where})",
           "weights differ from the uninterrupted run")
    assert same and same_model
    assert not _readers_see_whole_files(out)


_REAL_SAVE_FILE = safetensors.torch.save_file


def _disk_full(tensors, filename, metadata=None):
    """Write half the file, then fail as a full disk does."""
    _REAL_SAVE_FILE(tensors, filename, metadata=metadata)
    with open(filename, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    model = tiny_vit()
    path = vitfer.save(model, tmp_path / "model.safetensors", class_names=["a", "b", "c"])
    before = path.read_bytes()
    opt = torch.optim.AdamW(model.parameters())
    state = save_train_state(tmp_path / STATE_FILE, model, opt, {"epoch": 1})
    state_before = state.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for what, write, target, old in (
        ("vitfer.save", lambda: vitfer.save(model, path, class_names=["a", "b", "c"]), path, before),
        ("save_train_state", lambda: save_train_state(state, model, opt, {"epoch": 2}), state, state_before),
    ):
        with pytest.raises(OSError) as ei:
            write()
        msg = str(ei.value)
        ok_msg = ei.value.errno == errno.ENOSPC and str(target) in msg and "previous" in msg and "intact" in msg
        intact = target.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == [
            "model.safetensors", STATE_FILE]
        record("handled" if ok_msg else "crash", f"disk full in {what}", msg)
        record("handled" if intact else "damaged", f"previous file after disk full in {what}")
        assert ok_msg, msg
        assert intact
    monkeypatch.undo()
    assert _identical(vitfer.load(path).state_dict(), tiny_vit().state_dict())
    fresh = tiny_vit()
    assert load_train_state(state, fresh, torch.optim.AdamW(fresh.parameters()))["epoch"] == 1
    # a new file that cannot be written: it says that nothing was written
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    with pytest.raises(OSError, match="no new.safetensors was written"):
        vitfer.save(model, tmp_path / "new.safetensors")
    assert not (tmp_path / "new.safetensors").exists()
    record("handled", "disk full writing a new file")


def test_disk_full_during_training_keeps_the_last_good_epoch(straight, tmp_path, monkeypatch):
    """The state write of epoch 2 fails (disk full): the run stops with an OSError that says the
    previous state is intact, config.json says failed, and resuming gives the uninterrupted run."""
    out = tmp_path / "run"
    calls = {"n": 0}

    def full_on_second_state(tensors, filename, metadata=None):
        if Path(filename).name.startswith(f".{STATE_FILE}."):
            calls["n"] += 1
            if calls["n"] == 2:
                return _disk_full(tensors, filename, metadata)
        return _REAL_SAVE_FILE(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_on_second_state)
    with pytest.raises(OSError, match="previous .* is left intact"):
        finetune(_cfg(out))
    monkeypatch.undo()
    assert json.loads((out / "config.json").read_text())["status"] == "failed"
    bad = _readers_see_whole_files(out)
    record("damaged" if bad else "handled", "run folder after a failed state write", "; ".join(bad))
    assert not bad
    finetune(_cfg(out), resume=True)
    same = _identical(_weights(out), _weights(straight))
    record("handled" if same else "damaged", "resume after a failed state write")
    assert same
