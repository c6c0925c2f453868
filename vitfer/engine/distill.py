"""Distillation from a teacher (``FinetuneConfig.distill``, ``vitfer finetune --distill [TEACHER]``).

Small vision transformers trained from scratch on a few hundred faces do not find the task on
their own; a CNN does. DeiT's answer (Touvron et al., "Training data-efficient image transformers
& distillation through attention", ICML 2021) is to let the transformer learn from a CNN teacher's
predictions as well as from the labels: a second prefix token, the distillation token, with its
own head, is trained on the teacher's labels while the class token's head is trained on the true
ones, and at evaluation the two heads are averaged. vitfer's ViT, ConViT and CrossViT take such a
token (``distilled=True``, set by :func:`~vitfer.engine.config.resolve_config` for a distilled
run); any other student learns from both terms through its one head.

The loss of a batch, with the student's class-token logits ``s``, distillation-token logits ``d``
(``d = s`` for a model without the token) and the teacher's logits ``t`` on the same (augmented,
mixed) images::

    (1 - alpha) * CE(s, labels) + alpha * CE(d, argmax t)                        # hard (DeiT)
    (1 - alpha) * CE(s, labels) + alpha * tau^2 * KL(softmax(t/tau) || softmax(d/tau))  # soft (Hinton)

The teacher is a vitfer checkpoint with the same classes (``distill=PATH``: a file or a run
folder), or, with ``distill="auto"``, trained first in the run folder's ``teacher/`` (a run folder
of its own, resumable and reused while its config holds) with the ``scratch`` recipe on exactly the
run's training part: the same data and split, and its validation part held out but never looked
at (``validation=False``: the teacher's last epoch is kept), so that the teacher never sees the
run's validation or test images.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AUTO, FinetuneConfig

__all__ = ["TEACHER_FOLDER", "TEACHER_DATA_FIELDS", "TEACHER_RECIPE", "FeatureHint", "Teacher", "build_feature_hint",
           "check_teacher_split", "distillation_loss", "load_teacher", "student_outputs", "student_tap",
           "tap_block_output", "teacher_config", "teacher_info", "teacher_logits_and_map"]

_logger = logging.getLogger(__name__)

#: The run folder's sub-folder that holds the teacher trained by ``distill="auto"``.
TEACHER_FOLDER = "teacher"
#: What a teacher trained for a run changes in the ``scratch`` recipe: no mixup / CutMix, since
#: its last epoch is kept (nothing to select on) and it must label clean images well. Measured,
#: resnet18d on the CK+48 subject split (702 training images): 0.851 test accuracy with the
#: recipe's mixing (40 epochs, best epoch on validation), 0.886 without (30 epochs, last epoch).
TEACHER_RECIPE = {"mixup": 0.0, "cutmix": 0.0}
#: The config fields that decide a run's images and split: a teacher trained for the run takes
#: them all from the run, so that it trains on exactly the run's training part.
TEACHER_DATA_FIELDS = ("dataset", "data_dir", "labels", "subject_pattern", "crop_faces", "face_margin", "img_size",
                       "synthetic_n", "seed", "split", "test_size", "val_size", "n_folds", "fold", "exclude_images")


def teacher_config(cfg: FinetuneConfig, out_dir: Union[str, Path]) -> FinetuneConfig:
    """The config of the teacher that ``distill="auto"`` trains for the run ``cfg`` (resolved), in
    ``out_dir/teacher``: the ``scratch`` recipe for the run's dataset with ``cfg.teacher`` as the
    model, without mixing (:data:`TEACHER_RECIPE`) and ``cfg.teacher_epochs`` epochs when set, the
    run's data and split (:data:`TEACHER_DATA_FIELDS`), device and precision, and
    ``validation=False``."""
    taken = {k: getattr(cfg, k) for k in TEACHER_DATA_FIELDS}
    fields: dict[str, Any] = dict(taken, **TEACHER_RECIPE, model=cfg.teacher, device=cfg.device, amp=cfg.amp,
                                  num_workers=cfg.num_workers, validation=False, distill=None, patch_size=AUTO,
                                  out_dir=str(Path(out_dir) / TEACHER_FOLDER), overwrite=True)
    if cfg.teacher_epochs is not None:
        fields["epochs"] = cfg.teacher_epochs
    if cfg.max_steps is not None:  # a smoke run's teacher is a smoke run too
        fields["max_steps"] = cfg.max_steps
    return FinetuneConfig.from_recipe("scratch", **fields)


def _logits(out: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    """A teacher's float32 logits: a distilled teacher's two heads averaged, as at evaluation."""
    if isinstance(out, (tuple, list)):
        out = (out[0] + out[1]) / 2
    return out.float()


class Teacher(nn.Module):
    """A trained model that labels the student's batches: frozen, always in eval mode, in the
    run's precision. The batch it gets is normalised for the student (the student's mean / std
    and input size); it is brought to the teacher's own normalisation and size first."""

    def __init__(self, model: nn.Module, student_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        t_cfg = getattr(model, "pretrained_cfg", None) or {}

        def stats(cfg: dict[str, Any], key: str) -> Tensor:
            return torch.tensor(cfg.get(key, (0.0, 0.0, 0.0) if key == "mean" else (1.0, 1.0, 1.0)),
                                dtype=torch.float32).view(1, -1, 1, 1)

        s_mean, s_std, t_mean, t_std = (stats(student_cfg, "mean"), stats(student_cfg, "std"), stats(t_cfg, "mean"),
                                        stats(t_cfg, "std"))
        self.renorm = not (torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))
        # x_teacher = (x * s_std + s_mean - t_mean) / t_std = x * scale + shift
        self.register_buffer("scale", s_std / t_std, persistent=False)
        self.register_buffer("shift", (s_mean - t_mean) / t_std, persistent=False)
        self.size = tuple(int(v) for v in t_cfg.get("input_size", (3, 0, 0))[-2:])

    def train(self, mode: bool = True) -> "Teacher":  # a teacher never trains (dropout, BatchNorm stay frozen)
        return super().train(False)

    def prepare(self, x: Tensor) -> Tensor:
        """The student's input batch in the teacher's normalisation and size."""
        if self.renorm:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if all(self.size) and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes), float32, of the student's input batch ``x``."""
        return _logits(self.model(self.prepare(x)))


