"""Regression tests for issue 18 (defects in fine-tuning, the CLI and the examples), one a defect,
named by its item number. The weights-side items live in tests/weights, the data-side ones in
tests/data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import vitfer
from vitfer.cli import main
from vitfer.train import FinetuneConfig, RunFolderError, TrainingError, build_model, classification_metrics, finetune

REPO = Path(__file__).resolve().parents[1]
# A tiny job: 2-block ViT at 32 px, a few synthetic faces.
TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8", "--synthetic-n", "42",
        "--epochs", "1", "--batch-size", "8"]


def _tiny_cfg(tmp_path: Path, **kw) -> FinetuneConfig:
    base = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, synthetic_n=42, epochs=1, batch_size=8,
                model_overrides={"depth": 1}, out_dir=str(tmp_path / "run"))
    base.update(kw)
    return FinetuneConfig(**base)


def _png(path: Path, mode: str = "L", size=(40, 36), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture(scope="module")
def timm_vit_file(tmp_path_factory) -> Path:
    """A plain timm state dict of vit_tiny_patch16_224 (random weights) as safetensors."""
    import timm

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path_factory.mktemp("timm") / "vit_tiny.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return path


# 4 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18d", "vit_tiny_patch16_224"])
def test_item4_one_channel_model_trains_and_predicts(tmp_path, capsys, name):
    cfg = _tiny_cfg(tmp_path, model=name, model_overrides={"in_chans": 1, **({"depth": 1} if "vit" in name else {})},
                    max_steps=2)
    res = finetune(cfg)
    model = vitfer.load(res["checkpoint"])
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    rgb = _png(tmp_path / "rgb.png", "RGB")
    grey = _png(tmp_path / "grey.png", "L")
    assert main(["predict", res["checkpoint"], str(rgb), str(grey)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


# 7 ---------------------------------------------------------------------------------------------
def test_item7_bad_data_is_refused_before_the_folder_is_touched(tmp_path):
    first = finetune(_tiny_cfg(tmp_path, max_steps=1))
    before = {f: (Path(first["out_dir"]) / f).read_bytes() for f in ("model.safetensors", "metrics.json")}
    with pytest.raises(ValueError, match="test"):
        finetune(_tiny_cfg(tmp_path, test_size=0, overwrite=True))
    assert {f: (Path(first["out_dir"]) / f).read_bytes() for f in before} == before


def test_item7_a_failed_rerun_leaves_only_its_own_files(tmp_path):
    out = tmp_path / "run"
    finetune(_tiny_cfg(tmp_path, max_steps=1))
    assert (out / "metrics.json").is_file()
    with pytest.raises(TrainingError, match=r"epoch 1, step \d+"):
        finetune(_tiny_cfg(tmp_path, lr=1e12, optimizer="sgd", overwrite=True, label_smoothing=0.0))
    assert not (out / "metrics.json").exists()  # the first run's metrics are gone with its checkpoint
    state = json.loads((out / "config.json").read_text())
    assert state["status"] == "failed" and "TrainingError" in state["error"]
    assert state["config"]["lr"] == 1e12


# 8 ---------------------------------------------------------------------------------------------
def test_item8_folder_dataset_needs_data_dir(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VITFER_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="--data-dir"):
        FinetuneConfig(dataset="folder")
    assert main(["finetune", "--dataset", "folder", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# 9 and 18 ---------------------------------------------------------------------------------------
def test_item9_class_without_test_images_is_absent_not_zero():
    m = classification_metrics([[3, 1, 0], [0, 0, 0], [1, 0, 1]], ["a", "b", "c"])
    assert m["per_class_accuracy"] == {"a": 0.75, "b": None, "c": 0.5}
    assert m["uar"] == pytest.approx((0.75 + 0.5) / 2)


def test_item18_uar_and_macro_f1():
    # truth [0, 1, 2, 2], prediction [0, 1, 1, 2]
    m = classification_metrics([[1, 0, 0], [0, 1, 0], [0, 1, 1]], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["uar"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # a class predicted but never true counts as F1 = 0 (as scikit-learn's macro average)
    m = classification_metrics([[1, 1], [0, 0]], ["a", "b"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2) and m["uar"] == pytest.approx(0.5)


def test_item18_metrics_in_json_and_printed_once(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for k in ("accuracy", "uar", "macro_f1", "per_class_accuracy", "confusion"):
        assert k in metrics["test"]
    assert metrics["test_accuracy"] == metrics["test"]["accuracy"]
    assert text.count("test accuracy") == 1, text  # once, in one format (the log line no longer repeats it)
    assert f"test accuracy {100 * metrics['test']['accuracy']:.1f}%" in text and "UAR" in text and "macro-F1" in text


# 10 and 13 ------------------------------------------------------------------------------------------
def test_item13_pretrained_defaults_to_the_models_own_sizes(timm_vit_file):
    model = build_model(FinetuneConfig(model="vit_tiny_patch16_224", pretrained=str(timm_vit_file)), 7)
    assert model.cfg.patch_size == 16 and model.pretrained_cfg["input_size"] == (3, 224, 224)
    model = build_model(FinetuneConfig(model="vit_tiny_patch16_224"), 7)  # from scratch: 48 px, patch 6
    assert model.cfg.patch_size == 6 and model.pretrained_cfg["input_size"] == (3, 48, 48)


def test_item13_cli_pretrained_file_without_patch_flag(tmp_path, timm_vit_file, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--model", "vit_tiny_patch16_224", "--pretrained", str(timm_vit_file), "--img-size", "32",
            "--synthetic-n", "28", "--epochs", "1", "--batch-size", "8", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    meta = vitfer.weights.read_metadata(out / "model.safetensors")
    assert meta["input_size"] == [3, 32, 32] and "patch_size" not in meta["overrides"]


def test_item10_patch_override_with_pretrained_names_the_flag(timm_vit_file, tmp_path, capsys):
    with pytest.raises(ValueError, match="--patch-size 0"):
        build_model(FinetuneConfig(model="vit_tiny_patch16_224", pretrained=str(timm_vit_file), patch_size=6), 7)
    rc = main(["finetune", "--model", "vit_tiny_patch16_224", "--pretrained", str(timm_vit_file), "--patch-size",
               "6", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--patch-size 0" in err and "patch_size=None" not in err.split("(")[0]


# 11 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,words",
    [
        (["--device", "bogus"], "device"),
        (["--label-smoothing", "2"], "label_smoothing"),
        (["--epochs", "0"], "epochs"),
        (["--lr", "-1"], "lr"),
        (["--split", "kfold", "--fold", "7"], "fold"),
    ],
)
def test_item11_bad_config_is_one_line_and_status_2(tmp_path, capsys, args, words):
    assert main(["finetune", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_item11_cuda_without_gpu(tmp_path, capsys):
    assert main(["finetune", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["finetune", "--patch-size", "-1"], ["finetune", "--img-size", "-5"],
                                  ["predict", "x.safetensors", "a.png", "--top", "-2"],
                                  ["predict", "x.safetensors", "a.png", "--top", "0"]])
def test_item11_bad_numbers_are_usage_errors(capsys, args):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "positive" in err


def test_item11_non_finite_loss_is_a_message(tmp_path, capsys):
    rc = main(["finetune", *TINY, "--lr", "1e12", "--optimizer", "sgd", "--label-smoothing", "0",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "epoch 1, step" in err and "--lr" in err


# 12 -------------------------------------------------------------------------------------------
def test_item12_main_twice_logs_each_line_once(tmp_path, capsys):
    for k in range(2):
        assert main(["finetune", *TINY, "--out", str(tmp_path / f"o{k}")]) == 0
        text = capsys.readouterr().out
        assert text.count("epoch 1/1") == 1, text


# 16 -------------------------------------------------------------------------------------------
def test_item16_each_run_gets_its_own_folder_and_none_is_replaced(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", *TINY]) == 0
    assert main(["finetune", *TINY]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("vit_tiny_patch16_224-synthetic-") for r in runs)
    assert f"run folder: runs{os.sep}{runs[0]}" in capsys.readouterr().out
    first = tmp_path / "runs" / runs[0]
    before = (first / "model.safetensors").read_bytes()
    assert main(["finetune", *TINY, "--seed", "3", "--out", str(first)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err
    assert (first / "model.safetensors").read_bytes() == before
    assert main(["finetune", *TINY, "--seed", "3", "--out", str(first), "--overwrite"]) == 0
    assert json.loads((first / "config.json").read_text())["config"]["seed"] == 3


def test_item16_refusal_message(tmp_path):
    finetune(_tiny_cfg(tmp_path, max_steps=1))
    with pytest.raises(RunFolderError, match=r"already holds a run \(vit_tiny_patch16_224 on synthetic, finished\)"):
        finetune(_tiny_cfg(tmp_path, max_steps=1))


# 17 -------------------------------------------------------------------------------------------
def test_item17_face_crops_are_evaluated_whole(tmp_path):
    from vitfer.data import CenterCrop, Resize, build_transforms

    res = finetune(_tiny_cfg(tmp_path, max_steps=1))
    model = vitfer.load(res["checkpoint"])
    assert model.pretrained_cfg["crop_pct"] == 1.0
    tf = build_transforms(model.pretrained_cfg, train=False)
    resize = next(t for t in tf if isinstance(t, Resize))
    assert resize.output_size(32, 32) == (32, 32)  # no 36 px resize with its edges cut off
    x = torch.rand(3, 32, 32)
    crop = [t for t in tf if isinstance(t, CenterCrop)]
    assert all(c(x).shape == x.shape for c in crop)


# 19 (the fine-tuning side) -------------------------------------------------------------------------
def test_item19_checkpoint_describes_the_trained_model(tmp_path):
    res = finetune(_tiny_cfg(tmp_path, max_steps=1))
    meta = vitfer.weights.read_metadata(res["checkpoint"])
    assert meta["num_classes"] == 7 and meta["overrides"]["num_classes"] == 7
    model = vitfer.load(res["checkpoint"])
    assert model.pretrained_cfg.get("num_classes", 7) == 7
    assert "scratch" in json.dumps(meta)


# 20 -------------------------------------------------------------------------------------------
def test_item20_docs_point_inside_the_repository():
    files = [REPO / "README.md", *REPO.glob("examples/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("vitfer/**/*.py")]
    for f in files:
        text = f.read_text()
        for bad in ("MEASURED.md", "REFERENCE.md", "DESIGN.md", "no hub here"):
            assert bad not in text, f"{f.relative_to(REPO)} mentions {bad!r}, which is not in the repository"


# 21 -------------------------------------------------------------------------------------------
def _example(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_item21_example_errors_are_messages(tmp_path):
    r = _example("examples/finetune_jaffe.py", "--n-folds", "1", "--out", str(tmp_path))
    assert r.returncode == 2 and "at least 2 folds" in r.stderr and "Traceback" not in r.stderr
    r = _example("examples/finetune_ckplus48.py", "--pretrained", str(tmp_path / "missing.safetensors"),
                 "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr


def test_item21_jaffe_example_names_folds_and_subjects(data_root, tmp_path):
    r = _example("examples/finetune_jaffe.py", "--data-dir", str(data_root), "--n-folds", "5", "--epochs", "1",
                 "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("fold ")]
    assert len(lines) == 5 and lines[0].startswith("fold 1/5 (test subjects ") and "+-" in r.stdout
    r = _example("examples/finetune_jaffe.py", "--data-dir", str(data_root), "--split", "random", "--epochs", "1",
                 "--out", str(tmp_path / "r"))
    assert r.returncode == 0 and "+-" not in r.stdout and "random split): test accuracy" in r.stdout


# 22 -------------------------------------------------------------------------------------------
def test_item22_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for d in ("(default: 5)", "(default: auto)", "(default: 0.1)", "(default: vit_tiny_r18d_48)"):
        assert d in text


def test_item22_readme_split_sizes(data_root):
    from vitfer.data import load_dataset, make_split

    split = make_split(load_dataset("ckplus48", data_root), "random", seed=0, val_size=0.1)
    sizes = f"{len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test"
    assert sizes == "703 train / 78 val / 200 test"
    assert sizes in (REPO / "README.md").read_text()


# 23 -------------------------------------------------------------------------------------------
def test_item23_skipped_files_warning_is_one_plain_line(tmp_path, capsys):
    root = tmp_path / "faces"
    for c in ("happy", "sad"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            _png(root / c / f"{i}.png", seed=i + (10 if c == "sad" else 0))
    (root / "sad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    rc = main(["finetune", "--dataset", "folder", "--data-dir", str(root), "--model", "resnet18d", "--img-size", "32",
               "--epochs", "1", "--batch-size", "4", "--val-size", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.startswith("warning: ") and "broken.png" in err, err
    assert "warnings.warn" not in err and ".py:" not in err and "SkippedFilesWarning" not in err
