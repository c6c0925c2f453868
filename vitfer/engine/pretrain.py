"""Pretraining on another dataset before a run (``FinetuneConfig.pretrain``, ``--pretrain DATASET``).

Without hub weights a transformer has to learn faces from the run's own data, and a small set
such as JAFFE (about 130 training photos on a subject split) is too little for that. A run with
``pretrain="ckplus48"`` first trains the same model with the same recipe on CK+48 (981 faces of
other people), in its own run folder ``<run>/pretrain-ckplus48`` (resumable, and reused while its
config stays the same), then starts from those weights; the classifier is drawn afresh when the
two datasets' classes differ.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .config import RECIPES, STAGE_OPTIONS, STAGE_SHARED, FinetuneConfig

_logger = logging.getLogger(__name__)

def _dataset_root(cfg: FinetuneConfig) -> Optional[str]:
    """Where the pretraining dataset is: the run's ``data_dir`` when it holds it (or the folder
    around it, where datasets usually sit side by side), else ``$VITFER_DATA_DIR``."""
    if cfg.pretrain == "synthetic":
        return None
    from vitfer.data import find_dataset

    candidates = []
    if cfg.data_dir:
        d = Path(cfg.data_dir).expanduser()
        candidates += [d, d.parent]
    if os.environ.get("VITFER_DATA_DIR"):
        candidates.append(Path(os.environ["VITFER_DATA_DIR"]))
    found = find_dataset(cfg.pretrain, candidates)
    return str(found) if found is not None else None


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
    """The config of ``cfg``'s pretraining stage, in :func:`pretrain_folder`, on a random split of
    the pretraining dataset:

    - the model and how it runs (:data:`STAGE_SHARED`: model, sizes, seed, device, precision) are
      the run's;
    - under a recipe, the recipe's values for the pretraining dataset, then the options the user
      set on the run among :data:`STAGE_OPTIONS` (``--epochs 1`` pretrains one epoch too);
      without a recipe, the run's own hyper-parameters;
    - pretraining does not cascade: the stage has no pretraining of its own, whatever the recipe
      says for its dataset (CK+48 under JAFFE's recipe would otherwise pretrain on the run's
      own images).
    """
    assert cfg.pretrain
    root = _dataset_root(cfg)
    if cfg.pretrain != "synthetic" and root is None:
        where = f"--data-dir {cfg.data_dir}, the folder around it" if cfg.data_dir else "no --data-dir"
        raise ValueError(f"pretraining on {cfg.pretrain} (--pretrain {cfg.pretrain}): its images were not found "
                         f"({where}, $VITFER_DATA_DIR={os.environ.get('VITFER_DATA_DIR', 'unset')}); put the "
                         f"{cfg.pretrain} folder beside the run's data or set VITFER_DATA_DIR, or pass --pretrain none to "
                         f"train without it")
    shared = {k: getattr(cfg, k) for k in STAGE_SHARED}
    where = dict(dataset=cfg.pretrain, data_dir=root, split="random", out_dir=str(pretrain_folder(cfg, out_dir)),
                 overwrite=True, pretrain=None)
    if cfg.recipe in RECIPES:
        taken = {k: getattr(cfg, k) for k in STAGE_OPTIONS if k in cfg.user_set}
        return FinetuneConfig.from_recipe(cfg.recipe, **{**taken, **shared, **where})
    own = {k: v for k, v in asdict(cfg).items() if k not in ("crop_faces", "labels", "subject_pattern", "fold",
                                                              "test_size", "user_set", "exclude_images")}
    own.update(shared, **where)
    return FinetuneConfig(**own)


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
