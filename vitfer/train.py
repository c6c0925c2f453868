"""Fine-tuning and evaluation of vitfer models on FER data.

    from vitfer.train import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(model="convit_tiny", dataset="ckplus48", data_dir="..."))

With ``dataset="synthetic"`` (the default) the built-in procedurally drawn faces are used, so the
job runs with no files at all. The best epoch (on the validation part if there is one, else the
last epoch) is written as a self-describing checkpoint (``vitfer.load`` rebuilds it) next to a
``metrics.json`` with the history, the test accuracy, per-class accuracy and confusion matrix.
Library code logs through ``logging``; the ``vitfer finetune`` command prints those lines.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = ["FinetuneConfig", "build_dataset", "evaluate", "finetune", "param_groups"]

_logger = logging.getLogger(__name__)

DATASET_KINDS = ("synthetic", "ckplus48", "jaffe", "folder")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (saved into ``metrics.json``)."""

    model: str = "resnet18d"  # from scratch on a CPU; transformers need pretrained weights or long runs
    dataset: str = "synthetic"  # synthetic | ckplus48 | jaffe | folder
    data_dir: Optional[str] = None  # dataset folder (default: $VITFER_DATA_DIR for ckplus48/jaffe)
    split: str = "random"  # random | subject | kfold | subject-kfold
    fold: int = 0
    n_folds: int = 5
    test_size: Optional[float] = None  # None: the dataset's default (the study's 200 / 70 images)
    val_size: float = 0.1  # fraction of the training side held out for model selection
    img_size: Optional[int] = 48  # None: the model's pretrained input size
    patch_size: Optional[int] = 6  # patch override for transformers on small images (None: keep; see patch_override)
    pretrained: Union[bool, str] = False
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any other config field, e.g. depth
    epochs: int = 5
    batch_size: int = 16
    optimizer: str = "adamw"  # adamw | sgd (the study: SGD, lr 0.003, batch 10)
    lr: Optional[float] = None  # peak lr of the warm-up + cosine schedule; None: 1e-3 CNNs, 1e-4 transformers
    weight_decay: float = 0.05
    warmup_steps: int = 50
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.1
    augment: dict[str, Any] = field(default_factory=dict)  # overrides of vitfer.data.DEFAULT_AUGMENT
    synthetic_n: int = 1000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16
    num_workers: int = 0
    out_dir: str = "runs/finetune"
    max_steps: Optional[int] = None  # stop early after this many optimiser steps (smoke tests)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_dataset(cfg: FinetuneConfig):
    """The full (untransformed) dataset of a run."""
    from vitfer.data import SyntheticFaces, load_dataset

    if cfg.dataset not in DATASET_KINDS:
        raise ValueError(f"dataset must be one of {DATASET_KINDS}, got {cfg.dataset!r}")
    if cfg.dataset == "synthetic":
        size = cfg.img_size or 64
        return SyntheticFaces(n=cfg.synthetic_n, image_size=max(16, size), seed=cfg.seed)
    root = cfg.data_dir or os.environ.get("VITFER_DATA_DIR")
    if not root:
        raise ValueError(f"dataset {cfg.dataset!r} needs a folder: pass data_dir (--data-dir) or set VITFER_DATA_DIR")
    return load_dataset(cfg.dataset, root)


def patch_override(family: str, patch: Optional[int], multi_conv: bool = False) -> Any:
    """The ``patch_size`` override that ``FinetuneConfig.patch_size`` means for a family, or None
    where the family keeps its own: ViT and ConViT take ``patch``; CrossViT takes ``(patch,
    round(patch * 4 / 3))``, timm's 12:16 ratio between its branches, except the dagger variants
    whose three-conv stem only exists for 12 and 16; the hybrid's patches count backbone feature
    cells (its backbone already downsamples 16x) and CNNs have none."""
    if patch is None:
        return None
    if family in ("vit", "convit"):
        return patch
    if family == "crossvit" and not multi_conv:
        return (patch, max(1, round(patch * 4 / 3)))
    return None


