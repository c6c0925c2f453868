"""Issue 26: distillation from a teacher (``--distill [TEACHER]``): the loss, the teacher's inputs,
the teacher trained for the run on exactly its training part, and what the run records."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitfer.cli import main
from vitfer.engine import FinetuneConfig, finetune, resolve_config
from vitfer.engine.distill import (
    TEACHER_DATA_FIELDS, Teacher, distillation_loss, load_teacher, student_outputs, teacher_config,
)

CNN = dict(model="resnet18d", img_size=32, epochs=1, batch_size=16, warmup_steps=1, lr=1e-3, dataset="synthetic",
           synthetic_n=70)


def _cnn(tmp_path: Path, name: str, **kw) -> FinetuneConfig:
    return FinetuneConfig(**{**CNN, "out_dir": str(tmp_path / name), **kw})


# -- the loss -------------------------------------------------------------------------------------
def test_hard_distillation_is_cross_entropy_against_the_teachers_argmax():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 7, generator=g), torch.randn(8, 7, generator=g)
    want = F.cross_entropy(s, t.argmax(-1))
    assert torch.allclose(distillation_loss(s, t, "hard"), want)
    # only the teacher's argmax counts: scaling its logits changes nothing
    assert torch.allclose(distillation_loss(s, 5 * t, "hard"), want)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_distillation_is_tau_squared_kl_of_the_tempered_distributions(tau):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 7, generator=g), torch.randn(8, 7, generator=g)
    p_t, log_p_s = F.softmax(t / tau, -1), F.log_softmax(s / tau, -1)
    want = (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * tau * tau
    assert torch.allclose(distillation_loss(s, t, "soft", tau), want, atol=1e-6)
    assert distillation_loss(t, t, "soft", tau).abs() < 1e-6  # a student that agrees with its teacher pays nothing
    with pytest.raises(ValueError, match="distill_type"):
        distillation_loss(s, t, "medium")


def test_student_outputs_of_a_distilled_and_a_plain_model():
    a, b = torch.zeros(2, 7), torch.ones(2, 7)
    assert student_outputs((a, b)) == (a, b)
    assert student_outputs(a) == (a, a)


# -- the teacher's inputs ---------------------------------------------------------------------------
class _Probe(torch.nn.Module):
    """A 'model' that returns its input's per-channel means, so the test sees what it was given."""

    def __init__(self, mean, std, size):
        super().__init__()
        self.pretrained_cfg = {"mean": mean, "std": std, "input_size": (3, size, size)}
        self.seen = None

    def forward(self, x):
        self.seen = x
        return x.mean(dim=(2, 3))


def test_the_teacher_sees_each_image_in_its_own_normalisation_and_size():
    img = torch.rand(2, 3, 32, 32)
    s_mean, s_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    t_mean, t_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    student_x = (img - torch.tensor(s_mean).view(1, 3, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1)
    probe = _Probe(t_mean, t_std, 32)
    teacher = Teacher(probe, {"mean": s_mean, "std": s_std, "input_size": (3, 32, 32)})
    teacher(student_x)
    want = (img - torch.tensor(t_mean).view(1, 3, 1, 1)) / torch.tensor(t_std).view(1, 3, 1, 1)
    assert (probe.seen - want).abs().max() < 1e-5
    # another input size: resized to the teacher's own
    probe48 = _Probe(s_mean, s_std, 48)
    Teacher(probe48, {"mean": s_mean, "std": s_std, "input_size": (3, 32, 32)})(student_x)
    assert probe48.seen.shape[-2:] == (48, 48)
    assert (probe48.seen.mean() - student_x.mean()).abs() < 0.05


def test_a_teacher_stays_frozen_and_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(7))
    model(torch.rand(2, 3, 8, 8))
    model.pretrained_cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 8, 8)}
    teacher = Teacher(model, {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 8, 8)})
    teacher.train()
    assert not teacher.training and not model[1].training
    assert not any(p.requires_grad for p in teacher.parameters())
    before = model[1].running_mean.clone()
    teacher(torch.rand(4, 3, 8, 8) * 5)
    assert torch.equal(model[1].running_mean, before)


