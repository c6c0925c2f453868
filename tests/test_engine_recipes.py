"""Recipes, transfer modes (freeze, heads), schedules and the CLI's progress display."""
from __future__ import annotations

import json

import pytest
import torch

import vitfer
from vitfer.cli import Progress, main
from vitfer.engine import FinetuneConfig, finetune
from vitfer.engine.config import RECIPES
from vitfer.engine.loop import lr_at
from vitfer.engine.model import apply_freeze, build_model, set_train_mode, trunk_blocks


def test_recipes_set_defaults_and_stay_overridable():
    t = FinetuneConfig.from_recipe("thesis", model="convit_tiny")
    assert (t.optimizer, t.lr, t.batch_size, t.epochs, t.pretrained) == ("sgd", 0.003, 10, 50, True)
    assert t.augment["vflip"] == 0.5 and t.recipe == "thesis" and t.sizes() == (None, None)
    t = FinetuneConfig.from_recipe("thesis", lr=0.01, augment={"vflip": 0.0})
    assert t.lr == 0.01 and t.augment["vflip"] == 0.0 and t.augment["hflip"] == 0.5
    r = FinetuneConfig.from_recipe("thesis-resnet", model="resnet50d")
    assert (r.optimizer, r.lr, r.freeze, r.head, r.schedule) == ("adam", 0.0005, "1", "mlp", "constant")
    assert FinetuneConfig.from_recipe("scratch").model == FinetuneConfig().model == "vit_tiny_r18d_48"
    with pytest.raises(ValueError, match="did you mean thesis"):
        FinetuneConfig.from_recipe("thesys")
    assert set(RECIPES) == {"scratch", "distill", "thesis", "thesis-resnet", "thesis-svm"}


