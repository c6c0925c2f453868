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

__all__ = [
    "FinetuneConfig", "RunFolderError", "TrainingError", "build_dataset", "classification_metrics", "evaluate",
    "finetune", "param_groups",
]

_logger = logging.getLogger(__name__)

DATASET_KINDS = ("synthetic", "ckplus48", "jaffe", "folder")
SPLIT_KINDS = ("random", "subject", "kfold", "subject-kfold")
OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("none", "bf16")
AUTO = "auto"
#: Sizes of the from-scratch job (``img_size`` / ``patch_size`` = "auto" without pretrained weights).
SCRATCH_IMG_SIZE, SCRATCH_PATCH_SIZE = 48, 6
#: The files that make up a run folder; a folder holding any of them belongs to a run.
RUN_FILES = ("config.json", "metrics.jsonl", "metrics.json", "model.safetensors")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the epoch and step."""


class RunFolderError(ValueError):
    """The output folder already holds another run (pass ``overwrite=True`` / ``--overwrite``)."""


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (saved into the run folder's ``config.json`` and
    ``metrics.json``). Checked when built (and again by :func:`finetune`): a bad value raises a
    ``ValueError`` that names the field.

    ``img_size`` and ``patch_size`` default to ``"auto"``: from scratch that is 48 px with 6-px
    patches (a size a CPU trains in minutes), with ``pretrained`` weights the model's own input
    size and patch size (the study fine-tuned at 224 / 240 / 384), since pretrained
    patch-embedding weights only fit their own patch size. ``None`` always means the model's own.
    """

    model: str = "resnet18d"  # from scratch on a CPU; transformers need pretrained weights or long runs
    dataset: str = "synthetic"  # synthetic | ckplus48 | jaffe | folder
    data_dir: Optional[str] = None  # dataset folder (ckplus48/jaffe default: $VITFER_DATA_DIR; folder: required)
    split: str = "random"  # random | subject | kfold | subject-kfold
    fold: int = 0
    n_folds: int = 5
    test_size: Optional[float] = None  # None: the dataset's default (the study's 200 / 70 images)
    val_size: float = 0.1  # fraction of the training side held out for model selection
    img_size: Union[int, str, None] = AUTO  # "auto": 48 from scratch, the model's own when pretrained; None: own
    patch_size: Union[int, str, None] = AUTO  # "auto": 6 from scratch (transformers), own when pretrained; None: own
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
    out_dir: Optional[str] = None  # None: a new folder runs/<model>-<dataset>-<date>-<time>
    overwrite: bool = False  # replace a previous run in out_dir (else that is an error)
    max_steps: Optional[int] = None  # stop early after this many optimiser steps (smoke tests)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (see the class docstring)."""

        def bad(field_name: str, want: str) -> ValueError:
            return ValueError(f"{field_name} must be {want}, got {getattr(self, field_name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name, choices in (("dataset", DATASET_KINDS), ("split", SPLIT_KINDS), ("optimizer", OPTIMIZERS),
                              ("amp", AMP_MODES)):
            if getattr(self, name) not in choices:
                raise bad(name, "one of " + ", ".join(choices))
        for name in ("img_size", "patch_size"):
            v = getattr(self, name)
            if not (v is None or v == AUTO or (is_int(v) and v >= 1)):
                raise bad(name, "a positive int, 'auto' or None (the model's own)")
        for name in ("epochs", "batch_size", "n_folds", "synthetic_n"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an int >= 1")
        if self.split in ("kfold", "subject-kfold"):
            if self.n_folds < 2:
                raise bad("n_folds", f"at least 2 for split {self.split!r}")
            if not is_int(self.fold) or not 0 <= self.fold < self.n_folds:
                raise bad("fold", f"in 0..{self.n_folds - 1} (n_folds={self.n_folds})")
        if not 0.0 <= self.val_size < 1.0 and not (is_int(self.val_size) and self.val_size >= 1):
            raise bad("val_size", "a fraction in [0, 1) or a count")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a positive finite number")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", ">= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "in [0, 1)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise bad("drop_path_rate", "in [0, 1)")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an int >= 0")
        if not is_int(self.num_workers) or self.num_workers < 0:
            raise bad("num_workers", "an int >= 0")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < 1):
            raise bad("max_steps", "None or an int >= 1")
        if self.dataset == "folder" and not self.data_dir:
            raise ValueError("dataset 'folder' needs its folder: data_dir (--data-dir DIR), a folder of class sub-folders")
        _device(self.device)

    def sizes(self) -> tuple[Optional[int], Optional[int]]:
        """``(img_size, patch_size)`` with ``"auto"`` resolved (None: the model's own)."""
        img = self.img_size if self.img_size != AUTO else (None if self.pretrained else SCRATCH_IMG_SIZE)
        patch = self.patch_size if self.patch_size != AUTO else (None if self.pretrained else SCRATCH_PATCH_SIZE)
        return img, patch  # type: ignore[return-value]


