"""Regression tests of issue 18 (weights): formats told by content, timm tags kept, vitfer
checkpoints with config overrides as pretrained weights, the converted cache following the hub
commit, useful hub / name errors, failing fast without network, and metadata of scratch models.

Everything is offline: the hub is a local cache built here, and the "unreachable hub" is a closed
port on 127.0.0.1 (a guard makes any other address an error).
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from weights_helpers import make_hub_cache, offline_env, state_dicts_equal

import vitfer
from vitfer.layers.pos_embed import resample_abs_pos_embed
from vitfer.models import create_model
from vitfer.weights import CheckpointError, read_checkpoint, read_metadata
from vitfer.weights.convert import reference_shapes
from vitfer.weights.hub import converted_cache_path, fetch_state_dict

NAME = "vit_tiny_patch16_224"
HUB_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
TAGGED = "vit_tiny_patch16_224.augreg_in21k"  # a timm tag other than the default


def _fake_sd(name: str = NAME, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the keys and shapes of ``name`` at its default config."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in reference_shapes(name).items()}


def _cli(argv: list[str]) -> int:
    from vitfer.cli import main

    return main(argv)


# -- item 1: the format comes from the content, not the name -----------------------------------
def test_issue18_item1_save_pt_suffix_roundtrip(tmp_path):
    """vitfer.save writes safetensors whatever the suffix; vitfer.load and pretrained= read it back."""
    model = create_model(NAME, num_classes=7, img_size=32).eval()
    for fname in ("x.pt", "x.pth", "x.bin", "x"):
        path = vitfer.save(model, tmp_path / fname, class_names=list("abcdefg"))
        assert path.read_bytes()[8:9] == b"{", fname  # safetensors content
        tensors, meta, fmt = read_checkpoint(path)
        assert fmt == "safetensors" and "vitfer" in meta, fname
        loaded = vitfer.load(path)
        assert state_dicts_equal(loaded.state_dict(), model.state_dict()) == [], fname
        assert loaded.class_names == list("abcdefg")
    again = create_model(NAME, num_classes=7, img_size=32, pretrained=str(tmp_path / "x.pt"))
    assert state_dicts_equal(again.state_dict(), model.state_dict()) == []


def _savez_to(path: Path) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, a=np.zeros(3, np.float32))


def test_issue18_item1_mislabelled_files_read_by_content(tmp_path):
    sd = _fake_sd()
    files = {
        "zip.safetensors": ("torch", lambda p: torch.save(sd, p)),
        "legacy.npz": ("torch", lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False)),
        "st.bin": ("safetensors", lambda p: safetensors.torch.save_file(sd, str(p))),
        "arrays.pth": ("npz", _savez_to),
    }
    for fname, (fmt, write) in files.items():
        path = tmp_path / fname
        write(path)
        tensors, _, got = read_checkpoint(path)
        assert got == fmt, fname
        if fmt != "npz":
            assert state_dicts_equal(tensors, sd) == [], fname
    res = fetch_state_dict(NAME, tmp_path / "st.bin")
    assert state_dicts_equal(res.state_dict, sd) == []
    # a safetensors header whose length starts with the byte 0x80 (a pickle's first byte) is still safetensors
    path = tmp_path / "x80.safetensors"
    for pad in range(300):
        safetensors.torch.save_file({"w": torch.ones(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    tensors, _, fmt = read_checkpoint(path)
    assert fmt == "safetensors" and torch.equal(tensors["w"], torch.ones(2))


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "empty file"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n", "git-lfs pointer"),
        (b"/" * 200, "text starting with '////"),
        (bytes(range(200, 256)) * 4, "binary data starting with bytes c8 c9"),
        (b"\x80\x02" + b"/" * 100, "torch checkpoint"),
        (b"PK\x03\x04" + b"\x00" * 60, "torch checkpoint"),
        (b"\x02", "too short"),
    ],
)
def test_issue18_item1_junk_file_is_named(tmp_path, content, what):
    """Junk given as pretrained= (or to vitfer.load): a CheckpointError naming the file and what
    its content looks like, never a bare KeyError."""
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as ei:
        create_model(NAME, num_classes=7, img_size=32, pretrained=str(path))
    msg = str(ei.value)
    print("\n" + msg)
    assert str(path) in msg and what in msg
    with pytest.raises(CheckpointError, match=str(path)):
        vitfer.load(path)


# -- item 10a: a plain torch checkpoint given to vitfer.load / vitfer predict ------------------
def test_issue18_item10a_plain_torch_checkpoint_is_explained(tmp_path, capsys):
    sd = _fake_sd()
    path = tmp_path / "timm_vit_tiny.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as ei:
        vitfer.load(path)
    msg = str(ei.value)
    print("\n" + msg)
    assert "plain torch checkpoint" in msg and "no vitfer metadata" in msg
    assert "truncated" not in msg and "delete" not in msg
    assert f"--model NAME --pretrained {path}" in msg
    assert f"create_model('<model name>', pretrained={str(path)!r})" in msg
    assert _cli(["predict", str(path), str(tmp_path / "face.png")]) != 0  # an error exit
    err = capsys.readouterr().err
    assert "plain torch checkpoint" in err and f"--pretrained {path}" in err
    # an .npz release likewise
    npz = tmp_path / "ViT-Ti_16.npz"
    np.savez(npz, a=np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="JAX .npz checkpoint"):
        vitfer.load(npz)
    # and the file does load as the pretrained weights of a named model
    model = create_model(NAME, pretrained=str(path))
    assert state_dicts_equal(model.state_dict(), sd) == []


# -- item 2: a timm tag in the model name reaches the hub fetch everywhere ---------------------
def test_issue18_item2_tag_reaches_the_fetch(tmp_path, capsys):
    default_sd, tagged_sd = _fake_sd(seed=0), _fake_sd(seed=1)
    with offline_env(tmp_path) as env:
        make_hub_cache(env["hub"], HUB_ID, default_sd)
        make_hub_cache(env["hub"], f"timm/{TAGGED}", tagged_sd)
        # Python: the tag is honoured and kept
        model = create_model(TAGGED, pretrained=True)
        assert state_dicts_equal(model.state_dict(), tagged_sd) == []
        assert model.model_name == NAME
        assert model.pretrained_cfg["hf_hub_id"] == f"timm/{TAGGED}" and model.pretrained_cfg["tag"] == "augreg_in21k"
        assert model.pretrained_source == f"hf-hub:timm/{TAGGED}@main"
        assert read_metadata(vitfer.save(model, tmp_path / "m.safetensors"))["init"] == f"hf-hub:timm/{TAGGED}@main"
        scratch = create_model(TAGGED, num_classes=7, img_size=32)  # the tag stays visible without weights too
        assert scratch.pretrained_cfg["hf_hub_id"] == f"timm/{TAGGED}" and scratch.pretrained_source is None
        # command line: `vitfer convert --model NAME.TAG` converts that tag and says so
        out = tmp_path / "out"
        assert _cli(["convert", "--model", TAGGED, "--out", str(out)]) == 0
        f = out / f"{TAGGED}.safetensors"
        assert f"wrote {f}" in capsys.readouterr().out
        assert not (out / f"{NAME}.safetensors").exists()
        loaded = vitfer.load(f)
        assert state_dicts_equal(loaded.state_dict(), tagged_sd) == []
        assert loaded.checkpoint_info["source"] == f"hf-hub:timm/{TAGGED}@main"
        assert loaded.checkpoint_info["tag"] == "augreg_in21k"
        models = json.loads((out / "manifest.json").read_text())["models"]
        assert models[TAGGED]["hf_hub_id"] == f"timm/{TAGGED}" and models[TAGGED]["tag"] == "augreg_in21k"
        assert models[TAGGED]["converted"]["file"] == f.name
        assert models[TAGGED]["converted"]["source_info"]["hub_repo"] == f"timm/{TAGGED}"
        assert "converted" not in models[NAME] and models[NAME]["hf_hub_id"] == HUB_ID
        # the default converts beside it; the tagged entry stays
        assert _cli(["convert", "--model", NAME, "--out", str(out)]) == 0
        models = json.loads((out / "manifest.json").read_text())["models"]
        assert models[TAGGED]["converted"]["file"] == f.name and models[NAME]["converted"]["file"] == f"{NAME}.safetensors"
        # an unknown tag is an error naming it, never the default weights
        with pytest.raises(CheckpointError) as ei:
            create_model(f"{NAME}.bogus_tag", pretrained=True)
        assert f"timm/{NAME}.bogus_tag" in str(ei.value)
        capsys.readouterr()
        assert _cli(["convert", "--model", f"{NAME}.bogus_tag", "--out", str(tmp_path / "o2")]) != 0  # an error exit
        assert f"timm/{NAME}.bogus_tag" in capsys.readouterr().err
        assert not (tmp_path / "o2").exists()
    # the helpers train.py and the command line use
    from vitfer.models.registry import pretrained_hub_id, pretrained_tag

    assert pretrained_tag(TAGGED) == "augreg_in21k" and pretrained_tag(NAME) is None
    assert pretrained_hub_id(TAGGED) == f"timm/{TAGGED}" and pretrained_hub_id(NAME) == HUB_ID
    assert pretrained_hub_id("resnet18d.a1_in1k") == "timm/resnet18d.a1_in1k"


# -- item 3: a vitfer checkpoint is validated against the architecture it describes ------------
def test_issue18_item3_checkpoint_with_overrides_as_pretrained(tmp_path):
    kw = dict(img_size=48, patch_size=6, num_classes=7)
    model = create_model(NAME, **kw).eval()
    path = vitfer.save(model, tmp_path / "p6.safetensors", class_names=list("abcdefg"))
    again = create_model(NAME, pretrained=str(path), **kw).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again.pretrained_source == str(path) and again.class_names == list("abcdefg")
    # same patch, another size: position embeddings resampled from the checkpoint's 8x8 grid
    bigger = create_model(NAME, pretrained=str(path), img_size=60, patch_size=6, num_classes=7)
    assert bigger.pos_embed.shape == (1, 1 + 10 * 10, 192)
    assert torch.equal(bigger.pos_embed.detach(), resample_abs_pos_embed(model.pos_embed.detach(), (10, 10), (8, 8)))
    # another patch size cannot take these patch-embedding weights: named, shapes and all
    with pytest.raises(CheckpointError, match=r"patch_embed.proj.weight: \(192, 3, 6, 6\) vs \(192, 3, 16, 16\)"):
        create_model(NAME, pretrained=str(path), img_size=48, num_classes=7)


def test_issue18_item3_non_square_checkpoint_resampled(tmp_path):
    """A checkpoint saved at 48x64 loads at 64x64 and 48x48: its 6x8 grid comes from its metadata."""
    model = create_model(NAME, img_size=(48, 64), patch_size=8, num_classes=7).eval()
    path = vitfer.save(model, tmp_path / "wide.safetensors")
    pe = model.pos_embed.detach()
    for size, grid in ((64, (8, 8)), (48, (6, 6))):
        m = create_model(NAME, pretrained=str(path), img_size=size, patch_size=8, num_classes=7).eval()
        assert m.pos_embed.shape == (1, 1 + grid[0] * grid[1], 192)
        assert torch.equal(m.pos_embed.detach(), resample_abs_pos_embed(pe, grid, (6, 8), 1))
        with torch.no_grad():
            out = m(torch.randn(2, 3, size, size))
        assert out.shape == (2, 7) and torch.isfinite(out).all()
    same = create_model(NAME, pretrained=str(path), img_size=(48, 64), patch_size=8, num_classes=7).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    # CrossViT: one grid per branch, both non-square
    cv = create_model("crossvit_tiny_240", img_size=(48, 72), num_classes=7).eval()
    grids = [tuple(p.grid_size) for p in cv.patch_embed]
    assert grids[0][0] != grids[0][1]
    cv_path = vitfer.save(cv, tmp_path / "cv.safetensors")
    cv2 = create_model("crossvit_tiny_240", pretrained=str(cv_path), img_size=96, num_classes=7).eval()
    for i, p in enumerate(cv2.patch_embed):
        want = resample_abs_pos_embed(getattr(cv, f"pos_embed_{i}").detach(), p.grid_size, grids[i], 1)
        assert torch.equal(getattr(cv2, f"pos_embed_{i}").detach(), want), i
    with torch.no_grad():
        out = cv2(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


# -- item 6: the converted cache follows the hub's commit --------------------------------------
def _write_snapshot(hub: Path, repo_id: str, sd: dict[str, torch.Tensor], commit: str, revision: str = "main") -> None:
    repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    safetensors.torch.save_file(sd, str(snap / "model.safetensors"), metadata={"format": "pt"})
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)


def test_issue18_item6_converted_cache_follows_refs_main(tmp_path):
    a, b = _fake_sd(seed=0), _fake_sd(seed=1)
    commit_a, commit_b = "a" * 40, "b" * 40
    with offline_env(tmp_path) as env:
        _write_snapshot(env["hub"], HUB_ID, a, commit_a)
        assert state_dicts_equal(fetch_state_dict(NAME, True).state_dict, a) == []
        cache = converted_cache_path(HUB_ID)
        assert read_metadata(cache)["source_info"]["commit"] == commit_a
        _write_snapshot(env["hub"], HUB_ID, b, commit_b)  # refs/main moves to a commit with other weights
        res = fetch_state_dict(NAME, True)
        assert state_dicts_equal(res.state_dict, b) == []
        assert res.info["commit"] == commit_b and read_metadata(cache)["source_info"]["commit"] == commit_b
        model = create_model(NAME, pretrained=True)
        assert state_dicts_equal(model.state_dict(), b) == []
        # an unchanged commit reuses the converted file
        stamp = cache.stat().st_mtime_ns
        assert state_dicts_equal(fetch_state_dict(NAME, True).state_dict, b) == []
        assert cache.stat().st_mtime_ns == stamp
        # offline with the hub cache gone: the warm converted cache still serves
        shutil.rmtree(env["hub"])
        assert state_dicts_equal(fetch_state_dict(NAME, True).state_dict, b) == []
        assert [p.name for p in cache.parent.iterdir()] == [cache.name]


# -- item 14: errors that say what to do, on the command line and in Python --------------------
def _hf_console_scripts() -> set[str]:
    dist = importlib.metadata.distribution("huggingface_hub")
    return {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}


def test_issue18_item14_cold_cache_message_for_cli_and_python(tmp_path):
    repo = f"timm/{TAGGED}"
    with offline_env(tmp_path) as env:
        with pytest.raises(CheckpointError) as ei:
            fetch_state_dict(TAGGED, True)
        conv = converted_cache_path(repo)
    msg = str(ei.value)
    print("\n" + msg)
    scripts = _hf_console_scripts()
    cli = "hf" if "hf" in scripts or "huggingface-cli" not in scripts else "huggingface-cli"
    assert f"`{cli} download {repo} model.safetensors --cache-dir DIR`" in msg
    if cli == "hf":
        assert "huggingface-cli" not in msg
    assert f"vitfer finetune --model {TAGGED} --pretrained /path/to/model.safetensors" in msg
    assert f"vitfer convert --model {TAGGED} --from /path/to/model.safetensors --out DIR" in msg
    assert f"create_model({TAGGED!r}, pretrained='/path/to/model.safetensors')" in msg
    assert str(env["hub"]) in msg and "HF_HUB_OFFLINE" in msg and str(conv) in msg


def test_issue18_item14_unknown_model_suggests_names(tmp_path, capsys):
    with pytest.raises(KeyError) as ei:
        create_model("vit_tiny_patch16_244")
    msg = ei.value.args[0]
    assert "unknown model 'vit_tiny_patch16_244'" in msg and "did you mean vit_tiny_patch16_224" in msg
    assert "`vitfer models`" in msg and "list_models()" in msg
    assert _cli(["convert", "--model", "convit_tinny", "--out", str(tmp_path)]) != 0  # an error exit
    err = capsys.readouterr().err
    assert "unknown model 'convit_tinny'" in err and "convit_tiny" in err and "`vitfer models`" in err
    with pytest.raises(KeyError, match="did you mean convit_tiny"):  # a tagged name: the architecture part
        create_model("convit_tinny.fb_in1k")


# -- item 15: no network -> fail (or use the cache) at once ------------------------------------
@pytest.fixture
def loopback_only(monkeypatch):
    """Any connection or name lookup other than loopback fails (the tests never leave the machine)."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    allowed = {"127.0.0.1", "localhost", "::1"}

    def check(host) -> None:
        if host not in allowed:
            raise OSError(f"test guard: refusing to contact {host!r}")

    def connect(self, address):
        if isinstance(address, tuple):
            check(address[0])
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch, loopback_only):
    """Online mode, with HF_ENDPOINT on a closed port of 127.0.0.1."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "VITFER_HUB_PROBE", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("VITFER_HOME", str(tmp_path / "vitfer"))
    return {"port": port, "hub": tmp_path / "hub"}


def test_issue18_item15_unreachable_hub_fails_fast(unreachable_hub, caplog):
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        with pytest.raises(CheckpointError) as ei:
            fetch_state_dict(NAME, True)
    elapsed = time.monotonic() - t0
    msg = str(ei.value)
    print(f"\nfailed after {elapsed:.2f} s:\n{msg}")
    assert elapsed < 5
    assert f"could not be reached (127.0.0.1:{unreachable_hub['port']}" in msg and "not available" in msg
    assert "HF_HUB_OFFLINE" not in msg.split("\n")[0]
    assert "--pretrained /path/to/model.safetensors" in msg
    assert "unreachable" in caplog.text


def test_issue18_item15_unreachable_hub_uses_warm_cache(unreachable_hub):
    sd = _fake_sd()
    make_hub_cache(unreachable_hub["hub"], HUB_ID, sd)
    t0 = time.monotonic()
    res = fetch_state_dict(NAME, True)
    assert time.monotonic() - t0 < 5
    assert state_dicts_equal(res.state_dict, sd) == []
    # and from the converted cache alone
    shutil.rmtree(unreachable_hub["hub"])
    t0 = time.monotonic()
    assert state_dicts_equal(fetch_state_dict(NAME, True).state_dict, sd) == []
    assert time.monotonic() - t0 < 5


def test_issue18_item15_one_line_per_retry():
    """huggingface_hub logs each retry twice (the error, then "Retrying in ..."), and with a
    configured root logger (the command line) every line came out twice more: one line remains."""
    from vitfer.weights.hub import _hub_logging

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    lib, root = logging.getLogger("huggingface_hub"), logging.getLogger()
    ours, theirs = Collect(), Collect()
    root.addHandler(ours)
    lib.addHandler(theirs)
    http = logging.getLogger("huggingface_hub.utils._http")
    try:
        with _hub_logging():
            http.warning("'[Errno 111] Connection refused' thrown while requesting HEAD http://127.0.0.1:9/x")
            http.warning("Retrying in 1s [Retry 1/5].")
        assert len(ours.lines) + len(theirs.lines) == 1
        assert "Connection refused" in (ours.lines + theirs.lines)[0]
        assert lib.propagate  # restored
    finally:
        root.removeHandler(ours)
        lib.removeHandler(theirs)


# -- item 19: a model trained from scratch describes itself -----------------------------------
def test_issue18_item19_scratch_model_metadata(tmp_path):
    model = create_model(NAME, num_classes=7, img_size=32)
    assert model.pretrained_cfg["num_classes"] == 7 and model.pretrained_source is None
    path = vitfer.save(model, tmp_path / "scratch.safetensors", class_names=list("abcdefg"))
    meta = read_metadata(path)
    assert meta["init"] == "scratch" and meta["num_classes"] == 7 and meta["source"] is None
    assert HUB_ID not in json.dumps(meta)
    loaded = vitfer.load(path)
    assert loaded.pretrained_cfg["num_classes"] == 7 and tuple(loaded.pretrained_cfg["input_size"]) == (3, 32, 32)
    with offline_env(tmp_path / "h") as env:
        make_hub_cache(env["hub"], HUB_ID, _fake_sd())
        ft = create_model(NAME, pretrained=True, num_classes=7)
    assert ft.pretrained_cfg["num_classes"] == 7 and ft.pretrained_source == f"hf-hub:{HUB_ID}@main"
    meta = read_metadata(vitfer.save(ft, tmp_path / "ft.safetensors", source="fine-tuned on CK+48"))
    assert meta["init"] == f"hf-hub:{HUB_ID}@main" and meta["source"] == "fine-tuned on CK+48"
    assert meta["num_classes"] == 7
    meta = read_metadata(vitfer.save(ft, tmp_path / "ft2.safetensors", init="my own init"))
    assert meta["init"] == "my own init"