def test_cli_recipe_with_override(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "thesis-resnet" in capsys.readouterr().out
    out = tmp_path / "r"
    assert main(["finetune", "--recipe", "scratch", "--model", "vit_tiny_patch16_224", "--img-size", "32",
                 "--patch-size", "8", "--synthetic-n", "28", "--epochs", "1", "--optimizer", "sgd", "--out",
                 str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    # issue 26: scratch with a plain transformer is the distill recipe (a teacher first, in <run>/teacher)
    assert cfg["recipe"] == "distill" and cfg["optimizer"] == "sgd" and cfg["epochs"] == 1
    assert cfg["distill"] == "auto" and (out / "teacher" / "model.safetensors").is_file()
    # the thesis recipe asks for pretrained weights: offline that is one clear error
    rc = main(["finetune", "--recipe", "thesis", "--model", "vit_tiny_patch16_224", "--out", str(tmp_path / "t")])
    assert rc == 2 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("name,n_blocks", [("vit_tiny_patch16_224", 12), ("resnet18d", 4), ("vgg16", 6),
                                           ("crossvit_tiny_240", 3), ("convit_tiny", 12)])
def test_freeze_counts_blocks(name, n_blocks):
    model = build_model(FinetuneConfig(model=name), 7)
    assert len(trunk_blocks(model)) == n_blocks
    total = sum(p.numel() for p in model.parameters())
    head_only = apply_freeze(model, "backbone")
    assert 0 < head_only["trainable"] < total * 0.2 and head_only["trainable"] + head_only["frozen"] == total
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("head" in n or n.startswith("fc.") for n in trainable), trainable
    one = apply_freeze(model, "1")
    assert one["trainable"] > head_only["trainable"]
    last = trunk_blocks(model)[-1]
    assert all(p.requires_grad for p in last.parameters())
    assert not any(p.requires_grad for p in trunk_blocks(model)[0].parameters())
    with pytest.raises(ValueError, match="only"):
        apply_freeze(model, str(n_blocks + 1))


def test_frozen_backbone_does_not_change(tmp_path):
    cfg = FinetuneConfig(model="resnet18d", img_size=32, synthetic_n=40, epochs=1, batch_size=8, freeze="backbone",
                         out_dir=str(tmp_path / "run"), drop_path_rate=0.0)
    torch.manual_seed(cfg.seed)
    before = build_model(cfg, 7).state_dict()
    res = finetune(cfg)
    after = vitfer.load(res["checkpoint"]).state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"]  # BatchNorm statistics of the frozen backbone stay too
    assert res["trainable_params_m"] < 0.01


def test_frozen_batchnorm_stays_in_eval_mode():
    model = build_model(FinetuneConfig(model="resnet18d"), 7)
    apply_freeze(model, "1")
    set_train_mode(model)
    assert model.layer4[0].bn1.training and not model.layer1[0].bn1.training


def test_svm_head_on_frozen_features(tmp_path):
    cfg = FinetuneConfig.from_recipe("thesis-svm", model="resnet18d", pretrained=False, img_size=32, synthetic_n=70,
                                     out_dir=str(tmp_path / "svm"))
    res = finetune(cfg)
    assert res["svm"]["C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0) and len(res["svm"]["grid"]) == 5
    model = vitfer.load(res["checkpoint"])  # an ordinary checkpoint: the SVM is the Linear head
    assert model.checkpoint_info["svm_c"] == res["svm"]["C"]
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="freeze"):
        FinetuneConfig(head="svm")


def test_constant_schedule():
    assert lr_at(5, 100, 1e-3, 10, "constant") == pytest.approx(6e-4)
    assert [lr_at(s, 100, 1e-3, 10, "constant") for s in (10, 50, 99)] == [1e-3] * 3
    with pytest.raises(ValueError, match="schedule"):
        FinetuneConfig(schedule="step")


def test_progress_bar_callback(capsys):
    """The CLI's tqdm bar (shown when stderr is a terminal) follows the engine's events."""
    p = Progress(tty=True)
    p.on_train_start({})
    p.on_epoch_start({"epoch": 1, "epochs": 2, "steps_per_epoch": 3})
    for s in range(3):
        p.on_step({"loss": 1.5, "images": 8, "step": s + 1})
    assert p.bar.n == 3
    p.on_epoch_end({})
    assert p.bar is None
    assert "epoch 1/2" in capsys.readouterr().err


def test_progress_lines_within_an_epoch_without_a_terminal(capsys):
    """Without a terminal (a log file, CI) progress comes as lines on stdout within an epoch, at
    most one every ``every_s`` seconds (issue 28: nothing was printed until the first epoch ended)."""
    p = Progress(tty=False, every_s=0.0)
    p.on_train_start({"out_dir": "runs/x"})
    p.on_epoch_start({"epoch": 2, "epochs": 5, "steps_per_epoch": 3})
    for s in range(3):
        p.on_step({"loss": 1.25, "accuracy": 0.5, "images": 8, "step": 3 + s + 1, "epoch": 2, "epochs": 5,
                   "steps_per_epoch": 3})
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in out] == [f"epoch 2/5 step {k}/3" for k in (1, 2, 3)]
    assert "loss 1.2500 acc 0.500" in out[-1] and p.bar is None and p.out_dir == "runs/x"
    quiet = Progress(tty=False, every_s=3600.0)
    quiet.on_epoch_start({"epoch": 1, "epochs": 1, "steps_per_epoch": 2})
    quiet.on_step({"loss": 1.0, "images": 8, "step": 1, "epoch": 1, "epochs": 1, "steps_per_epoch": 2})
    assert capsys.readouterr().out == ""


def test_quiet_prints_results_only(tmp_path, capsys):
    assert main(["finetune", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "8",
                 "--synthetic-n", "28", "--epochs", "1", "--quiet", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" not in out and "test accuracy" in out


def test_svm_without_the_extra_names_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)
    cfg = FinetuneConfig.from_recipe("thesis-svm", model="resnet18d", pretrained=False, img_size=32, synthetic_n=28,
                                     out_dir=str(tmp_path / "svm"))
    with pytest.raises(ImportError, match=r"pip install 'vitfer\[svm\]'"):
        finetune(cfg)


def test_mlp_head_trains_saves_and_loads_pretrained(tmp_path):
    """thesis-resnet: ImageNet-style weights (a local timm file), all but the last stage frozen,
    the three-layer MLP head fresh; the checkpoint rebuilds the MLP from its config."""
    import safetensors.torch
    import timm

    ref = timm.create_model("resnet18d", pretrained=False)
    path = tmp_path / "resnet18d.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    cfg = FinetuneConfig.from_recipe("thesis-resnet", model="resnet18d", pretrained=str(path), img_size=32,
                                     synthetic_n=40, epochs=1, out_dir=str(tmp_path / "run"))
    res = finetune(cfg)
    model = vitfer.load(res["checkpoint"])
    assert [m.out_features for m in model.fc if isinstance(m, torch.nn.Linear)] == [512, 256, 7]
    assert torch.equal(model.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)  # frozen, from the file
    assert not torch.equal(model.layer4[0].conv1.weight, ref.layer4[0].conv1.weight)  # trained
    with pytest.raises(ValueError, match="ResNet-D"):
        build_model(FinetuneConfig(model="vit_tiny_patch16_224", head="mlp"), 7)


def test_the_distill_recipe_matches_the_teachers_soft_predictions_on_mixed_faces():
    """Issue 26: on CK+48 (and other small face sets) the distill recipe's student learns the
    teacher's soft predictions (tau 1) of the same mixup / CutMix images it sees, beside the labels
    and the feature term (measured: README "The study's own transformers"); the synthetic faces,
    plenty and few epochs, are not mixed."""
    ck = FinetuneConfig.from_recipe("distill", dataset="ckplus48")
    assert (ck.distill, ck.distill_type, ck.distill_tau, ck.distill_alpha, ck.distill_features) == (
        "auto", "soft", 1.0, 0.5, 10.0)
    assert (ck.mixup, ck.cutmix, ck.drop_path_rate, ck.epochs, ck.batch_size) == (0.2, 1.0, 0.0, 50, 16)
    # JAFFE: the same, after pretraining on CK+48 (face crops)
    jf = FinetuneConfig.from_recipe("distill", dataset="jaffe")
    assert (jf.distill_type, jf.mixup, jf.cutmix, jf.pretrain, jf.epochs) == ("soft", 0.2, 1.0, "ckplus48", 60)
    syn = FinetuneConfig.from_recipe("distill", dataset="synthetic")
    assert (syn.mixup, syn.cutmix, syn.distill_type) == (0.0, 0.0, "soft")
    # scratch with a plain transformer is this recipe
    assert FinetuneConfig.from_recipe("scratch", model="crossvit_tiny_240", dataset="ckplus48").distill_type == "soft"