# -- config -----------------------------------------------------------------------------------------
def test_distillation_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="distill_type"):
        _cnn(tmp_path, "a", distill="auto", distill_type="warm")
    with pytest.raises(ValueError, match="distill_alpha"):
        _cnn(tmp_path, "a", distill="auto", distill_alpha=1.5)
    with pytest.raises(ValueError, match="distill_tau"):
        _cnn(tmp_path, "a", distill="auto", distill_tau=0)
    with pytest.raises(ValueError, match="teacher_epochs"):
        _cnn(tmp_path, "a", distill="auto", teacher_epochs=0)
    with pytest.raises(ValueError, match="distill_features"):
        _cnn(tmp_path, "a", distill="auto", distill_features=-1.0)
    with pytest.raises(ValueError, match="svm"):
        _cnn(tmp_path, "a", distill="auto", head="svm", freeze="backbone")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_config(_cnn(tmp_path, "a", distill=str(tmp_path / "no-such-run")))
    with pytest.raises(KeyError, match="resnet"):
        resolve_config(_cnn(tmp_path, "a", distill="auto", teacher="resnet18q"))


def test_a_teacher_takes_the_runs_data_and_split_and_never_validates(tmp_path):
    cfg = resolve_config(_cnn(tmp_path, "run", split="kfold", n_folds=3, fold=2, seed=5, distill="auto",
                              teacher="resnet18d", teacher_epochs=3, val_size=0.2))
    t = teacher_config(cfg, tmp_path / "run")
    for k in TEACHER_DATA_FIELDS:
        assert getattr(t, k) == getattr(cfg, k), k
    assert t.validation is False and t.distill is None and t.epochs == 3 and t.model == "resnet18d"
    assert t.mixup == 0 and t.cutmix == 0  # its last epoch is kept: trained on clean images
    assert Path(t.out_dir) == tmp_path / "run" / "teacher"


