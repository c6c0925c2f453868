"""Pretraining on another dataset before a run (``FinetuneConfig.pretrain``, ``--pretrain DATASET``).

Without hub weights a transformer has to learn faces from the run's own data, and a small set
such as JAFFE (about 130 training photos on a subject split) is too little for that. A run with
``pretrain="ckplus48"`` first trains the same model with the same recipe on CK+48 (981 faces of
other people), in its own run folder ``<run>/pretrain-ckplus48`` (resumable, and reused while its
config stays the same), then starts from those weights; the classifier is drawn afresh when the
two datasets' classes differ.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .config import RECIPES, FinetuneConfig

_logger = logging.getLogger(__name__)

#: Fields a pretraining run shares with the run it serves (the model and how it is trained).
_SHARED = ("model", "model_overrides", "img_size", "patch_size", "seed", "device", "amp", "num_workers")


def _dataset_root(cfg: FinetuneConfig) -> Optional[str]:
    """Where the pretraining dataset is: the run's ``data_dir`` when it holds it (or the folder
    around it, where datasets usually sit side by side), else ``$VITFER_DATA_DIR``."""
    if cfg.pretrain == "synthetic":
        return None
    from vitfer.data import load_dataset
    from vitfer.data.datasets import DatasetError

    candidates = []
    if cfg.data_dir:
        d = Path(cfg.data_dir).expanduser()
        candidates += [d, d.parent]
    if os.environ.get("VITFER_DATA_DIR"):
        candidates.append(Path(os.environ["VITFER_DATA_DIR"]))
    if cfg.pretrain == "fer2013":
        candidates = [c for c in candidates if (c / "fer2013.csv").is_file() or c.suffix == ".csv"]
        return str(candidates[0]) if candidates else None
    quiet = logging.getLogger("vitfer.data")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the probe's "loaded ..." line would read as a second dataset
    try:
        for c in candidates:
            try:
                load_dataset(cfg.pretrain, c, image_size=8)  # a cheap check: it finds and names the images
            except (DatasetError, OSError, ValueError):
                continue
            return str(c)
    finally:
        quiet.setLevel(level)
    return None


def pretrain_folder(cfg: FinetuneConfig, out_dir: Path) -> Path:
    """Where ``cfg``'s pretraining run lives: ``<run>/pretrain-DATASET``; the folds of a
    cross-validation (``OUT/fold-K``) share ``OUT/pretrain-DATASET``, since the pretraining does
    not depend on the fold."""
    name = f"pretrain-{cfg.pretrain}"
    out_dir = Path(out_dir)
    if cfg.split in ("kfold", "subject-kfold") and re.fullmatch(r"fold-\d+", out_dir.name):
        return out_dir.parent / name
    return out_dir / name


def pretrain_config(cfg: FinetuneConfig, out_dir: Path) -> FinetuneConfig:
    """The config of ``cfg``'s pretraining run: its recipe's values for the pretraining dataset
    (or ``cfg``'s own hyper-parameters without a recipe), the same model, sizes, seed and device,
    a random split, in :func:`pretrain_folder`."""
    assert cfg.pretrain
    root = _dataset_root(cfg)
    if cfg.pretrain != "synthetic" and root is None:
        where = f"--data-dir {cfg.data_dir}, the folder around it" if cfg.data_dir else "no --data-dir"
        raise ValueError(f"pretraining on {cfg.pretrain} (--pretrain {cfg.pretrain}): its images were not found "
                         f"({where}, $VITFER_DATA_DIR={os.environ.get('VITFER_DATA_DIR', 'unset')}); put the "
                         f"{cfg.pretrain} folder beside the run's data or set VITFER_DATA_DIR, or pass --pretrain none to "
                         f"train without it")
    shared = {k: getattr(cfg, k) for k in _SHARED}
    where = dict(dataset=cfg.pretrain, data_dir=root, split="random", out_dir=str(pretrain_folder(cfg, out_dir)),
                 overwrite=True)
    if cfg.recipe in RECIPES:
        return FinetuneConfig.from_recipe(cfg.recipe, **shared, **where)
    own = {k: v for k, v in asdict(cfg).items() if k not in ("pretrain", "crop_faces", "labels", "subject_pattern",
                                                              "fold", "test_size", "max_steps")}
    own.update(shared, **where)
    return FinetuneConfig(**own)


def run_pretraining(cfg: FinetuneConfig, out_dir: Path, callbacks: Sequence[Any] = ()) -> tuple[Path, list[str]]:
    """Train (or resume, or reuse) the pretraining run of ``cfg``; returns its checkpoint and
    class names."""
    from .loop import finetune
    from .runs import config_differences

    pre = pretrain_config(cfg, out_dir)
    folder = Path(pre.out_dir)
    ckpt = folder / "model.safetensors"
    try:
        stored = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        stored = None
    same = stored is not None and not config_differences(stored.get("config", {}), asdict(pre))
    if same and stored.get("status") == "finished" and ckpt.is_file():
        _logger.info("pretraining on %s: reusing the finished run in %s", cfg.pretrain, folder)
        res = json.loads((folder / "metrics.json").read_text())
    else:
        resume = same and (folder / "state.safetensors").is_file()
        _logger.info("pretraining on %s first (%s epochs, run folder %s)%s", cfg.pretrain, pre.epochs, folder,
                     ": resuming" if resume else "")
        res = finetune(pre, resume=resume, callbacks=callbacks)
        _logger.info("pretraining on %s done: test accuracy %.3f; now training on %s", cfg.pretrain,
                     res["test"]["accuracy"], cfg.dataset)
    return ckpt, list(res.get("classes") or res.get("class_names") or [])


def load_pretraining(model: nn.Module, cfg: FinetuneConfig, ckpt: Path, pre_classes: Sequence[str],
                     classes: Sequence[str]) -> nn.Module:
    """Load the pretraining run's weights into ``model``; its classifier is drawn afresh (seeded
    by ``cfg.seed``) unless the two datasets have the same classes in the same order."""
    from vitfer.weights import load_pretrained

    load_pretrained(model, cfg.model, source=str(ckpt))
    torch.manual_seed(cfg.seed)  # the same start whether the pretraining ran now or was reused
    if list(pre_classes) != list(classes):
        model.reset_classifier(len(classes))
        model.class_names = list(classes)
        _logger.info("pretrained on %s (%s); classifier drawn afresh for %s", cfg.pretrain, ", ".join(pre_classes),
                     ", ".join(classes))
    return model
