"""Evaluating a saved checkpoint: on its own run's test part, or on another dataset.

    from vitfer.engine import evaluate_checkpoint
    evaluate_checkpoint("runs/x/model.safetensors")                         # the run's own test split
    evaluate_checkpoint("ck.safetensors", dataset="jaffe", data_dir="...")  # cross-dataset, all images

A checkpoint written by :func:`~vitfer.engine.finetune` records the run's config
(``finetune_config`` in its metadata); without ``dataset`` the same data, split, fold and seed are
rebuilt, so the run's test accuracy is reproduced exactly. On another dataset the classes are
matched by expression (:func:`vitfer.data.class_index_map`): only the images of the shared
expressions count, and the model picks among its scores of those expressions.
"""
from __future__ import annotations

import logging
import os
from dataclasses import fields
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from vitfer.runtime import resolve_device

from .config import FinetuneConfig
from .loop import build_dataset
from .metrics import evaluate

__all__ = ["evaluate_checkpoint"]

_logger = logging.getLogger(__name__)


class _Restricted(nn.Module):
    """The model's scores of some of its classes only."""

    def __init__(self, model: nn.Module, indices: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.indices)


class _Relabelled(Dataset):
    """Items ``items`` of ``base`` with labels mapped through ``mapping``, classes ``classes``."""

    def __init__(self, base: Any, items: list[int], mapping: dict[int, int], classes: list[str]) -> None:
        self.base, self.items, self.mapping, self.classes = base, items, mapping, classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        x, y = self.base[self.items[i]]
        return x, self.mapping[int(y)]


def evaluate_checkpoint(
    checkpoint: Union[str, os.PathLike],
    *,
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    split: Optional[str] = None,
    fold: Optional[int] = None,
    n_folds: Optional[int] = None,
    seed: Optional[int] = None,
    part: str = "test",
    device: str = "auto",
    batch_size: int = 64,
    amp: str = "none",
) -> dict[str, Any]:
    """Metrics of the model in ``checkpoint`` (see :func:`~vitfer.engine.classification_metrics`).

    Args:
        dataset: None: the run's own data (from the checkpoint's ``finetune_config``); else
            ``synthetic``, ``ckplus48``, ``jaffe`` or ``folder`` with ``data_dir``.
        split: ``all`` (every image; the default for another dataset) or a split kind, whose
            ``part`` (``test``, ``val`` or ``train``) is evaluated; ``fold``, ``n_folds`` and
            ``seed`` default to the run's when the dataset is the run's, else to 0, 5 and 0.
    """
    import vitfer
    from vitfer.data import build_transforms, class_index_map, make_split

    dev = resolve_device(device)
    model = vitfer.load(checkpoint, map_location=dev)
    info = getattr(model, "checkpoint_info", {}) or {}
    stored = info.get("finetune_config")
    if dataset is None and stored is None:
        raise ValueError(
            f"{checkpoint} does not record the data it was trained on (it was not written by vitfer finetune); "
            f"name the data to evaluate on: --dataset and --data-dir"
        )
    known = {f.name for f in fields(FinetuneConfig)}
    base = {k: v for k, v in (stored or {}).items() if k in known}
    same = dataset is None or (stored is not None and dataset == stored.get("dataset"))
    cfg_values = dict(base) if same else {"dataset": dataset}
    if dataset is not None:
        cfg_values["dataset"] = dataset
    if data_dir is not None:
        cfg_values["data_dir"] = data_dir
    elif not same:
        cfg_values["data_dir"] = None
    split = split or (base.get("split") if same else "all")
    for k, v in (("fold", fold), ("n_folds", n_folds), ("seed", seed)):
        if v is not None:
            cfg_values[k] = v
    if split != "all":
        cfg_values["split"] = split
    cfg_values.update(out_dir=None, overwrite=False, device="cpu", pretrained=False)
    cfg = FinetuneConfig(**cfg_values)
    data = build_dataset(cfg)
    if split == "all":
        items = list(range(len(data)))
    else:
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be train, val or test, got {part!r}")
        parts = make_split(data, cfg.split, seed=cfg.seed, test_size=cfg.test_size, val_size=cfg.val_size,
                           n_folds=cfg.n_folds, fold=cfg.fold)
        items = parts[part]
        if not items:
            raise ValueError(f"the {part} part of the {cfg.split} split of {cfg.dataset} is empty")
    view = data.subset(items, transform=build_transforms(model.pretrained_cfg, train=False))
    model_classes = list(model.class_names or [])
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "model": model.model_name, "dataset": cfg.dataset,
                              "data_dir": cfg.data_dir, "split": split, "part": part if split != "all" else "all",
                              "seed": cfg.seed}
    if split in ("kfold", "subject-kfold"):
        result.update(fold=cfg.fold, n_folds=cfg.n_folds)
    if model_classes == list(data.classes):
        metrics = evaluate(model, view, device=dev, batch_size=batch_size, num_classes=len(data.classes), amp=amp)
    else:
        if not model_classes:
            raise ValueError(f"{checkpoint} stores no class names, so its classes cannot be matched to {cfg.dataset}'s")
        cmap = class_index_map(model_classes, list(data.classes))
        keep = cmap.dataset_items(view.labels)
        mapping = {d: k for k, d in enumerate(cmap.dataset_indices)}
        classes = [model_classes[i] for i in cmap.model_indices]
        relabelled = _Relabelled(view, keep, mapping, classes)
        metrics = evaluate(_Restricted(model, cmap.model_indices).to(dev), relabelled, device=dev,
                           batch_size=batch_size, num_classes=len(classes), amp=amp)
        result["cross_dataset"] = {"shared": list(cmap.shared), "model_only": list(cmap.model_only),
                                   "dataset_only": list(cmap.dataset_only),
                                   "images_left_out": len(view) - len(keep)}
        _logger.info("%s: evaluating on the %d shared expressions of %s (%s left out)", checkpoint, len(classes),
                     cfg.dataset, ", ".join(cmap.dataset_only) or "none")
    result.update(metrics)
    return result
