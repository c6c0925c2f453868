"""Classifier heads: one Linear layer, or an MLP of fully connected layers (the study's ResNet50
head: flatten, then three fully connected layers)."""

from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["classifier_head"]


def classifier_head(
    in_features: int, num_classes: int, hidden: Sequence[int] = (), drop_rate: float = 0.0,
    device: Optional[torch.device] = None,
) -> nn.Module:
    """``Linear(in_features, num_classes)``; with ``hidden`` widths an ``nn.Sequential`` of
    ``Linear -> ReLU -> Dropout(drop_rate)`` per hidden width, then the output Linear (keys
    ``0``, ``3``, ``6`` ... for the Linear layers); ``Identity`` for ``num_classes == 0``."""
    if num_classes <= 0:
        return nn.Identity()
    if not hidden:
        return nn.Linear(in_features, num_classes, device=device)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h), device=device), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
        width = int(h)
    layers.append(nn.Linear(width, num_classes, device=device))
    return nn.Sequential(*layers)