def _build_model(cfg: FinetuneConfig, num_classes: int) -> nn.Module:
    from vitfer.models import create_model, get_model_spec
    from vitfer.weights.convert import default_config, import_family

    spec = get_model_spec(cfg.model)
    import_family(spec.family)
    overrides: dict[str, Any] = {"num_classes": num_classes}
    fields = _config_fields(spec)
    if cfg.img_size is not None and "img_size" in fields:
        overrides["img_size"] = cfg.img_size
    multi_conv = cfg.model_overrides.get("multi_conv", getattr(default_config(spec.name), "multi_conv", False))
    patch = patch_override(spec.family, cfg.patch_size, multi_conv)
    if patch is not None and "patch_size" in fields:
        overrides["patch_size"] = patch
    if cfg.drop_path_rate and "drop_path_rate" in fields:
        overrides["drop_path_rate"] = cfg.drop_path_rate
    overrides.update(cfg.model_overrides)
    if cfg.pretrained and "patch_size" in overrides:
        raise ValueError("a patch_size override cannot take pretrained patch-embedding weights; pass patch_size=None")
    model = create_model(spec.name, pretrained=cfg.pretrained, **overrides)
    if cfg.img_size is not None and "img_size" not in fields and model.pretrained_cfg:
        # CNNs take any input size: train and evaluate at the requested one.
        c = model.pretrained_cfg.get("input_size", (3,))[0]
        model.pretrained_cfg["input_size"] = (c, cfg.img_size, cfg.img_size)
    return model


def _config_fields(spec) -> set[str]:
    from vitfer.weights.convert import default_config

    cfg = default_config(spec.name)
    return set(getattr(cfg, "__dataclass_fields__", {}))


def default_lr(model: nn.Module) -> float:
    """Peak AdamW learning rate when none is given: 1e-3 for CNNs, 1e-4 for transformers.

    Measured on CK+48 from scratch (MEASURED.md): small ViT / ConViT stay at chance at 3e-4 and
    above without long warm-up, and learn at 1e-4; ResNets learn fast at 1e-3.
    """
    from vitfer.models import get_model_spec

    family = get_model_spec(getattr(model, "model_name", "") or "vit_tiny_patch16_224").family
    return 1e-3 if family in ("resnet", "vgg") else 1e-4


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, tokens and position embeddings."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset, *, batch_size: int = 64, device: Union[str, torch.device] = "cpu",
    num_classes: Optional[int] = None, amp: str = "none",
) -> dict[str, Any]:
    """Accuracy, mean loss, per-class accuracy and confusion matrix (rows: true class).

    ``dataset`` yields (image (3, H, W), label); it must carry its eval transform.
    """
    device = torch.device(device)
    model.eval()
    n_cls = num_classes or len(dataset.classes)
    conf = torch.zeros(n_cls, n_cls, dtype=torch.long)
    loss_sum, n = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with _autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        pred = logits.argmax(-1)
        conf += torch.bincount((y * n_cls + pred).cpu(), minlength=n_cls * n_cls).reshape(n_cls, n_cls)
        n += y.numel()
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    per_class = (conf.diag().float() / conf.sum(1).clamp(min=1).float()).tolist()
    return {
        "accuracy": conf.diag().sum().item() / n,
        "loss": loss_sum / n,
        "n": n,
        "per_class_accuracy": dict(zip(getattr(dataset, "classes", range(n_cls)), per_class)),
        "confusion": conf.tolist(),
    }


