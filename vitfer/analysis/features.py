"""Pre-logit features of a dataset and their t-SNE embedding.

    feats = extract_features(model, test_set)     # {"features": (N, D), "labels": (N,), "logits": (N, K)}
    emb = tsne(feats["features"], dim=3)          # (N, 3)
"""
from __future__ import annotations

import logging
from typing import Any, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ._deps import tsne_class

__all__ = ["extract_features", "tsne"]

_logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Any, *, batch_size: int = 64, device: Union[str, torch.device] = "cpu"
) -> dict[str, np.ndarray]:
    """The pre-logit features (what the classifier reads: ``forward_head(..., pre_logits=True)``),
    the logits and the labels of every item of ``dataset`` (which yields (image (C, H, W), label)
    and carries its eval transform).

    Returns:
        ``features`` (N, D) float32, ``logits`` (N, K) float32, ``labels`` (N,) int64 and
        ``predictions`` (N,) int64.
    """
    device = torch.device(device)
    was = model.training
    model.eval()
    feats, logits, labels = [], [], []
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            tokens = model.forward_features(x.to(device))
            f = model.forward_head(tokens, pre_logits=True)
            feats.append(f.float().flatten(1).cpu())
            logits.append(model.forward_head(tokens).float().cpu())
            labels.append(torch.as_tensor(y).long())
    finally:
        model.train(was)
    if not feats:
        raise ValueError("extract_features: the dataset is empty")
    lg = torch.cat(logits)
    return {"features": torch.cat(feats).numpy(), "logits": lg.numpy(), "labels": torch.cat(labels).numpy(),
            "predictions": lg.argmax(-1).numpy()}


def tsne(features: np.ndarray, dim: int = 2, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE (scikit-learn, PCA initialisation) of (N, D) features into (N, ``dim``); the
    perplexity is capped at (N - 1) / 3 for small sets."""
    if dim not in (2, 3):
        raise ValueError(f"t-SNE dimension must be 2 or 3, got {dim}")
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 4:
        raise ValueError(f"t-SNE needs (N >= 4, D) features, got shape {x.shape}")
    TSNE = tsne_class()
    perp = float(min(perplexity, max(1.0, (x.shape[0] - 1) / 3)))
    return TSNE(n_components=dim, perplexity=perp, init="pca", random_state=seed).fit_transform(x).astype(np.float32)