def load_teacher(source: Union[str, Path], classes: Sequence[str], student_cfg: dict[str, Any],
                 device: Union[str, torch.device] = "cpu") -> Teacher:
    """The teacher saved at ``source`` (a vitfer checkpoint or run folder) for a run whose classes
    are ``classes``.

    Raises:
        ValueError: the checkpoint's classes are not the run's (the message names both).
    """
    from vitfer.weights import load

    model = load(source, map_location=device)
    t_classes = [str(c) for c in (getattr(model, "class_names", None) or [])]
    want = [str(c) for c in classes]
    if t_classes != want:
        shown = ", ".join(t_classes) if t_classes else f"{getattr(model, 'num_classes', '?')} unnamed classes"
        raise ValueError(f"the teacher {source} predicts {shown}; this run's classes are {', '.join(want)}: a teacher "
                         f"must have the run's classes in the same order")
    in_chans = int(getattr(model, "in_chans", 3))
    s_chans = int((student_cfg.get("input_size") or (3,))[0])
    if in_chans != s_chans:
        raise ValueError(f"the teacher {source} takes {in_chans}-channel images; the student takes {s_chans}")
    return Teacher(model, student_cfg).to(device)


def student_outputs(out: Union[Tensor, Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
    """``(class-token logits, distillation-token logits)`` of a student's training forward: a
    distilled model in distilled training returns both; any other gives one tensor for both."""
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, out


def distillation_loss(dist_logits: Tensor, teacher_logits: Tensor, kind: str = "hard", tau: float = 1.0) -> Tensor:
    """The teacher's term of the loss: cross-entropy against the teacher's argmax (``hard``), or
    ``tau^2 * KL(teacher || student)`` of the two distributions at temperature ``tau`` (``soft``,
    averaged over the batch)."""
    d = dist_logits.float()
    if kind == "hard":
        return F.cross_entropy(d, teacher_logits.argmax(dim=-1))
    if kind == "soft":
        return F.kl_div(F.log_softmax(d / tau, dim=-1), F.log_softmax(teacher_logits.float() / tau, dim=-1),
                        reduction="batchmean", log_target=True) * (tau * tau)
    raise ValueError(f"distill_type must be 'hard' or 'soft', got {kind!r}")


def check_teacher_split(teacher_metrics: dict[str, Any], split_record: dict[str, Any], teacher_dir: Path) -> None:
    """The teacher trained for a run must have trained on exactly the run's training part, and
    held out its validation and test parts: raise ``RuntimeError`` naming the part that differs."""
    t = (teacher_metrics.get("split_record") or {}).get("indices") or {}
    for part in ("train", "val", "test"):
        if list(t.get(part, [])) != list(split_record["indices"].get(part, [])):
            raise RuntimeError(f"the teacher in {teacher_dir} was trained on another split of the data than this run "
                               f"(its {part} part differs): delete that folder to train the teacher again")


def teacher_info(metrics: dict[str, Any], cfg: Optional[FinetuneConfig], source: str) -> dict[str, Any]:
    """What a run records of its teacher (``metrics.json``'s ``teacher``)."""
    test = metrics.get("test") or {}
    return {"source": source, "model": metrics.get("model"), "out_dir": metrics.get("out_dir"),
            "checkpoint": metrics.get("checkpoint", source), "test_accuracy": test.get("accuracy"),
            "seconds": metrics.get("seconds"), "config": asdict(cfg) if cfg is not None else None}


# -- feature distillation ------------------------------------------------------------------------
def student_tap(model: nn.Module) -> tuple[nn.ModuleList, tuple[int, int], int, int, Optional[int]]:
    """Where a transformer student's patch tokens are read for the feature term:
    ``(blocks, (h, w) patch grid, token width, number of blocks, branch)``. CrossViT's tokens are
    those of its wider branch (``branch``: the index into each multi-scale block's outputs; the
    branch of the larger patches, which holds most of its blocks); ``branch`` is None for the
    single-stream models."""
    pe = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    if pe is None or blocks is None:
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} has no patch tokens to distil "
                         "features into (distill_features applies to the transformers)")
    dim = getattr(model, "embed_dim", None)
    branch = None
    if isinstance(pe, nn.ModuleList):  # CrossViT: one patch embedding and width a branch
        dims = list(dim)
        branch = max(range(len(dims)), key=lambda i: (dims[i], i))
        pe, dim = pe[branch], dims[branch]
    grid = tuple(int(g) for g in pe.grid_size)
    return blocks, grid, int(dim), len(blocks), branch  # type: ignore[return-value]