def _autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp != "none":
        raise ValueError(f"amp must be 'none' or 'bf16', got {amp!r}")
    return torch.autocast(device.type, enabled=False)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns (and writes) the run's metrics.

    Writes ``<out_dir>/model.safetensors`` (best epoch, self-describing) and
    ``<out_dir>/metrics.json``.
    """
    from vitfer.data import build_transforms, make_split
    from vitfer.weights import save
    from vitfer.weights.io import atomic_write_text

    if cfg.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {cfg.epochs}, {cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    t_start = time.perf_counter()
    data = build_dataset(cfg)
    split = make_split(
        data, cfg.split, seed=cfg.seed, test_size=cfg.test_size, val_size=cfg.val_size,
        n_folds=cfg.n_folds, fold=cfg.fold,
    )
    model = _build_model(cfg, data.num_classes).to(device)
    pcfg = model.pretrained_cfg
    train_set = data.subset(split["train"], transform=build_transforms(pcfg, train=True, augment=cfg.augment))
    train_set.seed = cfg.seed
    eval_tf = build_transforms(pcfg, train=False)
    val_set = data.subset(split["val"], transform=eval_tf) if split["val"] else None
    test_set = data.subset(split["test"], transform=eval_tf)
    _logger.info(
        "%s on %s (%s split): %d train / %d val / %d test images, %d classes, input %s, %.1fM parameters",
        model.model_name, cfg.dataset, cfg.split, len(train_set), len(val_set or []), len(test_set),
        data.num_classes, tuple(pcfg["input_size"]), sum(p.numel() for p in model.parameters()) / 1e6,
    )

    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) > cfg.batch_size,
        generator=g, num_workers=cfg.num_workers,
    )
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    groups = param_groups(model, cfg.weight_decay)
    peak_lr = cfg.lr if cfg.lr is not None else default_lr(model)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=peak_lr)
    else:
        opt = torch.optim.SGD(groups, lr=peak_lr, momentum=0.9)

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "model.safetensors"
    history: list[dict[str, Any]] = []
    best: Optional[dict[str, Any]] = None
    step = 0
    for epoch in range(cfg.epochs):
        train_set.set_epoch(epoch)
        model.train()
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in loader:
            if step >= total:
                break
            for grp in opt.param_groups:
                grp["lr"] = _lr_at(step, total, peak_lr, min(cfg.warmup_steps, max(1, total // 5)))
            x, y = x.to(device), y.to(device)
            with _autocast(device, cfg.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * y.numel()
            correct += (logits.argmax(-1) == y).sum().item()
            seen += y.numel()
        rec: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen), "seconds": time.perf_counter() - t0,
        }
        if val_set is not None:
            v = evaluate(model, val_set, device=device, num_classes=data.num_classes, amp=cfg.amp)
            rec.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        history.append(rec)
        _logger.info(
            "epoch %d/%d  train loss %.4f acc %.3f%s  (%.1f s)", epoch + 1, cfg.epochs, rec["train_loss"],
            rec["train_accuracy"],
            f"  val loss {rec['val_loss']:.4f} acc {rec['val_accuracy']:.3f}" if val_set is not None else "",
            rec["seconds"],
        )
        better = best is None or val_set is None or (rec["val_accuracy"], -rec["val_loss"]) > (
            best["val_accuracy"], -best["val_loss"]
        )
        if better:
            best = rec
            save(model, ckpt, class_names=list(data.classes), source=f"vitfer finetune on {cfg.dataset}",
                 epoch=epoch + 1, dataset=cfg.dataset, split=cfg.split)
        if step >= total:
            break

    from vitfer.weights import load

    best_model = load(ckpt, map_location=device)
    test = evaluate(best_model, test_set, device=device, num_classes=data.num_classes, amp=cfg.amp)
    result = {
        "config": asdict(cfg),
        "model": model.model_name,
        "classes": list(data.classes),
        "split_sizes": {k: len(v) for k, v in split.items()},
        "history": history,
        "best_epoch": best["epoch"] if best else None,
        "peak_lr": peak_lr,
        "test": test,
        "checkpoint": str(ckpt),
        "seconds": time.perf_counter() - t_start,
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
    _logger.info(
        "test accuracy %.3f on %d images (best epoch %s); checkpoint %s", test["accuracy"], test["n"],
        result["best_epoch"], ckpt,
    )
    return result