def _device(name: str) -> torch.device:
    """``"auto"`` (CUDA when there is a GPU, else the CPU) or a torch device string; an unknown
    device or CUDA on a machine without it is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return dev


def build_dataset(cfg: FinetuneConfig):
    """The full (untransformed) dataset of a run."""
    from vitfer.data import SyntheticFaces, load_dataset

    cfg.validate()
    if cfg.dataset == "synthetic":
        size = cfg.sizes()[0] or 64
        return SyntheticFaces(n=cfg.synthetic_n, image_size=max(16, size), seed=cfg.seed)
    root = cfg.data_dir
    if not root and cfg.dataset in ("ckplus48", "jaffe"):
        root = os.environ.get("VITFER_DATA_DIR")
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
    img_size, patch_size = cfg.sizes()
    overrides: dict[str, Any] = {"num_classes": num_classes}
    fields = _config_fields(spec)
    if img_size is not None and "img_size" in fields:
        overrides["img_size"] = img_size
    multi_conv = cfg.model_overrides.get("multi_conv", getattr(default_config(spec.name), "multi_conv", False))
    patch = patch_override(spec.family, patch_size, multi_conv)
    if patch is not None and "patch_size" in fields:
        overrides["patch_size"] = patch
    if cfg.drop_path_rate and "drop_path_rate" in fields:
        overrides["drop_path_rate"] = cfg.drop_path_rate
    overrides.update(cfg.model_overrides)
    if cfg.pretrained and "patch_size" in overrides:
        raise ValueError(
            f"patch_size={overrides['patch_size']!r} cannot take {spec.name}'s pretrained patch-embedding weights, "
            f"which only fit the model's own patch size: leave patch_size at 'auto' or None (on the command line "
            f"leave out --patch-size, or pass --patch-size 0)"
        )
    # A timm-style "arch.tag" name keeps its tag: the pretrained weights are that tag's.
    model = create_model(cfg.model, pretrained=cfg.pretrained, **overrides)
    pcfg = model.pretrained_cfg
    if pcfg:
        c = int(getattr(model, "in_chans", pcfg.get("input_size", (3,))[0]))
        h, w = pcfg.get("input_size", (3, 224, 224))[1:]
        if img_size is not None and "img_size" not in fields:
            h = w = img_size  # CNNs take any input size: train and evaluate at the requested one.
        pcfg["input_size"] = (c, h, w)
    return model


def _config_fields(spec) -> set[str]:
    from vitfer.weights.convert import default_config

    cfg = default_config(spec.name)
    return set(getattr(cfg, "__dataclass_fields__", {}))


def default_lr(model: nn.Module) -> float:
    """Peak AdamW learning rate when none is given: 1e-3 for CNNs, 1e-4 for transformers.

    Measured on CK+48 from scratch on a 2-core CPU: small ViT / ConViT stay at chance at 3e-4 and
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