class FeatureHint(nn.Module):
    """The feature term of distillation (``distill_features``; FitNets' hints, Romero et al. 2015,
    as ViTKD applies them to ViTs, Yang et al. 2022): the student's patch tokens after one block,
    through a linear map trained alongside (and dropped after training), regress the teacher's
    feature map of the stage whose grid is closest to the student's patch grid, resized to that
    grid and normalised over its channels at each location. A label a image tells a transformer
    what a face shows; the teacher's map tells each of its patch tokens what a CNN sees there,
    which is what a transformer without convolutions lacks on a few hundred faces."""

    def __init__(self, student_dim: int, teacher_channels: int, grid: tuple[int, int], block: int,
                 teacher_index: int) -> None:
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_channels)
        self.grid, self.block, self.teacher_index = tuple(grid), int(block), int(teacher_index)

    def forward(self, tokens: Tensor, teacher_map: Tensor) -> Tensor:
        h, w = self.grid
        tokens = tokens[:, tokens.shape[1] - h * w:]  # the patch tokens (prefix tokens come first)
        t = teacher_map.float()
        if tuple(t.shape[-2:]) != (h, w):
            t = (F.adaptive_avg_pool2d(t, (h, w)) if t.shape[-2] >= h and t.shape[-1] >= w
                 else F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False))
        t = t.flatten(2).transpose(1, 2)
        t = F.layer_norm(t, t.shape[-1:])
        return F.mse_loss(self.proj(tokens).float(), t)


def build_feature_hint(model: nn.Module, teacher: "Teacher", img_size: int,
                       device: Union[str, torch.device] = "cpu") -> FeatureHint:
    """The :class:`FeatureHint` of a student and teacher: the teacher's stage whose map is closest
    to the student's patch grid (in scale; the deeper on a tie) and the student block at the same
    depth fraction (a stage ``i`` of ``n`` taps: block ``round(depth * i / (n - 1)) - 1``)."""
    import math

    _, grid, dim, depth, _ = student_tap(model)
    with torch.no_grad():
        maps = teacher.model.forward_intermediates(
            torch.zeros(1, int(getattr(teacher.model, "in_chans", 3)), *(teacher.size if all(teacher.size)
                                                                          else (img_size, img_size)),
                        device=next(teacher.parameters()).device), intermediates_only=True)
    if not maps or maps[0].ndim != 4:
        raise ValueError("the teacher gives no feature maps to distil (distill_features needs a CNN teacher)")
    n = len(maps)
    cost = [abs(math.log(m.shape[-2] / grid[0])) - 1e-6 * i for i, m in enumerate(maps)]
    index = min(range(n), key=cost.__getitem__)
    block = min(depth - 1, max(0, round(depth * index / max(1, n - 1)) - 1))
    return FeatureHint(dim, int(maps[index].shape[1]), grid, block, index).to(device)


def teacher_logits_and_map(teacher: "Teacher", x: Tensor, index: int) -> tuple[Tensor, Tensor]:
    """The teacher's logits and its feature map ``index`` of the student's batch ``x``, in one pass."""
    with torch.no_grad():
        x = teacher.prepare(x)
        final, maps = teacher.model.forward_intermediates(x, indices=[index])
        return _logits(teacher.model.forward_head(final)), maps[0]


def tap_block_output(model: nn.Module, block: int) -> tuple[dict[str, Tensor], Any]:
    """A forward hook on the student's ``block``: ``(store, handle)``, ``store["tokens"]`` holding
    that block's output tokens after each forward (CrossViT: those of :func:`student_tap`'s branch)."""
    store: dict[str, Tensor] = {}
    blocks, _, _, _, branch = student_tap(model)

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store["tokens"] = out[branch] if branch is not None else out

    return store, blocks[block].register_forward_hook(hook)