# -- the run -----------------------------------------------------------------------------------------
def test_distill_auto_trains_a_teacher_on_the_runs_training_part_then_reuses_it(tmp_path):
    cfg = _cnn(tmp_path, "run", distill="auto", teacher_epochs=1, max_steps=2)
    res = finetune(cfg)
    t_dir = tmp_path / "run" / "teacher"
    t_metrics = json.loads((t_dir / "metrics.json").read_text())
    # the teacher trained on exactly the run's training part and never evaluated its validation part
    assert t_metrics["split_record"]["indices"] == res["split_record"]["indices"]
    assert t_metrics["config"]["validation"] is False
    assert all("val_accuracy" not in rec for rec in t_metrics["history"])
    assert res["teacher"]["model"] == "resnet18d"
    assert res["teacher"]["test_accuracy"] == t_metrics["test_accuracy"]
    assert Path(res["teacher"]["checkpoint"]) == t_dir / "model.safetensors"
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["teacher_config"]["out_dir"] == str(t_dir)
    # a second run in the same folder (--overwrite) reuses the finished teacher
    mtime = (t_dir / "model.safetensors").stat().st_mtime_ns
    res2 = finetune(dataclasses.replace(cfg, overwrite=True))
    assert (t_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert res2["test_accuracy"] == res["test_accuracy"]


def test_alpha_zero_trains_exactly_as_without_a_teacher(tmp_path):
    """The teacher's term is weighted by alpha: at 0 the run is the plain run, weight for weight
    (the teacher's forward draws no random numbers and changes nothing)."""
    from vitfer.weights import load

    teacher = finetune(_cnn(tmp_path, "t", max_steps=2))
    plain = finetune(_cnn(tmp_path, "plain", max_steps=3, mixup=0.2, cutmix=1.0))
    zero = finetune(_cnn(tmp_path, "zero", max_steps=3, mixup=0.2, cutmix=1.0, distill=teacher["out_dir"],
                         distill_alpha=0.0))
    a, b = load(plain["checkpoint"]).state_dict(), load(zero["checkpoint"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = finetune(_cnn(tmp_path, "full", max_steps=3, mixup=0.2, cutmix=1.0, distill=teacher["out_dir"],
                         distill_alpha=1.0))
    c = load(full["checkpoint"]).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if c[k].is_floating_point())
    assert full["teacher"]["source"] == str(Path(teacher["out_dir"]).absolute())


def test_hard_distillation_at_alpha_one_learns_the_teachers_labels(tmp_path, monkeypatch):
    """With alpha 1 the labels play no part: the loss is the cross-entropy against the teacher's
    argmax, checked on the first step's loss."""
    import vitfer.engine.loop as loop

    teacher = finetune(_cnn(tmp_path, "t", max_steps=2))
    seen = []
    real = loop.distillation_loss

    def spy(d, t, kind, tau):
        out = real(d, t, kind, tau)
        seen.append((d.detach(), t.detach(), out.detach()))
        return out

    monkeypatch.setattr(loop, "distillation_loss", spy)
    finetune(_cnn(tmp_path, "s", max_steps=1, label_smoothing=0.0, distill=teacher["out_dir"], distill_alpha=1.0))
    d, t, out = seen[0]
    assert torch.allclose(out, F.cross_entropy(d.float(), t.argmax(-1)))


def test_a_teacher_of_other_classes_is_refused(tmp_path):
    t = finetune(_cnn(tmp_path, "t", max_steps=1))
    from vitfer.weights import load, save

    m = load(t["checkpoint"])
    m.class_names = ["a", "b", "c", "d", "e", "f", "g"]
    save(m, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="this run's classes are anger"):
        finetune(_cnn(tmp_path, "s", max_steps=1, distill=str(tmp_path / "other.safetensors")))
    with pytest.raises(ValueError, match="teacher"):
        load_teacher(tmp_path / "other.safetensors", ["anger"] * 7, {"input_size": (3, 32, 32)})


def test_the_cli_distill_option(tmp_path, capsys):
    from vitfer.cli import build_parser
    from vitfer.cli.finetune import config_from_args

    def cfg(*argv):
        args = build_parser().parse_args(["finetune", *argv])
        args.argv = ["finetune", *argv]
        return config_from_args(args)

    assert cfg("--model", "resnet18d").distill is None
    assert cfg("--model", "resnet18d", "--distill").distill == "auto"
    assert cfg("--model", "resnet18d", "--distill", "none").distill is None
    c = cfg("--model", "resnet18d", "--distill", "runs/t", "--distill-type", "soft", "--distill-tau", "2",
            "--distill-alpha", "0.3", "--teacher", "vgg11", "--teacher-epochs", "7")
    assert (c.distill, c.distill_type, c.distill_tau, c.distill_alpha, c.teacher, c.teacher_epochs) == (
        "runs/t", "soft", 2.0, 0.3, "vgg11", 7)
    rc = main(["finetune", "--model", "resnet18d", "--dataset", "synthetic", "--synthetic-n", "70", "--img-size", "32",
               "--epochs", "1", "--distill", "--teacher-epochs", "1", "--out", str(tmp_path / "cli"), "--quiet"])
    assert rc == 0
    assert (tmp_path / "cli" / "teacher" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["config"]["distill"] == "auto" and math.isfinite(metrics["teacher"]["test_accuracy"])


def test_a_transformer_student_learns_through_its_distillation_token(tmp_path):
    """A ViT student gets a distillation token and head (DeiT): in training its forward gives the
    class-token logits to the labels' loss and the distillation-token logits to the teacher's, both
    heads learn, and the saved model averages them at evaluation."""
    from vitfer.engine import Callback
    from vitfer.weights import load

    teacher = finetune(_cnn(tmp_path, "t", max_steps=2))
    vit = dict(model="vit_tiny_patch16_224", model_overrides={"depth": 1, "embed_dim": 32, "num_heads": 1},
               patch_size=8)
    start = {}

    class Grab(Callback):
        def on_train_start(self, info):
            m = info["model"]
            start.update(head=m.head.weight.detach().clone(), dist=m.head_dist.weight.detach().clone(),
                         token=m.dist_token.detach().clone(), training=m.distilled_training)

    res = finetune(_cnn(tmp_path, "s", max_steps=3, **vit, distill=teacher["out_dir"]), callbacks=[Grab()])
    assert res["config"]["model_overrides"]["distilled"] is True and start["training"] is True
    model = load(res["checkpoint"])
    assert model.distilled and model.num_prefix_tokens == 2 and not model.distilled_training
    for name, now in (("head", model.head.weight), ("dist", model.head_dist.weight), ("token", model.dist_token)):
        assert not torch.equal(start[name], now.detach()), name
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = model.forward_features(x)
        want = (model.head(t[:, 0]) + model.head_dist(t[:, 1])) / 2
        assert torch.allclose(model(x), want, atol=1e-6)
    # the overrides may say otherwise: a plain ViT learns from both terms through its one head
    plain = finetune(_cnn(tmp_path, "p", max_steps=1, **{**vit, "model_overrides": {**vit["model_overrides"],
                                                                                     "distilled": False}},
                          distill=teacher["out_dir"]))
    assert not getattr(load(plain["checkpoint"]), "distilled", False)


# -- the feature term ----------------------------------------------------------------------------------
VIT = dict(model="vit_tiny_patch16_224", model_overrides={"depth": 2, "embed_dim": 32, "num_heads": 1}, patch_size=8)


def test_the_feature_term_pairs_the_closest_teacher_stage_with_a_student_block():
    from vitfer.engine.distill import FeatureHint, build_feature_hint, student_tap, tap_block_output
    from vitfer.models import create_model

    teacher = Teacher(create_model("resnet18d", num_classes=7).eval(), {"input_size": (3, 48, 48)})
    teacher.size = (48, 48)
    # convit_tiny at 48 px, 6-px patches: an 8x8 grid; resnet18d's maps at 48 px are 24, 12, 6, 3, 2
    student = create_model("convit_tiny", num_classes=7, img_size=48, patch_size=6, distilled=True)
    hint = build_feature_hint(student, teacher, 48)
    assert (hint.grid, hint.teacher_index, hint.block) == ((8, 8), 2, 5)  # layer2 (6x6, 128 channels), block 6 of 12
    assert hint.proj.in_features == 192 and hint.proj.out_features == 128
    student4 = create_model("vit_tiny_patch16_224", num_classes=7, img_size=48, patch_size=4)
    hint4 = build_feature_hint(student4, teacher, 48)
    assert (hint4.grid, hint4.teacher_index, hint4.block) == ((12, 12), 1, 2)  # layer1 is 12x12 itself
    # CrossViT: the wider branch of the larger patches (8 px on its 40-px rescaled input: a 5x5 grid,
    # 192 wide), which holds most of its blocks
    cross = create_model("crossvit_tiny_240", num_classes=7, img_size=48, patch_size=(6, 8))
    assert student_tap(cross)[1:] == ((5, 5), 192, 3, 1)
    hint_x = build_feature_hint(cross, teacher, 48)
    assert (hint_x.grid, hint_x.teacher_index, hint_x.block) == ((5, 5), 2, 1)
    store, handle = tap_block_output(cross, hint_x.block)
    cross(torch.randn(2, 3, 48, 48))
    handle.remove()
    assert store["tokens"].shape == (2, 1 + 25, 192)  # the class token, then the 5x5 patch tokens
    # the loss: a linear map of the patch tokens against the resized, channel-normalised teacher map
    g = torch.Generator().manual_seed(0)
    h = FeatureHint(4, 3, (2, 2), 0, 0)
    tokens, tmap = torch.randn(2, 1 + 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = F.adaptive_avg_pool2d(tmap, 2).flatten(2).transpose(1, 2)
    t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)
    want = ((h.proj(tokens[:, 1:]) - t) ** 2).mean()
    assert torch.allclose(h(tokens, tmap), want, atol=1e-6)


def test_a_run_with_the_feature_term_learns_it_and_resumes_exactly(tmp_path):
    from vitfer.engine import STATE_FILE, Callback
    from vitfer.weights import load
    from vitfer.weights.io import read_checkpoint

    teacher = finetune(_cnn(tmp_path, "t", max_steps=2))
    cfg = _cnn(tmp_path, "s", epochs=2, **VIT, distill=teacher["out_dir"], distill_features=1.0)
    whole = finetune(cfg)
    tensors, _, _ = read_checkpoint(tmp_path / "s" / STATE_FILE)
    proj = {k: v for k, v in tensors.items() if k.startswith("extra.proj.")}
    assert set(proj) == {"extra.proj.weight", "extra.proj.bias"}  # the map trained beside the model, for resume
    assert "proj.weight" not in load(whole["checkpoint"]).state_dict()  # and not part of the model

    class StopAtEpoch2(Callback):
        def on_epoch_start(self, info):
            if info["epoch"] == 2:
                raise KeyboardInterrupt

    part = dataclasses.replace(cfg, out_dir=str(tmp_path / "r"))
    with pytest.raises(KeyboardInterrupt):
        finetune(part, callbacks=[StopAtEpoch2()])
    resumed = finetune(part, resume=True)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    a, b = load(whole["checkpoint"]).state_dict(), load(resumed["checkpoint"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the feature term adds to the loss: without it the same run trains otherwise
    plain = finetune(dataclasses.replace(cfg, out_dir=str(tmp_path / "p"), distill_features=0.0))
    assert plain["history"][0]["train_loss"] < whole["history"][0]["train_loss"]