def classification_metrics(confusion: Sequence[Sequence[int]], classes: Optional[Sequence[Any]] = None) -> dict[str, Any]:
    """The metrics FER papers report, from a confusion matrix (rows: true class, columns: predicted).

    Returns ``accuracy``, ``uar`` (unweighted average recall: the mean of the per-class recalls
    over the classes that have test images), ``macro_f1`` (the mean F1 over the classes that
    occur as truth or prediction; a class with predictions but no images counts with F1 = 0),
    ``per_class_accuracy`` (= recall; ``None`` for a class with no test images: absent, not a
    failure), ``support`` per class, ``n`` and the ``confusion`` matrix itself.
    """
    conf = torch.as_tensor(confusion, dtype=torch.long)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {tuple(conf.shape)}")
    n_cls = conf.shape[0]
    names = list(classes) if classes is not None else list(range(n_cls))
    support, predicted, hits = conf.sum(1).tolist(), conf.sum(0).tolist(), conf.diag().tolist()
    n = sum(support)
    if n == 0:
        raise ValueError("cannot compute metrics of an empty confusion matrix")
    recall = [h / s if s else None for h, s in zip(hits, support)]
    f1s = []
    for h, s, p in zip(hits, support, predicted):
        if s or p:
            f1s.append(2 * h / (s + p))  # = 2PR / (P + R)
    present = [r for r in recall if r is not None]
    return {
        "accuracy": sum(hits) / n,
        "uar": sum(present) / len(present),
        "macro_f1": sum(f1s) / len(f1s),
        "n": n,
        "per_class_accuracy": dict(zip(names, recall)),
        "support": dict(zip(names, support)),
        "confusion": conf.tolist(),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset, *, batch_size: int = 64, device: Union[str, torch.device] = "cpu",
    num_classes: Optional[int] = None, amp: str = "none",
) -> dict[str, Any]:
    """Accuracy, UAR, macro-F1, mean loss, per-class accuracy and confusion matrix (rows: true
    class); see :func:`classification_metrics`.

    ``dataset`` yields (image (C, H, W), label); it must carry its eval transform.
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
    res = classification_metrics(conf, getattr(dataset, "classes", None) or range(n_cls))
    res["loss"] = loss_sum / n
    return res


def _autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp != "none":
        raise ValueError(f"amp must be 'none' or 'bf16', got {amp!r}")
    return torch.autocast(device.type, enabled=False)


def default_out_dir(cfg: FinetuneConfig, root: Union[str, os.PathLike] = "runs") -> Path:
    """A new folder ``runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... if taken)."""
    stem = f"{cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}".replace(os.sep, "_")
    out, k = Path(root) / stem, 2
    while out.exists():
        out, k = Path(root) / f"{stem}-{k}", k + 1
    return out


def versions() -> dict[str, str]:
    """Versions of vitfer and the libraries a run's numbers depend on."""
    import numpy
    import PIL

    import vitfer

    return {"vitfer": vitfer.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__}


