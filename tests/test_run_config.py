"""Issue 23: every number a run reports is that run's. One resolved run config, recorded whole and
read back by evaluate, report, predict, resume and pretraining; regression tests of the defects."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from vitfer.cli import main
from vitfer.data.runs import image_digests, run_data, run_dataset
from vitfer.engine import (
    STATE_FILE, Callback, FinetuneConfig, RunFolderError, evaluate_checkpoint, finetune, resolve_config, run_folds,
)
from vitfer.engine.config import PRETRAIN_DATASETS, RECIPES
from vitfer.engine.pretrain import pretrain_config

TINY = dict(model="vit_tiny_patch16_224", model_overrides={"depth": 1, "embed_dim": 32, "num_heads": 1},
            img_size=32, patch_size=8, epochs=1, batch_size=16, warmup_steps=1, lr=1e-3)


def _tiny(tmp_path: Path, name: str = "run", **kw) -> FinetuneConfig:
    return FinetuneConfig(**{**TINY, "dataset": "synthetic", "synthetic_n": 60, "out_dir": str(tmp_path / name), **kw})


def _write_faces(root: Path, n_per_class: int = 6, size: int = 80) -> Path:
    """A folder dataset of drawn faces (PNG, class sub-folders), made at test time."""
    from PIL import Image

    from vitfer.data import SyntheticFaces

    faces = SyntheticFaces(n=7 * n_per_class, image_size=size, seed=3)
    for i in range(len(faces)):
        d = root / faces.classes[faces.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(faces.uint8(i)[0].numpy()).save(d / f"f{i:03d}.png")
    return root


def test_the_run_records_its_resolved_config(tmp_path):
    res = finetune(_tiny(tmp_path, amp="auto", lr=None))
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    from vitfer.runtime import bf16_is_fast

    assert stored["img_size"] == 32 and stored["patch_size"] == 8
    assert stored["amp"] == ("bf16" if bf16_is_fast(torch.device("cpu")) else "none")  # never "auto"
    assert stored["lr"] == 1e-4  # a transformer's default, written down
    import vitfer

    model = vitfer.load(res["checkpoint"])
    assert json.loads(json.dumps(model.checkpoint_info["finetune_config"])) == stored
    assert json.loads(json.dumps(res["config"])) == stored
    assert sorted(res["split_record"]["indices"]) == ["test", "train", "val"]
    assert len(res["split_record"]["files"]["test"]) == res["split_sizes"]["test"]
    # resolving again changes nothing
    from vitfer.engine import config_from_dict

    again = resolve_config(config_from_dict(stored))
    assert json.loads(json.dumps(dataclasses.asdict(again))) == stored


def test_evaluate_and_report_rebuild_a_pretrained_runs_test_set_at_its_size(tmp_path):
    """Defect 3: a run from pretrained weights was evaluated at 48 px (they assumed no
    pretrained weights); the run's own size is now read back."""
    import vitfer
    from vitfer.analysis import load_run, run_test_set
    from vitfer.models import create_model

    src = create_model("vit_tiny_patch16_224", num_classes=7, img_size=64, depth=1, embed_dim=32, num_heads=1)
    vitfer.save(src, tmp_path / "pre.safetensors", class_names=[f"c{i}" for i in range(7)])
    faces = _write_faces(tmp_path / "faces")
    cfg = FinetuneConfig(model="vit_tiny_patch16_224", pretrained=str(tmp_path / "pre.safetensors"),
                         model_overrides={"depth": 1, "embed_dim": 32, "num_heads": 1}, dataset="folder",
                         data_dir=str(faces), epochs=1, batch_size=8, lr=1e-3, warmup_steps=1,
                         out_dir=str(tmp_path / "run"))
    res = finetune(cfg)
    assert res["config"]["img_size"] == 64
    ev = evaluate_checkpoint(res["checkpoint"], device="cpu")
    assert ev["img_size"] == 64 and ev["accuracy"] == res["test"]["accuracy"]
    assert ev["confusion"] == res["test"]["confusion"]
    model, test = run_test_set(load_run(tmp_path / "run"))
    assert len(test) == res["split_sizes"]["test"] and tuple(test[0][0].shape) == (3, 64, 64)


