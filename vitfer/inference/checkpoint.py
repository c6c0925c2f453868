"""How the run that wrote a checkpoint cropped its faces; which checkpoint a path names (a file, or
a run folder's ``model.safetensors``: :func:`vitfer.weights.resolve_checkpoint`, re-exported)."""
from __future__ import annotations

import os
from typing import Union

from torch import nn

from vitfer.weights.checkpoint import RUN_CHECKPOINT, resolve_checkpoint

__all__ = ["DEFAULT_MARGIN", "RUN_CHECKPOINT", "resolve_checkpoint", "trained_face_crop"]

PathLike = Union[str, os.PathLike]

#: Face margin for checkpoints that do not record the one they were trained with.
DEFAULT_MARGIN = 0.2


def trained_face_crop(model: nn.Module) -> tuple[bool, float]:
    """``(crop_faces, face_margin)`` of the run that wrote a loaded checkpoint (:func:`vitfer.load`
    sets ``model.checkpoint_info``, whose ``finetune_config`` records them): whether it trained on
    detected face crops, and the margin it cropped with; ``(False, DEFAULT_MARGIN)`` for a
    checkpoint that records neither (``vitfer convert``, ``vitfer.save``)."""
    info = getattr(model, "checkpoint_info", None) or {}
    cfg = info.get("finetune_config") or {}
    margin = cfg.get("face_margin")
    return bool(cfg.get("crop_faces")), DEFAULT_MARGIN if margin is None else float(margin)
