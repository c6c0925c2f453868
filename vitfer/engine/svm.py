"""The ``svm`` head (the study's VGG19 + SVM): a linear SVM fitted on frozen backbone features.

scikit-learn's ``LinearSVC`` (one-vs-rest, squared hinge) is fitted on the standardised
pre-logit features of the training part for each ``C`` of :data:`C_GRID`; the ``C`` with the best
validation accuracy is refitted on training + validation images. The scaler is folded into the
weights, and the result is copied into the model's ordinary Linear classifier, so the checkpoint is
a normal self-describing vitfer checkpoint and ``vitfer predict`` / ``evaluate`` need nothing else.
Needs the ``svm`` extra: ``pip install 'vitfer[svm]'``.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vitfer.runtime import autocast

if TYPE_CHECKING:
    from .loop import RunContext

__all__ = ["C_GRID", "fit_svm_head", "linear_svm"]

_logger = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _sklearn():
    try:
        from sklearn.svm import LinearSVC
    except ImportError as e:
        raise ImportError("the svm head needs scikit-learn: pip install 'vitfer[svm]'") from e
    return LinearSVC


@torch.no_grad()
def features(model: nn.Module, dataset, device: torch.device, amp: str = "none", batch_size: int = 64):
    """Pre-logit features (N, D) as float64 numpy and labels (N,)."""
    model.eval()
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with autocast(device, amp):
            f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        xs.append(f.float().cpu().numpy().astype(np.float64))
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def linear_svm(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit a one-vs-rest linear SVM on standardised ``x``; returns ``(weight (K, D), bias (K,))``
    acting on the raw features (the standardisation folded in)."""
    LinearSVC = _sklearn()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    svc = LinearSVC(C=c, max_iter=20000, random_state=seed)
    svc.fit((x - mu) / sd, y)
    w = np.zeros((num_classes, x.shape[1]))
    b = np.full(num_classes, -1e4)  # classes absent from the training part are never predicted
    coef, icpt = svc.coef_, svc.intercept_
    if len(svc.classes_) == 2:  # binary LinearSVC gives one hyperplane for classes_[1]
        coef, icpt = np.stack([-coef[0], coef[0]]), np.array([-icpt[0], icpt[0]])
    for row, k in enumerate(svc.classes_):
        w[k] = coef[row] / sd
        b[k] = icpt[row] - (coef[row] * mu / sd).sum()
    return w, b


def _accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ w.T + b).argmax(1) == y).mean())


def fit_svm_head(ctx: "RunContext") -> dict[str, Any]:
    """Fit the linear SVM head of ``ctx.model`` on its frozen features, save and test it; returns
    the ``C`` grid, the chosen ``C``, the fitting time and the ``test`` metrics."""
    cfg, model, data, split, dist = ctx.cfg, ctx.model, ctx.data, ctx.split, ctx.dist
    val_set, test_set = ctx.val_set, ctx.test_set
    device = dist.device
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"the svm head needs a model whose classifier is one Linear layer; {model.model_name} has "
                         f"{type(head).__name__}")
    t0 = time.perf_counter()
    plain = data.subset(split["train"], transform=test_set.transform)
    x_tr, y_tr = features(model, plain, device, cfg.amp)
    k = data.num_classes
    grid: list[dict[str, float]] = []
    if val_set is not None:
        x_va, y_va = features(model, val_set, device, cfg.amp)
        for c in C_GRID:
            w, b = linear_svm(x_tr, y_tr, k, c, cfg.seed)
            grid.append({"C": c, "val_accuracy": _accuracy(w, b, x_va, y_va)})
            _logger.info("svm C=%g: validation accuracy %.3f", c, grid[-1]["val_accuracy"])
        best_c = max(grid, key=lambda r: (r["val_accuracy"], -r["C"]))["C"]
        x_fit, y_fit = np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])
    else:
        best_c, x_fit, y_fit = 1.0, x_tr, y_tr
        _logger.info("svm: no validation part to choose C; using C=1")
    w, b = linear_svm(x_fit, y_fit, k, best_c, cfg.seed)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).to(head.weight))
        head.bias.copy_(torch.from_numpy(b).to(head.bias))
    train_time = time.perf_counter() - t0
    ckpt = ctx.save_best(model, source=f"vitfer finetune on {cfg.dataset} (linear SVM head)", svm_c=best_c)
    dist.barrier()
    return {"history": [], "best_epoch": None, "svm": {"C": best_c, "grid": grid}, "train_time_s": train_time,
            "test": ctx.test(ckpt)}
