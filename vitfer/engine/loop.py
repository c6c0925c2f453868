"""The training loop of a run: batches, the learning-rate schedule, mixing, validation, the best
checkpoint and the state to resume from, then the test of the best epoch.

:func:`train_and_test` runs it for a prepared :class:`RunContext` (the resolved config, model,
data, split and run folder that :func:`vitfer.engine.finetune` sets up). Library code logs through
``logging``; the ``vitfer finetune`` command prints those lines.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from vitfer.layers.drop_path import global_batch
from vitfer.runtime import autocast

from .config import FinetuneConfig, RunFolderError, TrainingError
from .distill import (
    build_feature_hint, distillation_loss, student_outputs, tap_block_output, teacher_logits_and_map,
)
from .distributed import BatchPart, DistInfo, batch_part
from .ema import ModelEma
from .metrics import evaluate
from .mixing import mix_batch, soft_cross_entropy
from .model import build_optimizer, set_train_mode
from .runs import STATE_FILE, load_train_state, save_train_state

_logger = logging.getLogger(__name__)

#: Where an epoch's training time goes (``metrics.jsonl``'s ``phase_seconds``, summed over its
#: steps): ``data`` (the loader: decoding, augmentation, collation; and mixup / CutMix),
#: ``forward`` (the model's and the teacher's forward and the loss), ``backward``, ``optimizer``
#: (the step and the weight average) and ``other`` (the batch's metrics and the callbacks). Times
#: are the host's: on CUDA, where kernels run asynchronously, GPU work shows up where the host
#: waits for it (the check that the loss is finite, which ends ``forward``, and the loss read in
#: ``other``), not in the phase that queued it.
PHASES = ("data", "forward", "backward", "optimizer", "other")


def _lap(phases: dict[str, float], phase: str, since: float) -> float:
    """Add the time since ``since`` to ``phases[phase]``; returns now."""
    now = time.perf_counter()
    phases[phase] += now - since
    return now


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine") -> float:
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


@dataclass
class RunContext:
    """What a run trains and tests, prepared by :func:`vitfer.engine.finetune`: the resolved config,
    the model (on the run's device), the dataset with its split and the three transformed parts,
    the processes (:class:`~vitfer.engine.distributed.DistInfo`) and the run folder."""

    cfg: FinetuneConfig
    model: nn.Module
    data: Any
    split: dict[str, list[int]]
    train_set: Any
    val_set: Any
    test_set: Any
    dist: DistInfo
    out_dir: Path
    resume: bool = False
    callbacks: Sequence["Callback"] = field(default_factory=tuple)
    teacher: Optional[nn.Module] = None  # distillation (cfg.distill): labels every training batch

    def save_best(self, model: nn.Module, **info: Any) -> Path:
        """Write ``model`` as the run's self-describing checkpoint (rank 0 only); returns its path."""
        from vitfer.weights import save

        ckpt = self.out_dir / "model.safetensors"
        if self.dist.is_main:
            save(model, ckpt, class_names=list(self.data.classes), dataset=self.cfg.dataset, split=self.cfg.split,
                 finetune_config=asdict(self.cfg), **info)
        return ckpt

    def test(self, ckpt: Path) -> dict[str, Any]:
        """Metrics of the checkpoint ``ckpt`` on the test part, in the run's precision."""
        from vitfer.weights import load

        return evaluate(load(ckpt, map_location=self.dist.device), self.test_set, device=self.dist.device,
                        num_classes=self.data.num_classes, amp=self.cfg.amp)


class Callback:
    """Hooks into a run (progress bars, tests); every method is optional. ``info`` dicts carry
    ``epoch`` (1-based), ``epochs``, ``step``, ``steps_per_epoch`` and what the event adds."""

    def on_train_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, info: dict[str, Any]) -> None: ...  # adds the batch's loss, accuracy, images
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...  # the epoch's metrics.jsonl line
    def on_train_end(self, result: dict[str, Any]) -> None: ...

