"""The fine-tuning job: runs end to end on synthetic faces, writes a reloadable checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from vitfer.train import FinetuneConfig, build_model, lr_at, evaluate, finetune, param_groups, patch_override


def test_finetune_smoke_writes_checkpoint_and_metrics(tmp_path):
    cfg = FinetuneConfig(
        model="vit_tiny_patch16_224", img_size=32, patch_size=8, synthetic_n=84, epochs=2, batch_size=8,
        lr=3e-4, warmup_steps=2, max_steps=6, out_dir=str(tmp_path / "run"),
    )
    res = finetune(cfg)
    assert res["split_sizes"]["train"] + res["split_sizes"]["val"] + res["split_sizes"]["test"] == 84
    assert 1 <= len(res["history"]) <= 2 and res["history"][-1]["step"] == 6
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] == res["split_sizes"]["test"]
    assert sum(map(sum, metrics["test"]["confusion"])) == metrics["test"]["n"]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0

    import vitfer

    model = vitfer.load(tmp_path / "run" / "model.safetensors")
    assert model.model_name == "vit_tiny_patch16_224"
    assert list(model.class_names) == res["classes"]
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_finetune_learns_a_fixed_batch(tmp_path):
    """A small ViT (2 blocks, 64 wide) memorises 70 faces: the training loss must drop clearly."""
    cfg = FinetuneConfig(
        model="vit_tiny_patch16_224", img_size=32, patch_size=8, synthetic_n=70, epochs=30, batch_size=10,
        model_overrides={"depth": 2, "embed_dim": 64, "num_heads": 2}, lr=1e-3, warmup_steps=5, augment={"hflip": 0.0, "rotation": 0.0, "translate": 0.0, "brightness": 0.0,
                                           "contrast": 0.0}, label_smoothing=0.0, drop_path_rate=0.0, weight_decay=0.0,
        val_size=0.0, out_dir=str(tmp_path / "run"),
    )
    res = finetune(cfg)
    first, last = res["history"][0]["train_loss"], res["history"][-1]["train_loss"]
    assert last < 0.75 * first, (first, last)
    assert res["history"][-1]["train_accuracy"] > 0.5


def test_lr_schedule_and_param_groups():
    lrs = [lr_at(s, 100, 1e-3, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-5
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    from vitfer.models import create_model

    m = create_model("vit_tiny_patch16_224", num_classes=7, img_size=32)
    decay, no_decay = param_groups(m, 0.05)
    names_no_decay = {n for n, p in m.named_parameters() if any(p is q for q in no_decay["params"])}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias"} <= names_no_decay
    assert "blocks.0.attn.qkv.weight" not in names_no_decay and no_decay["weight_decay"] == 0.0


def test_evaluate_confusion_matrix():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    class DS(torch.utils.data.Dataset):
        classes = ["a", "b", "c"]
        labels = [0, 1, 2, 2]
        preds = [0, 1, 1, 2]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((3, 2, 2), float(self.preds[i])), self.labels[i]

    res = evaluate(Fixed(), DS(), batch_size=3)
    assert res["accuracy"] == pytest.approx(0.75)
    assert res["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert res["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.5}


def test_bad_config_errors():
    with pytest.raises(ValueError, match="dataset must be one of"):
        finetune(FinetuneConfig(dataset="affectnet"))
    with pytest.raises(ValueError, match="optimizer"):
        finetune(FinetuneConfig(optimizer="lamb"))


@pytest.mark.parametrize("dataset,split", [("ckplus48", "subject"), ("jaffe", "subject-kfold")])
def test_finetune_runs_on_real_data(data_root, tmp_path, dataset, split):
    """A few steps on the real folders (research-only data, read in place)."""
    cfg = FinetuneConfig(
        model="vit_tiny_patch16_224", dataset=dataset, data_dir=str(data_root), split=split, img_size=32,
        patch_size=8, model_overrides={"depth": 2}, epochs=1, batch_size=16, max_steps=2,
        out_dir=str(tmp_path / "run"),
    )
    res = finetune(cfg)
    sizes = res["split_sizes"]
    assert sum(sizes.values()) == {"ckplus48": 981, "jaffe": 213}[dataset]
    assert res["test"]["n"] == sizes["test"] and len(res["classes"]) == 7


@pytest.mark.parametrize(
    "name,patch",
    [
        ("vit_tiny_patch16_224", 6),
        ("convit_tiny", 6),
        ("crossvit_tiny_240", (6, 8)),
        ("vit_base_r50_s16_224", 1),  # one token per backbone feature cell, as built
        ("resnet18d", None),
        ("vgg16", None),
    ],
)
def test_default_job_builds_every_family_at_48px(name, patch):
    """The README's job with ``--model NAME`` and its defaults (48 px, patch 6) builds a model
    of every family that runs on 48 px inputs (CrossViT needed a patch pair, the hybrid none)."""
    model = build_model(FinetuneConfig(model=name), 7)
    assert getattr(getattr(model, "cfg", None), "patch_size", None) == patch
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 7)


def test_patch_override_per_family():
    assert patch_override("vit", 8) == 8 and patch_override("convit", 6) == 6
    assert patch_override("crossvit", 6) == (6, 8) and patch_override("crossvit", 12) == (12, 16)
    assert patch_override("crossvit", 6, multi_conv=True) is None  # the dagger stem exists for 12/16 only
    assert patch_override("vit_hybrid", 6) is None and patch_override("resnet", 6) is None
    assert patch_override("vit", None) is None
