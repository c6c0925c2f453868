"""Clear errors for bad checkpoints, and atomic writes (the cache never keeps a half-written file)."""
from __future__ import annotations

import logging
import os
import pickle

import pytest
import safetensors.torch
import torch
from weights_helpers import make_hub_cache, offline_env, state_dicts_equal

import vitfer
from vitfer.models import create_model
from vitfer.weights import CheckpointError, atomic_save_safetensors, read_checkpoint
from vitfer.weights.convert import reference_shapes
from vitfer.weights.hub import converted_cache_path, fetch_state_dict

NAME = "vit_tiny_patch16_224"
HUB_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def _fake_sd(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the exact keys and shapes of ``name`` (no model build needed)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in reference_shapes(name).items()}


@pytest.fixture(scope="module")
def tiny_sd():
    return _fake_sd(NAME)


def test_truncated_files(tmp_path, tiny_sd):
    st, pth = tmp_path / "t.safetensors", tmp_path / "t.pth"
    safetensors.torch.save_file(tiny_sd, str(st))
    torch.save(tiny_sd, pth)
    for p in (st, pth):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as ei:
            fetch_state_dict(NAME, p)
        msg = str(ei.value)
        print("\n" + msg)
        assert str(p) in msg and "truncated" in msg
    with pytest.raises(CheckpointError, match="truncated"):
        vitfer.load(st)
    st.write_bytes(b"\x01")  # shorter than a header
    with pytest.raises(CheckpointError, match=str(st)):
        create_model(NAME, pretrained=str(st))  # the same error through create_model


def test_checkpoint_of_another_model(tmp_path):
    """A vit_small checkpoint into vit_tiny: every shape pair named, and the model it fits."""
    p = tmp_path / "small.safetensors"
    safetensors.torch.save_file(_fake_sd("vit_small_patch16_224"), str(p))
    with pytest.raises(CheckpointError) as ei:
        create_model(NAME, pretrained=str(p))
    msg = str(ei.value)
    print("\n" + msg)
    assert str(p) in msg and NAME in msg
    assert "cls_token: (1, 1, 384) vs (1, 1, 192)" in msg
    assert "blocks.11.mlp.fc2.weight: (384, 1536) vs (192, 768)" in msg
    assert "fit 'vit_small_patch16_224'" in msg
    # a checkpoint of another family: its keys are named as missing / unexpected, and the family guessed
    q = tmp_path / "cnn.safetensors"
    safetensors.torch.save_file({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64),
                                 "head.fc.weight": torch.zeros(1000, 4096)}, str(q))
    with pytest.raises(CheckpointError) as ei:
        fetch_state_dict(NAME, q)
    msg = str(ei.value)
    assert "missing keys (150)" in msg and "blocks.0.attn.qkv.weight" in msg
    assert "unexpected keys (3): " in msg
    assert all(k in msg for k in ("features.0.weight", "features.0.bias", "head.fc.weight"))
    assert "family 'vgg'" in msg


def test_missing_and_unexpected_keys_named(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    del sd["norm.weight"], sd["blocks.3.attn.proj.bias"]
    sd["blocks.3.attn.extra"] = torch.zeros(3)
    p = tmp_path / "x.safetensors"
    safetensors.torch.save_file(sd, str(p))
    with pytest.raises(CheckpointError) as ei:
        fetch_state_dict(NAME, p)
    msg = str(ei.value)
    assert "missing keys (2): blocks.3.attn.proj.bias, norm.weight" in msg
    assert "unexpected keys (1): blocks.3.attn.extra" in msg


def test_wrong_shape_head(tmp_path, tiny_sd):
    """A head whose input width is wrong is an error (a different class count is not: re-initialised)."""
    sd = dict(tiny_sd, **{"head.weight": torch.zeros(1000, 100)})
    p = tmp_path / "h.safetensors"
    safetensors.torch.save_file(sd, str(p))
    with pytest.raises(CheckpointError, match=r"head.weight: \(1000, 100\) vs \(1000, 192\)"):
        fetch_state_dict(NAME, p)
    # a self-describing checkpoint whose head disagrees with its own metadata
    model = create_model(NAME, num_classes=7)
    path = vitfer.save(model, tmp_path / "ft.safetensors", class_names=list("abcdefg"))
    meta = safetensors.safe_open(str(path), "pt").metadata()
    meta.pop("vitfer_sha256")  # edited by another tool, which drops vitfer's checksum (kept, it would fail first)
    tensors = safetensors.torch.load_file(str(path))
    tensors["head.weight"], tensors["head.bias"] = torch.zeros(5, 192), torch.zeros(5)
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as ei:
        vitfer.load(path)
    msg = str(ei.value)
    print("\n" + msg)
    assert "head.weight: (5, 192) vs (7, 192)" in msg and "head.bias: (5,) vs (7,)" in msg and str(path) in msg


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused(tmp_path, tiny_sd):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"model": tiny_sd, "hook": _Evil(marker)}, bad)
    assert b"system" in bad.read_bytes()  # the file really carries the call
    bad_bin = tmp_path / "pytorch_model.bin"
    with open(bad_bin, "wb") as f:
        pickle.dump(_Evil(marker), f, protocol=2)  # a legacy (non-zip) pickle
    for p in (bad, bad_bin):
        with pytest.raises(CheckpointError) as ei:
            fetch_state_dict(NAME, p)
        msg = str(ei.value)
        print("\n" + msg)
        assert "refusing to load" in msg and "weights_only=True" in msg and str(p) in msg
        assert not marker.exists()
    # through the hub too
    with offline_env(tmp_path / "h") as env:
        repo = make_hub_cache(env["hub"], "acme/evil", {}, filename="pytorch_model.bin").parent
        os.replace(bad, repo / "pytorch_model.bin")
        with pytest.raises(CheckpointError, match="refusing to load"):
            create_model(NAME, pretrained="hf-hub:acme/evil")  # through create_model and the hub
    assert not marker.exists()