def train_and_test(ctx: RunContext) -> dict[str, Any]:
    """Train ``ctx.model`` (resuming from the run folder's state when ``ctx.resume``), keep the best
    epoch's checkpoint, and test it; returns the history, best epoch, peak lr, training time and
    ``test`` metrics."""
    from vitfer.weights.io import atomic_write_text

    cfg, model, data, dist, out_dir, callbacks = ctx.cfg, ctx.model, ctx.data, ctx.dist, ctx.out_dir, ctx.callbacks
    train_set, val_set = ctx.train_set, ctx.val_set
    device = dist.device
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, drop_last=len(train_set) > cfg.batch_size,
                                rank=dist.rank, world=dist.world)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers)
    steps_per_epoch = len(sampler)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    peak_lr = float(cfg.lr)  # resolved: the config holds the run's peak lr
    opt = build_optimizer(cfg, model, peak_lr)
    teacher = ctx.teacher
    if teacher is not None and getattr(model, "distilled", False):
        model.set_distilled_training(True)  # the training forward returns (class-token, distillation-token) logits
    hint, tapped, tap_handle = None, {}, None
    if teacher is not None and cfg.distill_features:
        hint = build_feature_hint(model, teacher, int(cfg.img_size), device)
        opt.add_param_group({"params": list(hint.parameters()), "weight_decay": cfg.weight_decay})
        tapped, tap_handle = tap_block_output(model, hint.block)
        _logger.info("feature distillation: block %d's patch tokens (%dx%d) regress the teacher's feature map %d "
                     "(weight %g)", hint.block, *hint.grid, hint.teacher_index, cfg.distill_features)
    train_model = dist.wrap(model)
    ema = ModelEma(model, cfg.ema) if cfg.ema else None
    eval_model = ema.module if ema is not None else model  # validated, saved and tested

    ckpt = out_dir / "model.safetensors"
    history: list[dict[str, Any]] = []
    best: Optional[dict[str, Any]] = None
    step, start_epoch, train_time = 0, 0, 0.0
    if ctx.resume and (out_dir / STATE_FILE).is_file():
        info = load_train_state(out_dir / STATE_FILE, model, opt, ema=ema, extra=hint)
        _check_state_config(out_dir, info.get("config"), cfg)
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
        phases = dict.fromkeys(PHASES, 0.0)
        for cb in callbacks:
            cb.on_epoch_start({"epoch": epoch + 1, "epochs": cfg.epochs, "step": step, "steps_per_epoch": steps_per_epoch})
        t_mark = time.perf_counter()
        for b, (x, y) in enumerate(loader):
            if step >= total:
                break
            part = sampler.part(b)  # this process's rows of the global batch
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, total, peak_lr, min(cfg.warmup_steps, max(1, total // 5)), cfg.schedule)
            x, y = x.to(device), y.to(device)
            if cfg.mixup or cfg.cutmix:
                x, target, _ = mix_batch(dist.gather(x, part), dist.gather(y, part), data.num_classes, mixup=cfg.mixup,
                                         cutmix=cfg.cutmix, smoothing=cfg.label_smoothing, seed=cfg.seed, step=step,
                                         rows=part.rows)
            t_mark = _lap(phases, "data", t_mark)
            with autocast(device, cfg.amp), global_batch(part.start, part.total):
                out = train_model(x)
                t_map = None
                if hint is not None:
                    t_logits, t_map = teacher_logits_and_map(teacher, x, hint.teacher_index)
                else:
                    t_logits = teacher(x) if teacher is not None else None
            logits, dist_logits = student_outputs(out)
            if cfg.mixup or cfg.cutmix:
                loss = soft_cross_entropy(logits, target)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if t_logits is not None:
                kd = distillation_loss(dist_logits, t_logits, cfg.distill_type, cfg.distill_tau)
                loss = (1.0 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
            if hint is not None:
                loss = loss + cfg.distill_features * hint(tapped.pop("tokens"), t_map)
            if dist_logits is not logits:
                logits = (logits + dist_logits) / 2  # what the model predicts at evaluation
            if not torch.isfinite(loss):
                kept = f"; the checkpoint and state of epoch {history[-1]['epoch']} in {out_dir} are kept" if history else ""
                raise TrainingError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (lr "
                    f"{opt.param_groups[0]['lr']:.3g}): lower the learning rate (--lr){kept}"
                )
            t_mark = _lap(phases, "forward", t_mark)
            opt.zero_grad(set_to_none=True)
            (loss * part.weight).backward()
            t_mark = _lap(phases, "backward", t_mark)
            opt.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            t_mark = _lap(phases, "optimizer", t_mark)
            b_loss, b_correct, b_n = dist.sum(loss.item() * y.numel(), (logits.argmax(-1) == y).sum().item(), y.numel())
            loss_sum, correct, seen = loss_sum + b_loss, correct + b_correct, seen + b_n
            for cb in callbacks:
                cb.on_step({"epoch": epoch + 1, "epochs": cfg.epochs, "step": step, "steps_per_epoch": steps_per_epoch,
                            "loss": b_loss / max(1, b_n), "accuracy": b_correct / max(1, b_n), "images": b_n})
            t_mark = _lap(phases, "other", t_mark)
        seconds = time.perf_counter() - t0
        train_time += seconds
        rec: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen), "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9),
            "phase_seconds": {k: round(v, 4) for k, v in phases.items()},
        }
        if val_set is not None:
            t_val = time.perf_counter()
            v = evaluate(eval_model, val_set, device=device, num_classes=data.num_classes, amp=cfg.amp)
            rec.update(val_loss=v["loss"], val_accuracy=v["accuracy"],
                       val_seconds=round(time.perf_counter() - t_val, 4))
        history.append(rec)
        better = best is None or val_set is None or (rec["val_accuracy"], -rec["val_loss"]) > (
            best["val_accuracy"], -best["val_loss"]
        )
        if better:
            best = rec
        if dist.is_main:
            if better:
                ctx.save_best(eval_model, source=f"vitfer finetune on {cfg.dataset}", epoch=epoch + 1)
            save_train_state(out_dir / STATE_FILE, model, opt, {
                "epoch": epoch + 1, "step": step, "history": history, "best": best, "train_time_s": train_time,
                "config": asdict(cfg),
            }, ema=ema, extra=hint)
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

    if tap_handle is not None:
        tap_handle.remove()
    return {"history": history, "best_epoch": best["epoch"] if best else None, "peak_lr": peak_lr,
            "train_time_s": train_time, "test": ctx.test(ckpt)}


def _check_state_config(out_dir: Path, stored: Optional[dict[str, Any]], cfg: FinetuneConfig) -> None:
    """A state file must be the run's own: one left by another run (of another config) is never
    continued. A state recorded before configs were resolved is compared resolved."""
    from .runs import config_differences, stored_config

    if stored is None:
        return
    diff = [d for d in config_differences(stored_config(stored), asdict(cfg)) if not d.startswith("epochs:")]
    if diff:
        raise RunFolderError(f"{out_dir / STATE_FILE} is the state of another run ({'; '.join(diff)}); it is not "
                             f"continued: start the run again with --overwrite")
