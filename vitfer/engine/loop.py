"""Fine-tuning and evaluation of vitfer models on FER data.

    from vitfer.engine import FinetuneConfig, finetune
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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .config import FinetuneConfig, RunFolderError, TrainingError
from vitfer.layers.drop_path import global_batch
from vitfer.runtime import autocast

from .metrics import evaluate
from .ema import ModelEma
from .mixing import mix_batch, soft_cross_entropy
from .model import apply_freeze, build_model, build_optimizer, default_lr, set_train_mode
from .distributed import BatchPart, DistInfo, batch_part, dist_info
from .runs import (
    STATE_FILE, config_differences, default_out_dir, load_train_state, prepare_run_folder, save_train_state, versions,
)

_logger = logging.getLogger(__name__)


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
    if not root and cfg.labels:
        root = str(Path(cfg.labels).expanduser().parent)
    if not root:
        raise ValueError(f"dataset {cfg.dataset!r} needs a folder: pass data_dir (--data-dir) or set VITFER_DATA_DIR")
    kwargs: dict[str, Any] = {}
    if cfg.dataset == "folder":
        # Photos of any size: each is resized at load time to the run's input size (shorter side,
        # then a centre crop), so memory stays bounded.
        kwargs.update(image_size=run_input_size(cfg), labels=cfg.labels, subject_pattern=cfg.subject_pattern)
        if cfg.crop_faces:
            kwargs.update(preprocess=face_cropper(cfg.face_margin), face_cropped=True)
    elif cfg.crop_faces:  # JAFFE: head-and-shoulders photos; crops of each face, resized at load time
        kwargs.update(preprocess=face_cropper(cfg.face_margin), image_size=run_input_size(cfg))
    return load_dataset(cfg.dataset, root, **kwargs)


def face_cropper(margin: float):
    """A load-time step that keeps the largest face the Haar-cascade detector finds (with
    ``margin``), the crop ``vitfer predict --detect`` gives a model; images without a face are
    skipped and named. Needs the ``detect`` extra (OpenCV)."""
    from vitfer.data.faces import FaceDetector, crop_largest_face

    try:
        detector = FaceDetector()
    except ImportError as e:
        raise ImportError(f"--crop-faces (the scratch recipe's default on JAFFE): {e}; or pass --no-crop-faces to "
                          f"train on the whole photos") from e

    def crop(image):
        face = crop_largest_face(image, margin, detector=detector)
        return (face, "") if face is not None else (None, "no face found (--crop-faces)")

    return crop


def run_input_size(cfg: FinetuneConfig) -> int:
    """The run's input size: ``img_size``, else (the model's own) the registered variant's."""
    size = cfg.sizes()[0]
    if size is None:
        from vitfer.models import get_model_spec

        size = int(get_model_spec(cfg.model).pretrained_cfg.input_size[-1])
    return int(size)


def _lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up to ``peak``, then cosine decay to zero (or ``peak`` held: ``constant``)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class EpochBatchSampler(Sampler):
    """The training batches of one epoch: a permutation seeded by ``(seed, epoch)`` cut into
    global batches of ``batch_size``; with ``world > 1`` processes, rank ``r`` takes the ``r``-th
    slice of every global batch (:meth:`part`: equal slices, except when a global batch smaller
    than ``batch_size`` does not split evenly). So the batches depend on the seed and the epoch
    alone (nothing to save for an exact resume), and ``world`` processes see, together, exactly
    the batches one process would."""

    def __init__(self, n: int, batch_size: int, seed: int, *, drop_last: bool, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes")
        if n < world:
            raise ValueError(f"the training part has {n} image{'s' * (n != 1)}, fewer than the {world} processes: "
                             f"each process needs at least one image of every batch")
        if not drop_last and 0 < n % batch_size < world:
            raise ValueError(f"the last batch of an epoch ({n} images, batch_size {batch_size}) has {n % batch_size} "
                             f"image(s), fewer than the {world} processes: pass drop_last=True")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def part(self, b: int) -> BatchPart:
        """This rank's slice of the ``b``-th global batch of an epoch."""
        return batch_part(min(self.batch_size, self.n - b * self.batch_size), self.rank, self.world)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        perm = torch.randperm(self.n, generator=g).tolist()
        for b in range(len(self)):
            part = self.part(b)
            yield perm[b * self.batch_size:][part.start:part.stop]


class Callback:
    """Hooks into a run (progress bars, tests); every method is optional. ``info`` dicts carry
    ``epoch`` (1-based), ``epochs``, ``step``, ``steps_per_epoch`` and what the event adds."""

    def on_train_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, info: dict[str, Any]) -> None: ...  # adds the batch's loss, accuracy, images
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...  # the epoch's metrics.jsonl line
    def on_train_end(self, result: dict[str, Any]) -> None: ...

