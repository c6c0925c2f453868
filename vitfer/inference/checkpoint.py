"""Which checkpoint a path names: a checkpoint file, or a run folder (``vitfer finetune``'s ``--out``)
and its ``model.safetensors``; and how the run that wrote it cropped its faces."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from torch import nn

__all__ = ["DEFAULT_MARGIN", "RUN_CHECKPOINT", "resolve_checkpoint", "trained_face_crop"]

PathLike = Union[str, os.PathLike]

#: The checkpoint a run folder holds (the best epoch on the validation part).
RUN_CHECKPOINT = "model.safetensors"

#: Face margin for checkpoints that do not record the one they were trained with.
DEFAULT_MARGIN = 0.2


def resolve_checkpoint(path: PathLike) -> Path:
    """``path`` itself, or for a run folder its ``model.safetensors``.

    Raises:
        CheckpointError: ``path`` is a folder without ``model.safetensors`` (the message names the
            run folders inside it, e.g. the folds of a cross-validation, when there are any).
    """
    from vitfer.weights.errors import CheckpointError

    p = Path(path).expanduser()
    if not p.is_dir():
        return p
    if (p / RUN_CHECKPOINT).is_file():
        return p / RUN_CHECKPOINT
    runs = sorted(d.name for d in p.iterdir() if (d / RUN_CHECKPOINT).is_file())
    hint = (f"; the run folders inside it: {', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''} "
            f"(give one of them, e.g. {p / runs[0]})") if runs else (
        "; give a checkpoint file or the folder of a finished vitfer finetune run")
    raise CheckpointError(f"{p} is a folder without {RUN_CHECKPOINT}{hint}")


def trained_face_crop(model: nn.Module) -> tuple[bool, float]:
    """``(crop_faces, face_margin)`` of the run that wrote a loaded checkpoint (:func:`vitfer.load`
    sets ``model.checkpoint_info``, whose ``finetune_config`` records them): whether it trained on
    detected face crops, and the margin it cropped with; ``(False, DEFAULT_MARGIN)`` for a
    checkpoint that records neither (``vitfer convert``, ``vitfer.save``)."""
    info = getattr(model, "checkpoint_info", None) or {}
    cfg = info.get("finetune_config") or {}
    margin = cfg.get("face_margin")
    return bool(cfg.get("crop_faces")), DEFAULT_MARGIN if margin is None else float(margin)
