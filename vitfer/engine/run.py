"""A fine-tuning run from start to end: resolve the config, prepare the folder, the data and the
model, run the pretraining stage, train (or fit the SVM head), test, and write the results.

    from vitfer.engine import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(model="convit_tiny", dataset="ckplus48", data_dir="..."))

With ``dataset="synthetic"`` (the default) the built-in procedurally drawn faces are used, so the
job runs with no files at all. The run's settings are resolved once (:func:`resolve_config`) and
recorded whole: in ``config.json``, in ``metrics.json`` and in the checkpoint's metadata, so that
evaluation, the report, prediction, resume and pretraining read them back. The best epoch (on the
validation part if there is one, else the last epoch) is written as a self-describing checkpoint
(``vitfer.load`` rebuilds it) next to a ``metrics.json`` with the history, the test accuracy,
per-class accuracy, confusion matrix and the split (which images were tested).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import AUTO, FinetuneConfig, RunFolderError, resolve_config
from .distributed import dist_info
from .loop import Callback, RunContext, train_and_test
from .model import apply_freeze, build_model
from .runs import (
    STATE_FILE, config_differences, default_out_dir, prepare_run_folder, run_status, stored_config, versions,
)

__all__ = ["build_dataset", "finetune", "run_or_reuse"]

_logger = logging.getLogger(__name__)
#: The data (dataset, folder, labels, subject pattern), seed and test size of the subject splits
#: warned about in this process: a ``--distill`` run's teacher trains on the run's own split and
#: would repeat the warning.
_SHARED_SPLITS_WARNED: set[tuple[Any, ...]] = set()


def finetune(
    cfg: FinetuneConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns (and writes) the run's metrics.

    The run folder (``cfg.out_dir``, default a new ``runs/<model>-<dataset>-<time>``) gets
    ``config.json`` (the resolved config, library versions and the run's status: running /
    finished / failed), ``metrics.jsonl`` (one line an epoch, as it happens), ``model.safetensors``
    (best epoch, self-describing), ``state.safetensors`` (after every epoch, atomically: everything
    needed to continue exactly) and ``metrics.json`` (the history, the test metrics and the split).
    The data and split are checked before anything is written.

    Args:
        resume: continue the run in ``cfg.out_dir`` from its last finished epoch; the result is
            bit-identical to an uninterrupted run on the same device. The config must equal the
            stored one (up to :data:`~vitfer.engine.runs.RESUMABLE_CHANGES`), except that a larger
            ``epochs`` extends the run (a finished one too): it goes on from its last epoch with
            the learning-rate schedule stretched to the new length. A finished run of the same
            length is not trained again: its metrics are returned.
        callbacks: :class:`~vitfer.engine.loop.Callback` hooks (progress display).

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every process trains on its slice of each
    global batch of ``cfg.batch_size`` (gloo on the CPU, NCCL on CUDA); only rank 0 writes.

    Raises:
        ValueError: a bad config, dataset or split (named); :class:`RunFolderError` when the
            folder holds another run and ``overwrite`` is off, or when ``resume`` finds no run
            or a run of another config.
        TrainingError: the loss became non-finite (epoch and step named); the checkpoint and
            state of the last good epoch stay in place.
    """
    from vitfer.data import build_transforms
    from vitfer.data.runs import run_data, split_record
    from vitfer.weights.io import atomic_write_text

    cfg = resolve_config(cfg)
    dist = dist_info(cfg.device)
    device = dist.device
    t_start = time.perf_counter()
    out_dir, state = _resume_check(cfg) if resume else (None, None)
    if state is not None and state.get("status") == "finished" and state["config"]["epochs"] == cfg.epochs:
        _logger.info("run %s is already finished; nothing to resume", out_dir)
        return json.loads((out_dir / "metrics.json").read_text())
    torch.manual_seed(cfg.seed)
    data, split = run_data(asdict(cfg))
    for part in ("train", "test"):
        if not split[part]:
            raise ValueError(f"the {cfg.split} split of {cfg.dataset} ({len(data)} images) leaves no {part} images")
    if cfg.split == "subject" and dist.is_main:
        _warn_shared_test_people(data, split, cfg)
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
    # validation=False (a distillation teacher): the validation part is held out but never looked at
    val_set = data.subset(split["val"], transform=eval_tf) if split["val"] and cfg.validation else None
    test_set = data.subset(split["test"], transform=eval_tf)
    n_params = sum(p.numel() for p in model.parameters())

    if out_dir is None:
        out = cfg.out_dir or (dist.broadcast_object(str(default_out_dir(cfg))) if dist.world > 1 else default_out_dir(cfg))
        out_dir = prepare_run_folder(out, cfg.overwrite) if dist.is_main else Path(out)
        dist.barrier()
    cfg = replace(cfg, out_dir=str(out_dir))
    pre_cfg = _pretrain_stage(cfg, data, split, out_dir) if cfg.pretrain else None
    teacher_cfg = None
    if cfg.distill == AUTO:
        from .distill import teacher_config

        teacher_cfg = resolve_config(teacher_config(cfg, out_dir))
    if state is None:
        state = {"versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    state.update(config=asdict(cfg), status="running", world_size=dist.world)
    if pre_cfg is not None:
        state["pretrain_config"] = asdict(pre_cfg)
    if teacher_cfg is not None:
        state["teacher_config"] = asdict(teacher_cfg)
    state.pop("error", None)
    if dist.is_main:
        atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
    _logger.info(
        "%s on %s (%s split%s): %d train / %d val / %d test images, %d classes, input %s, %.1fM parameters, %s; "
        "run folder %s", model.model_name, cfg.dataset, cfg.split,
        f", fold {cfg.fold} of folds 0-{cfg.n_folds - 1}" if cfg.split in ("kfold", "subject-kfold") else "",
        len(train_set), len(val_set or []), len(test_set),
        data.num_classes, tuple(pcfg["input_size"]), n_params / 1e6,
        "bf16 autocast" if cfg.amp == "bf16" else "fp32", out_dir,
    )
    pre_info: Optional[dict[str, Any]] = None
    teacher_meta: Optional[dict[str, Any]] = None
    ctx = RunContext(cfg, model, data, split, train_set, val_set, test_set, dist, out_dir, resume, callbacks)
    try:
        if pre_cfg is not None:
            from .pretrain import load_pretraining

            status = run_status(pre_cfg, Path(pre_cfg.out_dir), other="restart")
            if status == "finished":
                _logger.info("pretraining on %s: reusing the finished run in %s", cfg.pretrain, pre_cfg.out_dir)
            else:
                _logger.info("pretraining on %s first (%d epochs, run folder %s)%s", cfg.pretrain, pre_cfg.epochs,
                             pre_cfg.out_dir, ": resuming" if status == "resume" else "")
            pre = run_or_reuse(pre_cfg, callbacks=callbacks, other="restart")
            pre_ckpt = Path(pre["checkpoint"])
            pre_info = {"dataset": cfg.pretrain, "out_dir": str(pre_ckpt.parent), "checkpoint": str(pre_ckpt),
                        "test_accuracy": pre["test"]["accuracy"], "config": asdict(pre_cfg)}
            _logger.info("pretraining on %s: test accuracy %.3f; now training on %s", cfg.pretrain,
                         pre["test"]["accuracy"], cfg.dataset)
            load_pretraining(model, cfg, pre_ckpt, pre.get("classes") or [], data.classes).to(device)
            counts = apply_freeze(model, cfg.freeze)
        if cfg.distill is not None:
            ctx.teacher, teacher_meta = _teacher_stage(cfg, teacher_cfg, data, split, pcfg, callbacks, device)
        if cfg.head == "svm":
            from .svm import fit_svm_head

            result = fit_svm_head(ctx)
        else:
            result = train_and_test(ctx)
    except BaseException as e:
        if dist.is_main:
            state.update(status="failed", error=f"{type(e).__name__}: {e}")
            atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
        raise
    test = result.pop("test")
    result = {
        "model": model.model_name,
        "classes": list(data.classes),
        "split_sizes": {k: len(v) for k, v in split.items()},
        "test_subjects": sorted({str(data.subjects[i]) for i in split["test"] if data.subjects[i] is not None}),
        "seed": cfg.seed,
        **result,
        "test": test,
        "test_accuracy": test["accuracy"],
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion": test["confusion"],
        "class_names": list(data.classes),
        "checkpoint": str(out_dir / "model.safetensors"),
        "out_dir": str(out_dir),
        "split_record": split_record(data, split),
    }
    if pre_info is not None:
        result["pretrain"] = pre_info
    if teacher_meta is not None:
        result["teacher"] = teacher_meta
    result.update(config=asdict(cfg), versions=state["versions"], params_m=n_params / 1e6,
                  trainable_params_m=counts["trainable"] / 1e6, seconds=time.perf_counter() - t_start)
    if dist.is_main:
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
        state["status"] = "finished"
        atomic_write_text(out_dir / "config.json", json.dumps(state, indent=2))
    for cb in callbacks:
        cb.on_train_end(result)
    _logger.info("finished in %.0f s (best epoch %s); run folder %s", result["seconds"], result.get("best_epoch"),
                 out_dir)
    return result


def build_dataset(cfg: FinetuneConfig):
    """The full (untransformed) dataset of the run ``cfg`` (:func:`vitfer.data.runs.run_dataset`
    of its resolved config)."""
    from vitfer.data.runs import run_dataset

    return run_dataset(asdict(resolve_config(cfg)))


def run_or_reuse(cfg: FinetuneConfig, *, callbacks: Sequence[Callback] = (), other: str = "raise",
                 overwrite: bool = False) -> dict[str, Any]:
    """The metrics of the run ``cfg`` in ``cfg.out_dir``: read back when it finished, resumed when
    it stopped after an epoch, else trained from the start (a folder holding a run of another
    config: an error with ``other="raise"``, replaced with ``"restart"``; ``overwrite`` starts
    afresh whatever is there). Cross-validation folds, study cells and pretraining stages all run
    through here."""
    status = "new" if overwrite else run_status(cfg, Path(cfg.out_dir), other=other)
    if status == "finished":
        _logger.info("%s: already finished, reusing it", cfg.out_dir)
        return json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    if status == "resume":
        return finetune(cfg, resume=True, callbacks=callbacks)
    return finetune(replace(cfg, overwrite=True), callbacks=callbacks)


def _warn_shared_test_people(data, split: dict[str, list[int]], cfg: FinetuneConfig) -> None:
    """Log a warning when other seeds of 0-9 hold out the same test people as this run's seed (a
    subject split of few people, as JAFFE's: see :func:`vitfer.data.seeds_sharing_test_subjects`),
    once a process for a given split."""
    from vitfer.data import seeds_sharing_test_subjects

    key = (cfg.dataset, cfg.data_dir, cfg.labels, cfg.subject_pattern, cfg.seed, cfg.test_size)
    if key in _SHARED_SPLITS_WARNED:
        return
    _SHARED_SPLITS_WARNED.add(key)
    others = [s for s in seeds_sharing_test_subjects(data, cfg.seed, test_size=cfg.test_size) if s != cfg.seed]
    if others:
        people = sorted({str(data.subjects[i]) for i in split["test"]})
        _logger.warning(
            "%s's subject split holds out the same test people (%s) for seed %d as for seed%s %s of 0-9, so runs "
            "over these seeds share one test set; --split subject-kfold tests every person once",
            cfg.dataset, ", ".join(people), cfg.seed, "s" if len(others) > 1 else "", ", ".join(map(str, others)),
        )


def _pretrain_stage(cfg: FinetuneConfig, data, split: dict[str, list[int]], out_dir: Path) -> FinetuneConfig:
    """The resolved config of ``cfg``'s pretraining stage. Images of the run's validation and test
    parts that the pretraining data also holds (a copy of the same files) are left out of it, and
    such a stage is the run's own rather than shared by the folds of a cross-validation."""
    from vitfer.data.runs import image_digests, run_dataset

    from .pretrain import pretrain_config

    stage = resolve_config(pretrain_config(cfg, out_dir))
    held_out = set(image_digests(data, split["val"] + split["test"]))
    pre_data = run_dataset(asdict(stage))
    overlap = sorted(held_out.intersection(image_digests(pre_data, range(len(pre_data)))))
    if overlap:
        _logger.warning("the pretraining data (%s) holds %d images of this run's validation and test parts: they are "
                        "left out of the pretraining", stage.dataset, len(overlap))
        stage = replace(stage, exclude_images=tuple(overlap), out_dir=str(Path(out_dir) / Path(stage.out_dir).name))
    return stage


def _teacher_stage(cfg: FinetuneConfig, teacher_cfg: Optional[FinetuneConfig], data, split, student_pcfg,
                   callbacks: Sequence[Callback], device):
    """The run's teacher (:mod:`vitfer.engine.distill`), trained first in ``<run>/teacher`` with
    ``distill="auto"`` (or reused: finished, or resumed after an interruption), and what the run
    records of it."""
    from vitfer.data.runs import split_record

    from .distill import check_teacher_split, load_teacher, teacher_info

    if teacher_cfg is not None:
        t_dir = Path(teacher_cfg.out_dir)
        status = run_status(teacher_cfg, t_dir, other="restart")
        if status == "finished":
            _logger.info("teacher: reusing the finished %s in %s", teacher_cfg.model, t_dir)
        else:
            _logger.info("training the teacher first: %s, %d epochs, on the run's %d training images (run folder %s)%s",
                         teacher_cfg.model, teacher_cfg.epochs, len(split["train"]), t_dir,
                         ": resuming" if status == "resume" else "")
        t_metrics = run_or_reuse(teacher_cfg, callbacks=callbacks, other="restart")
        check_teacher_split(t_metrics, split_record(data, split), t_dir)
        source = t_metrics["checkpoint"]
        meta = teacher_info(t_metrics, teacher_cfg, source)
    else:
        from vitfer.weights.checkpoint import resolve_checkpoint

        source = str(cfg.distill)
        meta = {"source": source, "model": None, "checkpoint": str(resolve_checkpoint(source)),
                "test_accuracy": None, "config": None}
    teacher = load_teacher(source, data.classes, student_pcfg, device)
    meta["model"] = meta.get("model") or teacher.model.model_name
    _logger.info("distilling from %s (%s%s), %s labels, alpha %.2f%s", meta["model"], source,
                 f", {meta['test_accuracy']:.3f} on the test part" if meta.get("test_accuracy") is not None else "",
                 cfg.distill_type, cfg.distill_alpha, f", tau {cfg.distill_tau:g}" if cfg.distill_type == "soft" else "")
    return teacher, meta


def _resume_check(cfg: FinetuneConfig) -> tuple[Path, dict[str, Any]]:
    """The run folder and stored ``config.json`` of a run to resume, after checking that ``cfg``
    is the same run (a larger ``epochs`` extends it)."""
    if not cfg.out_dir:
        raise RunFolderError("resume needs the run folder: out_dir (--resume RUN_DIR)")
    out = Path(cfg.out_dir).expanduser()
    try:
        state = json.loads((out / "config.json").read_text())
        old = stored_config(state["config"])
    except FileNotFoundError:
        raise RunFolderError(f"cannot resume {out}: it holds no run (no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"cannot resume {out}: its config.json is unreadable ({e})") from e
    diff = [d for d in config_differences(old, asdict(cfg)) if not d.startswith("epochs:")]
    if diff:
        raise RunFolderError(f"cannot resume {out} with another config; differing fields: " + "; ".join(diff))
    if cfg.epochs < old["epochs"]:
        raise RunFolderError(f"cannot resume {out} with --epochs {cfg.epochs}: it was set to train {old['epochs']} "
                             f"epochs (a run can be extended, not shortened)")
    if not (out / STATE_FILE).is_file() and state.get("status") != "finished":
        # stopped before its first epoch ended (its pretraining stage, if any, keeps its own progress)
        _logger.info("%s has no finished epoch to continue: training it from the first epoch", out)
    if cfg.epochs > old["epochs"]:
        _logger.info("extending %s from %d to %d epochs", out, old["epochs"], cfg.epochs)
        state.setdefault("extended", []).append({"from_epochs": old["epochs"], "to_epochs": cfg.epochs})
    state["config"] = old
    return out, state
