"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a training batch, with soft targets.

Each batch is mixed with itself reversed (timm's ``Mixup`` in batch mode does the same): mixup
blends whole images with a weight ``lam ~ Beta(alpha, alpha)``, CutMix pastes a box covering
``1 - lam`` of the image; the targets blend the (label-smoothed) one-hot labels by the same
weight, CutMix's corrected to the box that fits in the image. With both on, each batch uses one of
the two, chosen at random. The draws come from a generator seeded by ``(seed, step)``, so a
resumed run mixes exactly as an uninterrupted one. In data-parallel training each process mixes
the gathered global batch and keeps its own rows (``rows``), so the images are paired across the
global batch exactly as one process pairs them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mix_batch", "soft_cross_entropy", "soft_targets"]


def soft_targets(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """One-hot (B, K) of labels ``y`` with ``smoothing`` spread over all classes (as
    ``F.cross_entropy(label_smoothing=...)``: ``1 - s + s / K`` on the label, ``s / K`` elsewhere)."""
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], 1.0 - smoothing + off)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``-sum(target * log_softmax(logits))``."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def mix_batch(
    x: Tensor, y: Tensor, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, smoothing: float = 0.0,
    seed: int = 0, step: int = 0, rows: slice = slice(None),
) -> tuple[Tensor, Tensor, float]:
    """Mix the batch ``x`` (B, C, H, W) with itself reversed.

    Args:
        mixup / cutmix: the Beta distributions' alpha (0 = off).
        smoothing: label smoothing of the one-hot targets before mixing.
        seed, step: seed the draws (reproducible, resumable).
        rows: the rows of the mixed batch to return (one process's slice of a global batch ``x``).

    Returns:
        ``(mixed x[rows], soft targets (rows, K), lam)``: lam is the share of each image's own content.
    """
    if mixup < 0 or cutmix < 0:
        raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup} and {cutmix}")
    target = soft_targets(y, num_classes, smoothing)
    if not (mixup or cutmix) or x.shape[0] < 2:
        return (x, target, 1.0) if rows == slice(None) else (x[rows], target[rows], 1.0)
    rng = np.random.default_rng([seed, 7, step])
    use_cutmix = bool(cutmix) and (not mixup or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    other = x.flip(0)[rows]
    x = x[rows]
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = x * lam + other * (1.0 - lam)
    return x, target[rows] * lam + target.flip(0)[rows] * (1.0 - lam), lam
