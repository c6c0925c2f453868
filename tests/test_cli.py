"""The ``vitfer`` command line: ``models``, ``convert``, ``manifest`` (offline)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm

sys.path.insert(0, str(Path(__file__).parent / "weights"))
from parity import randomize_  # noqa: E402
from weights_helpers import make_hub_cache, offline_env, state_dicts_equal, timm_vit_to_npz  # noqa: E402

import vitfer  # noqa: E402
from vitfer.cli import build_parser, main  # noqa: E402
from vitfer.models.registry import get_model_spec, list_models  # noqa: E402
from vitfer.weights.convert import import_all_families  # noqa: E402
from vitfer.weights.io import sha256_file  # noqa: E402

NAME = "vit_tiny_patch16_224"
HUB_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def timm_sd():
    ref = timm.create_model(NAME, pretrained=False)
    randomize_(ref, seed=5)
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "family", "params"]
    row = next(ln for ln in lines if ln.startswith(NAME + " "))
    assert row.split()[1:5] == ["vit", "5.72", "3x224x224", f"hf-hub:{HUB_ID}"]
    assert len(lines) == 1 + len(list_models())
    assert main(["models", "--json", "--family", "vit", "vit_*_224"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["params"] for r in rows}["vit_base_patch16_224"] == 86567656
    assert main(["models", "nothing_*"]) == 1


def test_convert_from_hub_then_load(tmp_path, timm_sd, capsys):
    with offline_env(tmp_path) as env:
        src = make_hub_cache(env["hub"], HUB_ID, timm_sd)
        out = tmp_path / "out"
        assert main(["convert", "--model", NAME, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    f = out / f"{NAME}.safetensors"
    assert f"wrote {f}" in printed
    model = vitfer.load(f)
    assert state_dicts_equal(model.state_dict(), timm_sd) == []
    assert model.checkpoint_info["source"] == f"hf-hub:{HUB_ID}@main"
    entry = json.loads((out / "manifest.json").read_text())["models"][NAME]
    conv = entry["converted"]
    assert conv["file"] == f.name and conv["sha256"] == sha256_file(f)
    assert conv["source_info"]["sha256"] == sha256_file(src) and conv["source_info"]["hub_repo"] == HUB_ID
    assert conv["source_info"]["commit"] == src.parent.name and conv["source_info"]["layout"] == "timm"
    assert entry["hf_hub_id"] == HUB_ID


def test_convert_from_npz_file(tmp_path, timm_sd, capsys):
    npz = tmp_path / "ViT-Ti_16.npz"
    np.savez(npz, **timm_vit_to_npz(timm_sd, num_heads=3))
    out = tmp_path / "w"
    assert main(["convert", "--model", NAME, "--from", str(npz), "--out", str(out),
                 "--manifest", str(tmp_path / "m.json")]) == 0
    model = vitfer.load(out / f"{NAME}.safetensors")
    assert state_dicts_equal(model.state_dict(), timm_sd) == []
    rec = json.loads((tmp_path / "m.json").read_text())["models"][NAME]["converted"]
    assert rec["source_info"] == {"file": npz.name, "sha256": sha256_file(npz), "layout": "google-npz"}


def test_convert_errors(tmp_path, capsys):
    with offline_env(tmp_path):
        assert main(["convert", "--model", NAME, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "not available" in err and HUB_ID in err
    assert main(["convert", "--model", "vit_tiniest", "--out", str(tmp_path)]) == 2
    assert "unknown model 'vit_tiniest'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--out", str(tmp_path)])  # --model is required


def test_manifest_command(tmp_path, capsys):
    path = tmp_path / "manifest.json"
    assert main(["manifest", "--out", str(path)]) == 0
    m = json.loads(path.read_text())
    assert set(m["models"]) == set(list_models())
    assert m["models"][NAME]["original"]["format"] == "google-npz"


def test_checkout_manifest_is_current():
    """weights/manifest.json (tracked) lists every registered model with its default source.
    If this fails after a family was added: run `vitfer manifest` in the checkout."""
    import_all_families()
    m = json.loads((REPO / "weights" / "manifest.json").read_text())
    expect = {n: get_model_spec(n).pretrained_cfg.hf_hub_id for n in list_models()}
    assert {n: e["hf_hub_id"] for n, e in m["models"].items()} == expect
    assert (REPO / "weights" / "README.md").is_file()


def test_subcommands_are_pluggable():
    """Each subcommand comes from an add_<cmd>(subparsers) function; help lists them all."""
    helptext = build_parser().format_help()
    for cmd in ("models", "convert", "manifest"):
        assert cmd in helptext


def test_cli_finetune_and_predict(tmp_path, capsys):
    """The main job end to end on synthetic faces, then predict on images the test draws itself."""
    import numpy as np
    from PIL import Image

    from vitfer.cli import main

    out = tmp_path / "run"
    rc = main([
        "finetune", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8",
        "--synthetic-n", "56", "--epochs", "1", "--batch-size", "8", "--out", str(out),
    ])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "epoch 1/1" in text
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()

    rng = np.random.default_rng(0)
    grey = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(rgba)
    rc = main(["predict", str(out / "model.safetensors"), str(grey), str(rgba), "--top", "2"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(grey)) and "%" in lines[0]

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(out / "model.safetensors"), str(bad)]) == 1
    assert "bad.png" in capsys.readouterr().err


def test_unknown_family_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["models", "--family", "nope"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