def prepare_run_folder(out_dir: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """Make ``out_dir`` ready for a new run.

    A folder that holds another run's files (:data:`RUN_FILES`) is an error unless ``overwrite``,
    which deletes those files first, so that the folder never mixes files of two runs (a run that
    fails later leaves only its own files, its ``config.json`` saying that it failed).
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} is a file")
    found = [f for f in RUN_FILES if (out / f).exists()]
    if found:
        if not overwrite:
            what = ""
            try:
                old = json.loads((out / "config.json").read_text())
                what = f" ({old['config']['model']} on {old['config']['dataset']}, {old.get('status', '?')})"
            except (OSError, ValueError, KeyError, TypeError):
                pass
            raise RunFolderError(
                f"output folder {out} already holds a run{what}: {', '.join(found)}; pass --overwrite "
                f"(overwrite=True) to replace it, or choose another --out"
            )
        for f in found:
            (out / f).unlink()
        _logger.info("replacing the previous run in %s", out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns (and writes) the run's metrics.

    The run folder (``cfg.out_dir``, default a new ``runs/<model>-<dataset>-<time>``) gets
    ``config.json`` (the config, library versions and the run's status: running / finished /
    failed), ``metrics.jsonl`` (one line an epoch, as it happens), ``model.safetensors`` (best
    epoch, self-describing) and ``metrics.json`` (the history and the test metrics). The data and
    split are checked before anything is written.

    Raises:
        ValueError: a bad config, dataset or split (named); :class:`RunFolderError` when the
            folder holds another run and ``overwrite`` is off.
        TrainingError: the loss became non-finite (epoch and step named); the checkpoint of the
            last good epoch stays in place.
    """
    from vitfer.data import build_transforms, make_split
    from vitfer.weights.io import atomic_write_text

    cfg.validate()
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    t_start = time.perf_counter()
    data = build_dataset(cfg)
    split = make_split(
        data, cfg.split, seed=cfg.seed, test_size=cfg.test_size, val_size=cfg.val_size,
        n_folds=cfg.n_folds, fold=cfg.fold,
    )
    for part in ("train", "test"):
        if not split[part]:
            raise ValueError(f"the {cfg.split} split of {cfg.dataset} ({len(data)} images) leaves no {part} images")
    model = _build_model(cfg, data.num_classes).to(device)
    pcfg = model.pretrained_cfg
    if getattr(data, "face_cropped", False):
        # Face crops (CK+48, JAFFE, synthetic): ImageNet's centre-crop margin would cut off the
        # chin and brows, so evaluation sees the whole image (crop_pct 1.0, stored in the checkpoint).
        pcfg["crop_pct"] = 1.0
    train_set = data.subset(split["train"], transform=build_transforms(pcfg, train=True, augment=cfg.augment))
    train_set.seed = cfg.seed
    eval_tf = build_transforms(pcfg, train=False)
    val_set = data.subset(split["val"], transform=eval_tf) if split["val"] else None
    test_set = data.subset(split["test"], transform=eval_tf)
    n_params = sum(p.numel() for p in model.parameters())

    out_dir = prepare_run_folder(cfg.out_dir or default_out_dir(cfg), cfg.overwrite)
    run_cfg = {**asdict(cfg), "out_dir": str(out_dir)}
    state = {"config": run_cfg, "versions": versions(), "status": "running", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
    _logger.info(
        "%s on %s (%s split): %d train / %d val / %d test images, %d classes, input %s, %.1fM parameters; run folder %s",
        model.model_name, cfg.dataset, cfg.split, len(train_set), len(val_set or []), len(test_set),
        data.num_classes, tuple(pcfg["input_size"]), n_params / 1e6, out_dir,
    )
    try:
        result = _train_and_test(cfg, model, data, split, train_set, val_set, test_set, device, out_dir)
    except BaseException as e:
        state.update(status="failed", error=f"{type(e).__name__}: {e}")
        atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
        raise
    result.update(config=run_cfg, versions=state["versions"], params_m=n_params / 1e6,
                  seconds=time.perf_counter() - t_start)
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
    state["status"] = "finished"
    atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
    _logger.info("finished in %.0f s (best epoch %s); run folder %s", result["seconds"], result["best_epoch"], out_dir)
    return result


def _train_and_test(cfg, model, data, split, train_set, val_set, test_set, device, out_dir: Path) -> dict[str, Any]:
    from vitfer.weights import load, save

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

    ckpt = out_dir / "model.safetensors"
    init = getattr(model, "pretrained_source", None) or "scratch"
    history: list[dict[str, Any]] = []
    best: Optional[dict[str, Any]] = None
    step = 0
    t_train = time.perf_counter()
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
                kept = f"; the checkpoint of epoch {best['epoch']} ({ckpt}) is kept" if best else ""
                raise TrainingError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (lr "
                    f"{opt.param_groups[0]['lr']:.3g}): lower the learning rate (--lr){kept}"
                )
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
        with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
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
                 epoch=epoch + 1, dataset=cfg.dataset, split=cfg.split, initialised_from=init)
        if step >= total:
            break
    train_time = time.perf_counter() - t_train

    best_model = load(ckpt, map_location=device)
    test = evaluate(best_model, test_set, device=device, num_classes=data.num_classes, amp=cfg.amp)
    return {
        "model": model.model_name,
        "classes": list(data.classes),
        "split_sizes": {k: len(v) for k, v in split.items()},
        "test_subjects": sorted({str(data.subjects[i]) for i in split["test"] if data.subjects[i] is not None}),
        "history": history,
        "best_epoch": best["epoch"] if best else None,
        "peak_lr": peak_lr,
        "train_time_s": train_time,
        "test": test,
        "test_accuracy": test["accuracy"],
        "checkpoint": str(ckpt),
        "out_dir": str(out_dir),
    }