def test_evaluate_report_and_predict_see_the_runs_settings(tmp_path, data_root):
    """The done-when test: a run on JAFFE's face crops in bf16, then evaluate, report and predict on
    its checkpoint each see its image size, precision, crop, classes and test images."""
    import vitfer
    from vitfer.analysis import load_run, run_test_set
    from vitfer.inference import Predictor

    cfg = FinetuneConfig(**{**TINY, "dataset": "jaffe", "data_dir": str(data_root / "jaffe"), "split": "subject",
                            "crop_faces": True, "face_margin": 0.05, "amp": "bf16", "out_dir": str(tmp_path / "run")})
    res = finetune(cfg)
    ckpt = res["checkpoint"]
    recorded = res["split_record"]["files"]["test"]

    ev = evaluate_checkpoint(tmp_path / "run", device="cpu")  # a run folder names its checkpoint
    assert (ev["img_size"], ev["amp"]) == (32, "bf16")
    assert ev["accuracy"] == res["test"]["accuracy"] and ev["confusion"] == res["test"]["confusion"]
    assert list(ev["per_class_accuracy"]) == res["classes"]

    run = load_run(tmp_path / "run")
    model, test = run_test_set(run)
    assert len(test) == len(recorded) and tuple(test[0][0].shape[-2:]) == (32, 32)
    assert [Path(p).name for p in test.paths] == [Path(p).name for p in recorded]
    assert model.class_names == res["classes"]

    p = Predictor(ckpt, device="cpu")
    assert p.margin == 0.05 and p.precision == "bf16"
    assert tuple(p.model.pretrained_cfg["input_size"][-2:]) == (32, 32) and p.class_names == res["classes"]
    info = vitfer.load(ckpt).checkpoint_info["finetune_config"]
    assert info["crop_faces"] is True and info["face_margin"] == 0.05


def test_evaluate_refuses_a_test_part_that_is_not_the_runs(tmp_path):
    faces = _write_faces(tmp_path / "faces")
    res = finetune(_tiny(tmp_path, dataset="folder", data_dir=str(faces)))
    other = _write_faces(tmp_path / "other", n_per_class=7)
    with pytest.raises(ValueError, match="not the run's"):
        evaluate_checkpoint(res["checkpoint"], data_dir=str(other), device="cpu")


class _Interrupt(Callback):
    def on_step(self, info):
        raise KeyboardInterrupt