def finetune(
    cfg: FinetuneConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns (and writes) the run's metrics.

    The run folder (``cfg.out_dir``, default a new ``runs/<model>-<dataset>-<time>``) gets
    ``config.json`` (the config, library versions and the run's status: running / finished /
    failed), ``metrics.jsonl`` (one line an epoch, as it happens), ``model.safetensors`` (best
    epoch, self-describing), ``state.safetensors`` (after every epoch, atomically: everything
    needed to continue exactly) and ``metrics.json`` (the history and the test metrics). The data
    and split are checked before anything is written.

    Args:
        resume: continue the run in ``cfg.out_dir`` from its last finished epoch; the result is
            bit-identical to an uninterrupted run on the same device. The config must equal the
            stored one (up to :data:`~vitfer.engine.runs.RESUMABLE_CHANGES`). A finished run is
            not trained again: its metrics are returned.
        callbacks: :class:`Callback` hooks (progress display).

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every process trains on its slice of each
    global batch of ``cfg.batch_size`` (gloo on the CPU, NCCL on CUDA); only rank 0 writes.

    Raises:
        ValueError: a bad config, dataset or split (named); :class:`RunFolderError` when the
            folder holds another run and ``overwrite`` is off, or when ``resume`` finds no run,
            a different config or no state.
        TrainingError: the loss became non-finite (epoch and step named); the checkpoint and
            state of the last good epoch stay in place.
    """
    from vitfer.data import build_transforms, make_split
    from vitfer.weights.io import atomic_write_text

    cfg.validate()
    dist = dist_info(cfg.device)
    device = dist.device
    t_start = time.perf_counter()
    out_dir, state = _resume_check(cfg) if resume else (None, None)
    if state is not None and state.get("status") == "finished":
        _logger.info("run %s is already finished; nothing to resume", out_dir)
        return json.loads((out_dir / "metrics.json").read_text())
    torch.manual_seed(cfg.seed)
    data = build_dataset(cfg)
    split = make_split(
        data, cfg.split, seed=cfg.seed, test_size=cfg.test_size, val_size=cfg.val_size,
        n_folds=cfg.n_folds, fold=cfg.fold,
    )
    for part in ("train", "test"):
        if not split[part]:
            raise ValueError(f"the {cfg.split} split of {cfg.dataset} ({len(data)} images) leaves no {part} images")
    model = build_model(cfg, data.num_classes).to(device)
    counts = apply_freeze(model, cfg.freeze)
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

    if out_dir is None:
        out = cfg.out_dir or (dist.broadcast_object(str(default_out_dir(cfg))) if dist.world > 1 else default_out_dir(cfg))
        out_dir = prepare_run_folder(out, cfg.overwrite) if dist.is_main else Path(out)
        dist.barrier()
    run_cfg = {**asdict(cfg), "out_dir": str(out_dir)}
    if state is None:
        state = {"config": run_cfg, "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    state.update(status="running", world_size=dist.world)
    state.pop("error", None)
    if dist.is_main:
        atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
    _logger.info(
        "%s on %s (%s split): %d train / %d val / %d test images, %d classes, input %s, %.1fM parameters; run folder %s",
        model.model_name, cfg.dataset, cfg.split, len(train_set), len(val_set or []), len(test_set),
        data.num_classes, tuple(pcfg["input_size"]), n_params / 1e6, out_dir,
    )
    pre_info: Optional[dict[str, Any]] = None
    try:
        if cfg.pretrain:
            from .pretrain import load_pretraining, run_pretraining

            pre_ckpt, pre_classes = run_pretraining(cfg, out_dir, callbacks)
            pre_info = {"dataset": cfg.pretrain, "out_dir": str(pre_ckpt.parent), "checkpoint": str(pre_ckpt)}
            load_pretraining(model, cfg, pre_ckpt, pre_classes, data.classes).to(device)
            counts = apply_freeze(model, cfg.freeze)
        if cfg.head == "svm":
            from .svm import fit_svm_head

            result = fit_svm_head(cfg, model, data, split, train_set, val_set, test_set, dist, out_dir)
        else:
            result = _train_and_test(cfg, model, data, split, train_set, val_set, test_set, dist, out_dir, resume,
                                     callbacks)
    except BaseException as e:
        if dist.is_main:
            state.update(status="failed", error=f"{type(e).__name__}: {e}")
            atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
        raise
    if pre_info is not None:
        result["pretrain"] = pre_info
    result.update(config=run_cfg, versions=state["versions"], params_m=n_params / 1e6,
                  trainable_params_m=counts["trainable"] / 1e6,
                  seconds=time.perf_counter() - t_start)
    if dist.is_main:
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
        state["status"] = "finished"
        atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
    for cb in callbacks:
        cb.on_train_end(result)
    _logger.info("finished in %.0f s (best epoch %s); run folder %s", result["seconds"], result["best_epoch"], out_dir)
    return result


def _resume_check(cfg: FinetuneConfig) -> tuple[Path, dict[str, Any]]:
    """The run folder and stored ``config.json`` of a run to resume, after checking that ``cfg``
    is the same run."""
    if not cfg.out_dir:
        raise RunFolderError("resume needs the run folder: out_dir (--resume RUN_DIR)")
    out = Path(cfg.out_dir).expanduser()
    try:
        state = json.loads((out / "config.json").read_text())
        old = state["config"]
    except FileNotFoundError:
        raise RunFolderError(f"cannot resume {out}: it holds no run (no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"cannot resume {out}: its config.json is unreadable ({e})") from e
    diff = config_differences(old, asdict(cfg))
    if diff:
        raise RunFolderError(f"cannot resume {out} with another config; differing fields: " + "; ".join(diff))
    if state.get("status") != "finished" and not (out / STATE_FILE).is_file():
        raise RunFolderError(f"cannot resume {out}: no {STATE_FILE} (it stopped before its first epoch ended); "
                             f"start it again with --overwrite")
    return out, state


def _train_and_test(cfg, model, data, split, train_set, val_set, test_set, dist: DistInfo, out_dir: Path,
                    resume: bool, callbacks: Sequence[Callback]) -> dict[str, Any]:
    from vitfer.weights import load, save
    from vitfer.weights.io import atomic_write_text

    device = dist.device
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, drop_last=len(train_set) > cfg.batch_size,
                                rank=dist.rank, world=dist.world)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers)
    steps_per_epoch = len(sampler)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    peak_lr = cfg.lr if cfg.lr is not None else default_lr(model)
    opt = build_optimizer(cfg, model, peak_lr)
    train_model = dist.wrap(model)
    ema = ModelEma(model, cfg.ema) if cfg.ema else None
    eval_model = ema.module if ema is not None else model  # validated, saved and tested

    ckpt = out_dir / "model.safetensors"
    history: list[dict[str, Any]] = []
    best: Optional[dict[str, Any]] = None
    step, start_epoch, train_time = 0, 0, 0.0
    if resume and (out_dir / STATE_FILE).is_file():
        info = load_train_state(out_dir / STATE_FILE, model, opt, ema=ema)
        history, best, step, train_time = info["history"], info["best"], info["step"], info["train_time_s"]
        start_epoch = info["epoch"]
        if dist.is_main:
            atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        _logger.info("resumed %s after epoch %d (step %d)", out_dir, start_epoch, step)
    for cb in callbacks:
        cb.on_train_start({"epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch, "start_epoch": start_epoch,
                           "step": step, "total_steps": total, "out_dir": str(out_dir), "model": model})
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        set_train_mode(train_model)
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for cb in callbacks:
            cb.on_epoch_start({"epoch": epoch + 1, "epochs": cfg.epochs, "step": step, "steps_per_epoch": steps_per_epoch})
        for b, (x, y) in enumerate(loader):
            if step >= total:
                break
            part = sampler.part(b)  # this process's rows of the global batch
            for grp in opt.param_groups:
                grp["lr"] = _lr_at(step, total, peak_lr, min(cfg.warmup_steps, max(1, total // 5)), cfg.schedule)
            x, y = x.to(device), y.to(device)
            if cfg.mixup or cfg.cutmix:
                x, target, _ = mix_batch(dist.gather(x, part), dist.gather(y, part), data.num_classes, mixup=cfg.mixup,
                                         cutmix=cfg.cutmix, smoothing=cfg.label_smoothing, seed=cfg.seed, step=step,
                                         rows=part.rows)
            with autocast(device, cfg.amp), global_batch(part.start, part.total):
                logits = train_model(x)
            if cfg.mixup or cfg.cutmix:
                loss = soft_cross_entropy(logits, target)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                kept = f"; the checkpoint and state of epoch {history[-1]['epoch']} in {out_dir} are kept" if history else ""
                raise TrainingError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (lr "
                    f"{opt.param_groups[0]['lr']:.3g}): lower the learning rate (--lr){kept}"
                )
            opt.zero_grad(set_to_none=True)
            (loss * part.weight).backward()
            opt.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            b_loss, b_correct, b_n = dist.sum(loss.item() * y.numel(), (logits.argmax(-1) == y).sum().item(), y.numel())
            loss_sum, correct, seen = loss_sum + b_loss, correct + b_correct, seen + b_n
            for cb in callbacks:
                cb.on_step({"epoch": epoch + 1, "epochs": cfg.epochs, "step": step, "steps_per_epoch": steps_per_epoch,
                            "loss": b_loss / max(1, b_n), "accuracy": b_correct / max(1, b_n), "images": b_n})
        seconds = time.perf_counter() - t0
        train_time += seconds
        rec: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen), "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9),
        }
        if val_set is not None:
            v = evaluate(eval_model, val_set, device=device, num_classes=data.num_classes, amp=cfg.amp)
            rec.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        history.append(rec)
        better = best is None or val_set is None or (rec["val_accuracy"], -rec["val_loss"]) > (
            best["val_accuracy"], -best["val_loss"]
        )
        if better:
            best = rec
        if dist.is_main:
            if better:
                save(eval_model, ckpt, class_names=list(data.classes), source=f"vitfer finetune on {cfg.dataset}",
                     epoch=epoch + 1, dataset=cfg.dataset, split=cfg.split,
                     finetune_config=asdict(cfg))
            save_train_state(out_dir / STATE_FILE, model, opt, {
                "epoch": epoch + 1, "step": step, "history": history, "best": best, "train_time_s": train_time,
                "config": asdict(cfg),
            }, ema=ema)
            with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        dist.barrier()
        _logger.info(
            "epoch %d/%d  train loss %.4f acc %.3f%s  (%.1f s, %.0f img/s)", epoch + 1, cfg.epochs, rec["train_loss"],
            rec["train_accuracy"],
            f"  val loss {rec['val_loss']:.4f} acc {rec['val_accuracy']:.3f}" if val_set is not None else "",
            rec["seconds"], rec["images_per_s"],
        )
        for cb in callbacks:
            cb.on_epoch_end(rec)

    best_model = load(ckpt, map_location=device)
    test = evaluate(best_model, test_set, device=device, num_classes=data.num_classes, amp=cfg.amp)
    return run_result(cfg, model, data, split, test, ckpt, out_dir, history=history,
                      best_epoch=best["epoch"] if best else None, peak_lr=peak_lr, train_time_s=train_time)


def run_result(cfg, model, data, split, test: dict[str, Any], ckpt: Path, out_dir: Path, **extra: Any) -> dict[str, Any]:
    """The result of a run (``metrics.json`` without the config): data, split and test metrics,
    with ``extra`` (history, best epoch, training time ...) in between."""
    return {
        "model": model.model_name,
        "classes": list(data.classes),
        "split_sizes": {k: len(v) for k, v in split.items()},
        "test_subjects": sorted({str(data.subjects[i]) for i in split["test"] if data.subjects[i] is not None}),
        "seed": cfg.seed,
        **extra,
        "test": test,
        "test_accuracy": test["accuracy"],
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion": test["confusion"],
        "class_names": list(data.classes),
        "checkpoint": str(ckpt),
        "out_dir": str(out_dir),
    }
