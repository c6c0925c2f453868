"""Damaged and hostile checkpoints: each is a ``CheckpointError`` naming the file, never another
exception, never silently different weights, never code run.

* truncations at every interesting offset (inside the 8-byte length, the JSON header, the data);
* flipped bytes in the safetensors header and in the tensor data: vitfer records a SHA-256 of the
  tensors and metadata in every file it writes (``vitfer_sha256``) and verifies it on read, so a
  flip in the data is caught by the checksum. A flip the checksum cannot see leaves the weights
  intact, which the test checks: one in the checksum entry's own *name* (the file then reads as
  one without a checksum), in the ``format`` entry's value, or one that turns header padding into
  other JSON whitespace;
* a checkpoint of another model, and a head of the wrong shape;
* pickles whose ``__reduce__`` would run code (zip and legacy streams): refused, nothing executed.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from reliability_helpers import measured, record, save_tiny_checkpoint, tiny_vit

import vitfer
from vitfer.cli import main
from vitfer.models import create_model
from vitfer.weights import CheckpointError
from vitfer.weights.hub import fetch_state_dict
from vitfer.weights.io import atomic_save_safetensors, read_checkpoint

NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("good") / "tiny.safetensors")
    model = vitfer.load(path)
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    return {"path": path, "data": data, "header_len": header_len, "state": model.state_dict(),
            "class_names": model.class_names}


def _intact(model, good: dict) -> bool:
    sd = model.state_dict()
    return (model.class_names == good["class_names"] and sd.keys() == good["state"].keys()
            and all(torch.equal(sd[k], good["state"][k]) for k in sd))


def _try_load(path: Path, good: dict, what: str) -> str:
    """vitfer.load on a damaged file: a CheckpointError naming it, or weights identical to the
    original (a change that does not touch them). Records and returns the outcome."""
    with measured() as lim:
        try:
            model = vitfer.load(path)
            outcome = "handled" if _intact(model, good) else "crash"
            detail = "" if outcome == "handled" else "loaded silently different weights or class names"
        except CheckpointError as e:
            outcome, detail = ("handled", "") if str(path) in str(e) else ("crash", f"error does not name the file: {e}")
        except Exception as e:  # noqa: BLE001
            outcome, detail = "crash", f"{type(e).__name__}: {e}"
    over = lim.exceeded()
    if over:
        outcome, detail = "hang", over
    return record(outcome, what, detail)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def test_truncated_checkpoints(good, tmp_path):
    data, n = good["data"], good["header_len"]
    offsets = {0, 1, 4, 7, 8, 9, 10, n // 2, n + 7, n + 8, n + 9, len(data) // 2, len(data) - 1}
    rng = random.Random(1)
    offsets |= {rng.randrange(0, len(data)) for _ in range(25)}
    outcomes = [_try_load(_write(tmp_path, f"cut{k}.safetensors", data[:k]), good, f"truncated at {k}")
                for k in sorted(offsets)]
    assert set(outcomes) == {"handled"}
    # a truncated torch.save zip through the pretrained path
    sd = {k: v.clone() for k, v in good["state"].items()}
    buf = io.BytesIO()
    torch.save(sd, buf)
    raw = buf.getvalue()
    for k in (0, 10, len(raw) // 3, len(raw) - 30):
        p = _write(tmp_path, f"cut{k}.pth", raw[:k])
        try:
            fetch_state_dict(NAME, p)
            outcome = record("crash", f"truncated .pth at {k}", "read without error")
        except CheckpointError:
            outcome = record("handled", f"truncated .pth at {k}")
        except Exception as e:  # noqa: BLE001
            outcome = record("crash", f"truncated .pth at {k}", f"{type(e).__name__}: {e}")
        assert outcome == "handled"


def test_flipped_header_bytes(good, tmp_path):
    """Bit flips anywhere in the 8-byte length and the JSON header (metadata included)."""
    data, n = good["data"], good["header_len"]
    rng = random.Random(2)
    positions = list(range(0, 12)) + rng.sample(range(12, 8 + n), min(120, n - 4))
    outcomes = []
    for i, pos in enumerate(positions):
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        outcomes.append(_try_load(_write(tmp_path, f"h{i}.safetensors", bytes(b)), good, f"header byte {pos} flipped"))
    assert set(outcomes) == {"handled"}


def test_flipped_data_bytes_are_caught_by_the_checksum(good, tmp_path):
    data, n = good["data"], good["header_len"]
    rng = random.Random(3)
    for i in range(40):
        b = bytearray(data)
        pos = rng.randrange(8 + n, len(data))
        b[pos] ^= 1 << rng.randrange(8)
        p = _write(tmp_path, f"d{i}.safetensors", bytes(b))
        with pytest.raises(CheckpointError, match="checksum") as ei:
            vitfer.load(p)
        assert str(p) in str(ei.value)
        record("handled", f"data byte {pos} flipped")
    # ... also through every other reader of safetensors files
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(p)
    with pytest.raises(CheckpointError, match="checksum"):
        fetch_state_dict(NAME, p)
    record("handled", "flipped data through read_checkpoint / fetch_state_dict", "")


def test_checkpoint_of_another_model(good, tmp_path, capsys):
    """A ResNet checkpoint where a ViT is expected; a ViT of another size; metadata naming one
    model over tensors of another: each a CheckpointError naming the file."""
    resnet = vitfer.save(create_model("resnet18d", num_classes=3), tmp_path / "resnet.safetensors")
    bigger = save_tiny_checkpoint(tmp_path / "deeper.safetensors", depth=3, embed_dim=64)
    cases = []
    for src in (resnet, bigger):
        with pytest.raises(CheckpointError) as ei:
            create_model(NAME, pretrained=str(src), img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
        cases.append((src, ei.value))
    # metadata of the tiny ViT, tensors of the deeper one (a consistent, checksummed file)
    meta = safetensors.safe_open(str(good["path"]), "pt").metadata()
    mixed = tmp_path / "mixed.safetensors"
    atomic_save_safetensors(read_checkpoint(bigger)[0], mixed, {"vitfer": meta["vitfer"], "format": "pt"})
    with pytest.raises(CheckpointError) as ei:
        vitfer.load(mixed)
    cases.append((mixed, ei.value))
    for src, e in cases:
        assert str(src) in str(e)
        record("handled", f"checkpoint of another model ({src.name})")
    # and the training state of another model
    from vitfer.engine.runs import load_train_state, save_train_state

    other = tiny_vit(depth=3)
    state = save_train_state(tmp_path / "state.safetensors", other, torch.optim.AdamW(other.parameters()), {"epoch": 1})
    mine = tiny_vit()
    with pytest.raises(CheckpointError, match="does not fit"):
        load_train_state(state, mine, torch.optim.AdamW(mine.parameters()))
    record("handled", "training state of another model")
    # vitfer predict with the mixed file: one line, exit 2
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (32, 32), 128).save(img)
    assert main(["predict", str(mixed), str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitfer predict: error: ") and "Traceback" not in err
    record("handled", "vitfer predict with a checkpoint of another model")


def test_wrong_shape_head(good, tmp_path):
    """A consistent file (valid checksum) whose head has 5 classes while its metadata says 3."""
    tensors, meta, _ = read_checkpoint(good["path"])
    tensors = dict(tensors, **{"head.weight": torch.zeros(5, tensors["head.weight"].shape[1]),
                               "head.bias": torch.zeros(5)})
    p = tmp_path / "head.safetensors"
    atomic_save_safetensors(tensors, p, {"vitfer": meta["vitfer"], "format": "pt"})
    with pytest.raises(CheckpointError) as ei:
        vitfer.load(p)
    assert "head.weight" in str(ei.value) and str(p) in str(ei.value)
    record("handled", "wrong-shape head")
    # a head whose input width is wrong, as pretrained weights
    tensors["head.weight"] = torch.zeros(3, 7)
    tensors["head.bias"] = torch.zeros(3)
    atomic_save_safetensors(tensors, p, {"format": "pt"})
    with pytest.raises(CheckpointError, match="head.weight"):
        create_model(NAME, pretrained=str(p), img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    record("handled", "wrong-width head as pretrained weights")


class _Evil:
    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "exec":
            return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))
        return (os.system, (f"touch {self.marker}",))


def test_pickles_that_would_run_code_are_refused(good, tmp_path, capsys):
    marker = tmp_path / "pwned"
    files = []
    for how in ("system", "exec"):
        p = tmp_path / f"evil_{how}.pth"
        torch.save({"model": dict(good["state"]), "hook": _Evil(marker, how)}, p)
        files.append(p)
        legacy = tmp_path / f"evil_{how}_legacy.bin"
        legacy.write_bytes(pickle.dumps({"state_dict": _Evil(marker, how)}, protocol=2))
        files.append(legacy)
        disguised = tmp_path / f"evil_{how}.safetensors"  # a pickle behind a safetensors name
        disguised.write_bytes(p.read_bytes())
        files.append(disguised)
    # a zip with a data.pkl that is a bare protocol-0 pickle calling os.system
    zp = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    files.append(zp)
    readers = {
        "read_checkpoint": lambda p: read_checkpoint(p),
        "fetch_state_dict": lambda p: fetch_state_dict(NAME, p),
        "vitfer.load": lambda p: vitfer.load(p),
    }
    for p in files:
        for rname, read in readers.items():
            try:
                read(p)
                outcome = record("crash", f"{rname}({p.name})", "read a pickle that carries code")
            except CheckpointError:
                outcome = record("handled", f"{rname}({p.name})")
            except Exception as e:  # noqa: BLE001
                outcome = record("crash", f"{rname}({p.name})", f"{type(e).__name__}: {e}")
            assert outcome == "handled", (rname, p)
            assert not marker.exists(), f"{rname}({p.name}) ran code"
        assert main(["predict", str(p), str(p)]) == 2
        assert main(["convert", "--model", NAME, "--from", str(p), "--out", str(tmp_path / "conv")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 2, err
        assert not marker.exists()
        record("handled", f"vitfer predict / convert ({p.name})")