def test_overwrite_then_interrupt_then_resume_never_continues_the_old_run(tmp_path):
    """Defect 2: --overwrite left state.safetensors behind, so --overwrite, Ctrl+C, --resume
    continued the previous run."""
    old = finetune(_tiny(tmp_path, epochs=2))
    new_cfg = _tiny(tmp_path, epochs=2, lr=3e-3, seed=1, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        finetune(new_cfg, callbacks=[_Interrupt()])
    run = tmp_path / "run"
    assert not (run / STATE_FILE).exists() and not (run / "metrics.json").exists()
    res = finetune(dataclasses.replace(new_cfg, overwrite=False), resume=True)
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    fresh = finetune(_tiny(tmp_path, name="fresh", epochs=2, lr=3e-3, seed=1))
    assert res["history"][0]["train_loss"] == fresh["history"][0]["train_loss"]
    assert res["history"][0]["train_loss"] != old["history"][0]["train_loss"]


def test_a_state_file_of_another_config_is_never_continued(tmp_path):
    finetune(_tiny(tmp_path, epochs=2))
    run = tmp_path / "run"
    state = json.loads((run / "config.json").read_text())
    state["status"] = "running"
    (run / "config.json").write_text(json.dumps(state))
    from vitfer.weights.io import atomic_save_safetensors, read_checkpoint

    tensors, meta, _ = read_checkpoint(run / STATE_FILE)
    info = json.loads(meta["vitfer_train_state"])
    info["config"]["lr"] = 0.5  # as if another run had left it
    atomic_save_safetensors(tensors, run / STATE_FILE, {"vitfer_train_state": json.dumps(info)})
    with pytest.raises(RunFolderError, match="state of another run"):
        finetune(_tiny(tmp_path, epochs=2), resume=True)


def test_fold_all_overwrite_starts_every_fold_afresh(tmp_path):
    cfg = _tiny(tmp_path, name="cv", split="kfold", n_folds=2, synthetic_n=40)
    run_folds(cfg)
    (tmp_path / "cv" / "fold-0" / STATE_FILE).write_bytes(b"left over")
    with pytest.raises(KeyboardInterrupt):
        run_folds(dataclasses.replace(cfg, overwrite=True, seed=2), callbacks=[_Interrupt()])
    assert not (tmp_path / "cv" / "fold-0" / STATE_FILE).exists()
    assert not (tmp_path / "cv" / "summary.json").exists()


def test_resume_extends_a_finished_run(tmp_path):
    """Issue 28 point 8: --resume DIR --epochs N continues a finished run to N epochs."""
    finetune(_tiny(tmp_path, epochs=1))
    assert main(["finetune", "--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    state = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["config"]["epochs"] == 2
    assert state["extended"] == [{"from_epochs": 1, "to_epochs": 2}] and state["status"] == "finished"


# -- pretraining stages ----------------------------------------------------------------------------
def _recipe_cfg(tmp_path, data_root, dataset, pretrain, **kw) -> FinetuneConfig:
    data_dir = {"synthetic": None, "ckplus48": data_root / "ckplus48", "jaffe": data_root / "jaffe"}[dataset]
    return FinetuneConfig.from_recipe("scratch", dataset=dataset, data_dir=str(data_dir) if data_dir else None,
                                      pretrain=pretrain, split="subject" if dataset != "synthetic" else "random",
                                      out_dir=str(tmp_path / f"{dataset}-{pretrain}"), **kw)


@pytest.mark.parametrize("dataset,pretrain", [(d, p) for d in ("synthetic", "ckplus48", "jaffe")
                                              for p in PRETRAIN_DATASETS if p != d and p != "fer2013"])
def test_no_pretraining_stage_holds_an_image_of_its_runs_val_or_test_part(tmp_path, data_root, dataset, pretrain):
    """Defect 1: `--dataset ckplus48 --split subject --pretrain jaffe` ran the JAFFE recipe's own
    `pretrain: ckplus48` on CK+48's random split (163 of the run's 201 test images). Stages do not
    cascade, and none holds an image of its run's validation or test part."""
    from vitfer.engine.run import _pretrain_stage

    cfg = resolve_config(_recipe_cfg(tmp_path, data_root, dataset, pretrain, synthetic_n=300))
    data, split = run_data(dataclasses.asdict(cfg))
    stage = _pretrain_stage(cfg, data, split, Path(cfg.out_dir))
    assert stage.pretrain is None and stage.dataset == pretrain
    held_out = set(image_digests(data, split["val"] + split["test"]))
    pre = run_dataset(dataclasses.asdict(stage))
    assert not held_out.intersection(image_digests(pre, range(len(pre))))


def test_a_copy_of_the_runs_images_is_left_out_of_its_pretraining(tmp_path, data_root):
    """The guard is by content: a folder that copies CK+48 images, pretrained on CK+48, leaves its
    validation and test images out of the pretraining stage (and keeps that stage to itself)."""
    from vitfer.engine.run import _pretrain_stage

    src = data_root / "ckplus48"
    for cls in ("happy", "surprise", "anger"):
        (tmp_path / "mine" / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[:12]:
            shutil.copy(f, tmp_path / "mine" / cls / f.name)
    cfg = resolve_config(FinetuneConfig.from_recipe(
        "scratch", dataset="folder", data_dir=str(tmp_path / "mine"), pretrain="ckplus48", out_dir=str(tmp_path / "run")))
    data, split = run_data(dataclasses.asdict(cfg))
    stage = _pretrain_stage(cfg, data, split, tmp_path / "run")
    held_out = set(image_digests(data, split["val"] + split["test"]))
    assert set(stage.exclude_images) == held_out
    pre = run_dataset(dataclasses.asdict(stage))
    assert len(pre) == 981 - len(held_out)
    assert not held_out.intersection(image_digests(pre, range(len(pre))))


def test_the_pretraining_stage_takes_the_options_the_user_set(tmp_path, data_root):
    """Defect 12: under a recipe, `--epochs 1` still pretrained 100 epochs (batch and lr too)."""
    cfg = resolve_config(_recipe_cfg(tmp_path, data_root, "jaffe", "ckplus48", epochs=1, batch_size=8, lr=5e-4))
    stage = pretrain_config(cfg, Path(cfg.out_dir))
    assert (stage.epochs, stage.batch_size, stage.lr) == (1, 8, 5e-4)
    ck = RECIPES["scratch"]["datasets"]["default"]
    assert (stage.mixup, stage.cutmix, stage.label_smoothing) == (ck["mixup"], ck["cutmix"], ck["label_smoothing"])
    assert (stage.img_size, stage.seed, stage.model) == (cfg.img_size, cfg.seed, cfg.model)
    # options left at the recipe's values are the pretraining dataset's, not the run's
    plain = pretrain_config(resolve_config(_recipe_cfg(tmp_path, data_root, "jaffe", "ckplus48")), Path(cfg.out_dir))
    assert (plain.epochs, plain.lr, plain.crop_faces) == (ck["epochs"], RECIPES["scratch"]["lr"], False)


def test_pretraining_finds_fer2013_in_its_own_folder(tmp_path):
    """Defect 14: `--pretrain fer2013` found only DIR/fer2013.csv, not DIR/fer2013/fer2013.csv."""
    rows = ["emotion,pixels,Usage"] + [f"{k % 7},{' '.join(['128'] * 48 * 48)},Training" for k in range(14)]
    (tmp_path / "data" / "fer2013").mkdir(parents=True)
    (tmp_path / "data" / "fer2013" / "fer2013.csv").write_text("\n".join(rows) + "\n")
    faces = _write_faces(tmp_path / "data" / "mine")
    cfg = resolve_config(FinetuneConfig(**{**TINY, "dataset": "folder", "data_dir": str(faces), "pretrain": "fer2013",
                                           "out_dir": str(tmp_path / "run")}))
    stage = pretrain_config(cfg, Path(cfg.out_dir))
    assert stage.dataset == "fer2013" and len(run_dataset(dataclasses.asdict(stage))) == 14


def test_study_tables_say_what_the_training_time_is(tmp_path):
    """Defect 13: tables.md said the training time includes validation; it is the epochs'
    optimiser steps alone."""
    from vitfer.engine.study import tables_markdown

    res = finetune(_tiny(tmp_path, epochs=2))
    assert res["train_time_s"] == pytest.approx(sum(h["seconds"] for h in res["history"]))
    text = tables_markdown([], {"device": "CPU (2 threads)"})
    assert "validation and test excluded" in text and "CPU (2 threads)" in text and "named above" not in text


# -- issue 28: the command line ----------------------------------------------------------------------
def test_finetune_help_shows_the_values_the_default_run_uses(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = {}  # option -> its help, one line
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):
            option = line.split()[0].rstrip(",")
            help_text[option] = line
        elif line.startswith("   ") and help_text:
            help_text[option] += " " + line.strip()
    scratch = FinetuneConfig.from_recipe("scratch")
    for option, value in (("--epochs", scratch.epochs), ("--batch-size", scratch.batch_size),
                          ("--synthetic-n", scratch.synthetic_n), ("--amp", scratch.amp), ("--lr", scratch.lr),
                          ("--model", scratch.model)):
        shown = help_text[option].rsplit("(default: ", 1)[1].split(")", 1)[0]
        assert shown == str(value), (option, shown)


def test_options_left_out_keep_the_recipes_or_the_configs_values():
    from vitfer.cli import build_parser
    from vitfer.cli.finetune import config_from_args

    def cfg(*argv):
        args = build_parser().parse_args(["finetune", *argv])
        args.argv = ["finetune", *argv]
        return config_from_args(args)

    assert cfg().epochs == RECIPES["scratch"]["datasets"]["synthetic"]["epochs"]
    plain = cfg("--pretrained", "x.safetensors")  # no recipe: FinetuneConfig's own defaults, not scratch's
    assert (plain.epochs, plain.batch_size, plain.amp, plain.recipe) == (5, 16, "none", None)
    assert cfg("--dataset", "ckplus48", "--epochs", "3").user_set == ("dataset", "epochs")


def test_folds_are_numbered_from_zero_everywhere(tmp_path, caplog, capsys):
    import logging

    caplog.set_level(logging.INFO, logger="vitfer")
    res = finetune(_tiny(tmp_path, split="kfold", n_folds=3, fold=1, synthetic_n=45))
    assert "fold 1 of folds 0-2" in caplog.text
    assert main(["evaluate", res["checkpoint"], "--device", "cpu"]) == 0
    assert "fold 1, folds 0-2" in capsys.readouterr().out


def test_an_interrupted_run_says_how_to_resume_it(tmp_path, monkeypatch, capsys):
    import vitfer.engine.run as run

    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train_and_test", interrupted)
    out = tmp_path / "run"
    argv = ["finetune", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8", "--synthetic-n",
            "28", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"vitfer finetune --resume {out}" in err and "Traceback" not in err


def test_the_readmes_labels_command_trains(tmp_path, monkeypatch):
    """Defect 7: `vitfer finetune --dataset folder --labels faces/labels.csv` joined the folder twice
    (faces/faces/labels.csv)."""
    faces = _write_faces(tmp_path / "faces", n_per_class=4)
    rows = ["path,label"] + [f"{p.relative_to(faces).as_posix()},{p.parent.name}" for p in sorted(faces.rglob("*.png"))]
    (faces / "labels.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", "--dataset", "folder", "--labels", "faces/labels.csv", "--model", "vit_tiny_patch16_224",
            "--img-size", "32", "--patch-size", "8", "--epochs", "1", "--quiet", "--out", "run"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sum(metrics["split_sizes"].values()) == 28
    assert metrics["config"]["labels"] == str(tmp_path / "faces" / "labels.csv")


def test_a_state_recorded_before_configs_were_resolved_still_resumes(tmp_path):
    """A run interrupted before this change recorded `amp: "auto"` (and no `user_set`) in its
    state; resuming it is the same run, not "the state of another run"."""
    from vitfer.weights.io import atomic_save_safetensors, read_checkpoint

    finetune(_tiny(tmp_path, epochs=2, amp="auto"))
    run = tmp_path / "run"
    state = json.loads((run / "config.json").read_text())
    state["status"] = "running"
    state["config"] = {**state["config"], "amp": "auto"}
    state["config"].pop("user_set")
    (run / "config.json").write_text(json.dumps(state))
    tensors, meta, _ = read_checkpoint(run / STATE_FILE)
    info = json.loads(meta["vitfer_train_state"])
    info["config"] = {**info["config"], "amp": "auto"}
    info["config"].pop("user_set")
    atomic_save_safetensors(tensors, run / STATE_FILE, {"vitfer_train_state": json.dumps(info)})
    res = finetune(_tiny(tmp_path, epochs=2, amp="auto"), resume=True)
    assert [h["epoch"] for h in res["history"]] == [1, 2]


def test_epoch_records_say_where_the_training_time_went(tmp_path):
    """Each epoch's record splits its training time into the loop's phases (data, forward,
    backward, optimizer, other), which account for the epoch's ``seconds``, and times validation
    apart; the file and the returned history agree."""
    from vitfer.engine.loop import PHASES

    res = finetune(_tiny(tmp_path, epochs=2))
    rows = [json.loads(ln) for ln in (Path(res["out_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase_seconds"] for r in rows] == [h["phase_seconds"] for h in res["history"]]
    for rec in res["history"]:
        split = rec["phase_seconds"]
        assert tuple(split) == PHASES and all(v >= 0 for v in split.values())
        assert split["forward"] > 0 and split["backward"] > 0 and split["optimizer"] > 0
        assert sum(split.values()) == pytest.approx(rec["seconds"], rel=0.05, abs=0.02)
        assert rec["val_seconds"] > 0
