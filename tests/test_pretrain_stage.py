"""Pretraining on another dataset first (``pretrain``, ``--pretrain``) and JAFFE's face crops
(``crop_faces`` on JAFFE), which the scratch recipe uses for JAFFE."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from vitfer.engine import FinetuneConfig, finetune
from vitfer.engine.config import recipe_values


def _cfg(tmp_path, data_root, **kw) -> FinetuneConfig:
    base = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, dataset="jaffe", data_dir=str(data_root / "jaffe"),
                split="subject", pretrain="synthetic", synthetic_n=64, epochs=1, batch_size=16,
                model_overrides={"depth": 1, "embed_dim": 32, "num_heads": 1}, lr=1e-3, warmup_steps=1,
                out_dir=str(tmp_path / "run"))
    base.update(kw)
    return FinetuneConfig(**base)


def test_pretrain_settings_are_checked():
    with pytest.raises(ValueError, match="pretrain"):
        FinetuneConfig(pretrain="imagenet")
    with pytest.raises(ValueError, match="own dataset"):
        FinetuneConfig(dataset="synthetic", pretrain="synthetic")
    with pytest.raises(ValueError, match="exclude each other"):
        FinetuneConfig(dataset="jaffe", pretrain="ckplus48", pretrained="x.safetensors")
    with pytest.raises(ValueError, match="crop-faces"):
        FinetuneConfig(dataset="ckplus48", crop_faces=True)


def test_run_pretrains_first_and_starts_from_those_weights(tmp_path, data_root, caplog):
    caplog.set_level(logging.INFO, logger="vitfer")
    res = finetune(_cfg(tmp_path, data_root))
    pre = tmp_path / "run" / "pretrain-synthetic"
    stored = json.loads((pre / "config.json").read_text())
    assert stored["status"] == "finished" and stored["config"]["dataset"] == "synthetic"
    assert stored["config"]["model_overrides"] == {"depth": 1, "embed_dim": 32, "num_heads": 1}
    assert res["pretrain"]["dataset"] == "synthetic" and res["pretrain"]["out_dir"] == str(pre)
    assert "pretraining on synthetic first" in caplog.text

    # The run's first weights are the pretraining run's (the classifier aside): check by
    # training zero steps' worth, i.e. comparing the pretrained checkpoint with a fresh build.
    from vitfer.engine.model import build_model
    from vitfer.engine.pretrain import load_pretraining
    from vitfer.weights import load

    pre_model = load(pre / "model.safetensors")
    cfg = _cfg(tmp_path, data_root)
    model = build_model(cfg, 7)
    load_pretraining(model, cfg, pre / "model.safetensors", pre_model.class_names, res["classes"])
    for k, v in pre_model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.state_dict()[k], v), k

    # Overwriting the run reuses the finished pretraining run while its config is the same
    caplog.clear()
    before = (pre / "metrics.json").stat().st_mtime_ns
    again = finetune(_cfg(tmp_path, data_root, overwrite=True))
    assert "reusing the finished run" in caplog.text
    assert (pre / "metrics.json").stat().st_mtime_ns == before
    assert again["test"] == res["test"]  # the same start, whether pretrained now or reused
    # ... and trains it again when the pretraining would differ
    caplog.clear()
    finetune(_cfg(tmp_path, data_root, overwrite=True, seed=1))
    assert "reusing" not in caplog.text and json.loads((pre / "config.json").read_text())["config"]["seed"] == 1


def test_missing_pretraining_data_is_named(tmp_path, monkeypatch, data_root):
    monkeypatch.delenv("VITFER_DATA_DIR", raising=False)
    lone = tmp_path / "only_jaffe"
    lone.mkdir()
    (lone / "jaffe").symlink_to(data_root / "jaffe")
    with pytest.raises(ValueError, match="pretraining on ckplus48.*not found.*--pretrain none"):
        finetune(_cfg(tmp_path, data_root, data_dir=str(lone / "jaffe"), pretrain="ckplus48"))


def test_jaffe_face_crops(data_root):
    pytest.importorskip("cv2")
    from vitfer.engine import build_dataset

    whole = build_dataset(FinetuneConfig(dataset="jaffe", data_dir=str(data_root)))
    crops = build_dataset(FinetuneConfig(dataset="jaffe", data_dir=str(data_root), crop_faces=True, face_margin=0.0))
    assert len(crops) == len(whole) == 213  # a face in every photo
    x = crops[0][0]
    assert x.shape[-2:] == (48, 48)
    # The crop is the face: no photo border left (JAFFE's photos have a wide grey background)
    assert not torch.allclose(x, torch.nn.functional.interpolate(whole[0][0][None], size=48)[0], atol=0.1)


def test_scratch_recipe_pretrains_jaffe_on_ckplus48_with_face_crops():
    v = recipe_values("scratch", {"dataset": "jaffe"})
    assert v["pretrain"] == "ckplus48" and v["crop_faces"] is True
    assert "pretrain" not in recipe_values("scratch", {"dataset": "ckplus48"})


def test_cli_turns_the_jaffe_recipe_parts_off_and_on(tmp_path, data_root):
    from vitfer.cli import main

    out = tmp_path / "cli"
    # the recipe's JAFFE run without its pretraining and crops, shrunk to a smoke test
    assert main(["finetune", "--dataset", "jaffe", "--data-dir", str(data_root), "--split", "subject",
                 "--pretrain", "none", "--no-crop-faces", "--model", "resnet18d", "--img-size", "32",
                 "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["recipe"] == "scratch" and cfg["pretrain"] is None and cfg["crop_faces"] is False
    assert cfg["lr"] == recipe_values("scratch", {"dataset": "jaffe"})["lr"]
    assert not (out / "pretrain-ckplus48").exists()
    # --pretrain, --crop-faces and --ema reach the config (built as vitfer finetune builds it)
    from vitfer.cli import build_parser
    from vitfer.cli.finetune import config_from_args

    argv = ["finetune", "--dataset", "jaffe", "--pretrain", "synthetic", "--crop-faces", "--ema", "0.99"]
    args = build_parser().parse_args(argv)
    args.argv = argv
    cfg = config_from_args(args)
    assert (cfg.pretrain, cfg.crop_faces, cfg.ema, cfg.recipe) == ("synthetic", True, 0.99, "scratch")
    argv = ["finetune", "--dataset", "jaffe"]
    args = build_parser().parse_args(argv)
    args.argv = argv
    cfg = config_from_args(args)  # the recipe's JAFFE values
    assert (cfg.pretrain, cfg.crop_faces, cfg.face_margin) == ("ckplus48", True, 0.0)


def test_face_crops_without_opencv_say_what_to_do(monkeypatch):
    import builtins

    from vitfer.data.runs import face_cropper

    real = builtins.__import__

    def no_cv2(name, *a, **k):
        if name == "cv2":
            raise ImportError("No module named 'cv2'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.raises(ImportError, match=r"vitfer\[detect\].*--no-crop-faces"):
        face_cropper(0.0)


def test_folds_share_one_pretraining_run(tmp_path, data_root, caplog):
    from vitfer.engine import run_folds

    caplog.set_level(logging.INFO, logger="vitfer")
    summary = run_folds(_cfg(tmp_path, data_root, split="subject-kfold", n_folds=2, fold=0,
                             out_dir=str(tmp_path / "cv")))
    assert len(summary["folds"]) == 2
    assert sorted(p.name for p in (tmp_path / "cv").iterdir() if p.is_dir()) == ["fold-0", "fold-1", "pretrain-synthetic"]
    assert caplog.text.count("pretraining on synthetic first") == 1
    assert caplog.text.count("reusing the finished run") == 1