def test_plain_safetensors_has_no_metadata(tmp_path, tiny_sd):
    p = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(tiny_sd, str(p))
    with pytest.raises(CheckpointError) as ei:
        vitfer.load(p)
    assert "no vitfer metadata" in str(ei.value) and f"pretrained={str(p)!r}" in str(ei.value)
    with pytest.raises(CheckpointError, match="not found"):
        vitfer.load(tmp_path / "nope.safetensors")


def test_bad_sources():
    with pytest.raises(CheckpointError, match="hf-hub:<owner>/<repo>"):
        fetch_state_dict(NAME, "hf-hub:")
    with pytest.raises(CheckpointError, match="not found"):
        fetch_state_dict(NAME, "/no/such/file.safetensors")
    with pytest.raises(CheckpointError, match="pretrained must be"):
        create_model(NAME, pretrained=3)


_REAL_SAVE_FILE = safetensors.torch.save_file


def _failing_writer(exc):
    def write_half_then_fail(tensors, filename, metadata=None):
        _REAL_SAVE_FILE(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise exc

    return write_half_then_fail


def test_atomic_write_keeps_no_half_file(tmp_path, tiny_sd, monkeypatch):
    target = tmp_path / "c" / "w.safetensors"
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_writer(RuntimeError("disk on fire")))
    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_save_safetensors(tiny_sd, target)
    assert list(target.parent.iterdir()) == []
    # a good file already there survives a failed overwrite (KeyboardInterrupt included)
    monkeypatch.undo()
    atomic_save_safetensors(tiny_sd, target)
    good = target.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_writer(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_save_safetensors({k: v + 1 for k, v in tiny_sd.items()}, target)
    assert target.read_bytes() == good and [p.name for p in target.parent.iterdir()] == ["w.safetensors"]
    assert state_dicts_equal(read_checkpoint(target)[0], tiny_sd) == []


def test_converted_cache_never_half_written(tmp_path, tiny_sd, monkeypatch, caplog):
    """A failing cache write while loading pretrained weights: no cache file, no temp file."""
    with offline_env(tmp_path) as env:
        make_hub_cache(env["hub"], HUB_ID, tiny_sd)
        cache = converted_cache_path(HUB_ID)
        monkeypatch.setattr(safetensors.torch, "save_file", _failing_writer(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            create_model(NAME, pretrained=True)
        assert not cache.exists() and list(cache.parent.iterdir()) == []
        # an OSError (disk full, read-only home) only costs the cache: the model still loads
        monkeypatch.setattr(safetensors.torch, "save_file", _failing_writer(OSError(28, "No space left on device")))
        with caplog.at_level(logging.WARNING, logger="vitfer.weights"):
            model = create_model(NAME, pretrained=True)
        assert "could not write the converted cache" in caplog.text
        assert state_dicts_equal(model.state_dict(), tiny_sd) == []
        assert list(cache.parent.iterdir()) == []
        # a corrupt cache file (e.g. copied by hand) is ignored and rewritten
        monkeypatch.undo()
        cache.write_bytes(b"garbage" * 10)
        model = create_model(NAME, pretrained=True)
        assert state_dicts_equal(model.state_dict(), tiny_sd) == []
        assert state_dicts_equal(read_checkpoint(cache)[0], tiny_sd) == []


def test_save_handles_shared_tensors(tmp_path):
    """safetensors refuses tensors sharing storage: vitfer.save copies them (tied weights)."""
    model = create_model(NAME, num_classes=7)
    with torch.no_grad():
        model.blocks[1].norm1.weight = model.blocks[0].norm1.weight  # tie two parameters
    path = vitfer.save(model, tmp_path / "tied.safetensors")
    loaded = vitfer.load(path)
    assert state_dicts_equal(loaded.state_dict(), model.state_dict()) == []
