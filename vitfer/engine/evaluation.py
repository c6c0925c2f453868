"""Evaluating a saved checkpoint: on its own run's test part, or on another dataset.

    from vitfer.engine import evaluate_checkpoint
    evaluate_checkpoint("runs/x/model.safetensors")                         # the run's own test split
    evaluate_checkpoint("ck.safetensors", dataset="jaffe", data_dir="...")  # cross-dataset, all images

A checkpoint written by :func:`~vitfer.engine.finetune` records the run's resolved config
(``finetune_config`` in its metadata); without ``dataset`` the same data, image size, crops, split,
fold and seed are rebuilt and evaluated in the run's precision, so the run's test accuracy is
reproduced exactly. On another dataset the classes are
matched by expression (:func:`vitfer.data.class_index_map`): only the images of the shared
expressions count, and the model picks among its scores of those expressions.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from vitfer.runtime import resolve_amp, resolve_device

from .config import FinetuneConfig, config_from_dict, resolve_config
from .metrics import evaluate

__all__ = ["evaluate_checkpoint", "run_config_of"]

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


def run_config_of(checkpoint: Union[str, os.PathLike], model: nn.Module) -> Optional[FinetuneConfig]:
    """The resolved config of the run that wrote ``checkpoint`` (its ``finetune_config``
    metadata, or the run folder's ``config.json`` beside it); None for other checkpoints. A
    config recorded before sizes were resolved gets the model's input size."""
    info = getattr(model, "checkpoint_info", {}) or {}
    stored = info.get("finetune_config")
    if stored is None:
        try:
            stored = json.loads((Path(checkpoint).parent / "config.json").read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    cfg = config_from_dict(stored)
    if not isinstance(cfg.img_size, int):
        cfg = replace(cfg, img_size=int(model.pretrained_cfg["input_size"][-1]))
    return resolve_config(replace(cfg, out_dir=None, overwrite=False))


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
    amp: Optional[str] = None,
) -> dict[str, Any]:
    """Metrics of the model in ``checkpoint`` (see :func:`~vitfer.engine.classification_metrics`).

    Without ``dataset``, the run's own data is rebuilt from the config the run recorded (image
    size, crops, split, fold, seed: :func:`vitfer.data.runs.run_data`, as training built it) and
    evaluated in the run's precision, so the run's test accuracy is reproduced; the rebuilt test
    part is checked against the one the run recorded in its ``metrics.json``.

    Args:
        checkpoint: a checkpoint file, or a run folder (its ``model.safetensors``).
        dataset: None: the run's own data; else ``synthetic``, ``ckplus48``, ``jaffe``, ``folder``
            or ``fer2013`` with ``data_dir``.
        split: ``all`` (every image; the default for another dataset) or a split kind, whose
            ``part`` (``test``, ``val`` or ``train``) is evaluated; ``fold``, ``n_folds`` and
            ``seed`` default to the run's when the dataset is the run's, else to 0, 5 and 0.
        amp: ``none`` (fp32), ``bf16`` or ``auto``; None: the run's own precision (fp32 for a
            checkpoint without a run).
    """
    import vitfer
    from vitfer.data import build_transforms, class_index_map
    from vitfer.data.runs import check_split, run_data, run_dataset

    from vitfer.weights import resolve_checkpoint

    dev = resolve_device(device)
    checkpoint = resolve_checkpoint(checkpoint)  # a run folder: its model.safetensors
    model = vitfer.load(checkpoint, map_location=dev)
    run_cfg = run_config_of(checkpoint, model)
    if dataset is None and run_cfg is None:
        raise ValueError(
            f"{checkpoint} does not record the data it was trained on (it was not written by vitfer finetune); "
            f"name the data to evaluate on: --dataset and --data-dir"
        )
    same = dataset is None or (run_cfg is not None and dataset == run_cfg.dataset)
    if same:
        values = asdict(run_cfg)
    else:
        values = {"dataset": dataset, "data_dir": None, "img_size": int(model.pretrained_cfg["input_size"][-1]),
                  "seed": 0, "n_folds": 5, "fold": 0}
    if data_dir is not None:
        values["data_dir"] = data_dir
    split = split or (values.get("split") if same else "all")
    for k, v in (("fold", fold), ("n_folds", n_folds), ("seed", seed)):
        if v is not None:
            values[k] = v
    if split != "all":
        values["split"] = split
    if part not in ("train", "val", "test"):
        raise ValueError(f"part must be train, val or test, got {part!r}")
    if split == "all":
        data, parts = run_dataset(values), None
        items = list(range(len(data)))
    else:
        data, parts = run_data(values)
        items = parts[part]
        if not items:
            raise ValueError(f"the {part} part of the {values['split']} split of {values['dataset']} is empty")
        if same and all(values.get(k) == getattr(run_cfg, k) for k in ("split", "fold", "n_folds", "seed")):
            check_split(data, parts, _recorded_split(checkpoint), part)
    amp = resolve_amp(amp if amp is not None else (run_cfg.amp if run_cfg is not None else "none"), dev)
    view = data.subset(items, transform=build_transforms(model.pretrained_cfg, train=False))
    model_classes = list(model.class_names or [])
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "model": model.model_name, "dataset": values["dataset"],
                              "data_dir": values.get("data_dir"), "split": split,
                              "part": part if split != "all" else "all", "seed": values.get("seed", 0),
                              "img_size": int(model.pretrained_cfg["input_size"][-1]), "amp": amp}
    if split in ("kfold", "subject-kfold"):
        result.update(fold=values["fold"], n_folds=values["n_folds"])
    if model_classes == list(data.classes):
        metrics = evaluate(model, view, device=dev, batch_size=batch_size, num_classes=len(data.classes), amp=amp)
    else:
        if not model_classes:
            raise ValueError(f"{checkpoint} stores no class names, so its classes cannot be matched to {values['dataset']}'s")
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
                     values["dataset"], ", ".join(cmap.dataset_only) or "none")
    result.update(metrics)
    return result


def _recorded_split(checkpoint: Union[str, os.PathLike]) -> Optional[dict[str, Any]]:
    """The split the run recorded in the ``metrics.json`` beside ``checkpoint`` (None if absent)."""
    try:
        return json.loads((Path(checkpoint).parent / "metrics.json").read_text()).get("split_record")
    except (OSError, ValueError, AttributeError):
        return None
