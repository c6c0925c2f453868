"""Classification metrics and evaluation of a model on a dataset."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitfer.runtime import autocast

def classification_metrics(confusion: Sequence[Sequence[int]], classes: Optional[Sequence[Any]] = None) -> dict[str, Any]:
    """The metrics FER papers report, from a confusion matrix (rows: true class, columns: predicted).

    Returns ``accuracy``, ``uar`` (unweighted average recall: the mean of the per-class recalls
    over the classes that have test images), ``macro_f1`` (the mean F1 over the classes that
    occur as truth or prediction; a class with predictions but no images counts with F1 = 0),
    ``per_class_accuracy`` (= recall; ``None`` for a class with no test images: absent, not a
    failure), ``support`` per class, ``n`` and the ``confusion`` matrix itself.
    """
    conf = torch.as_tensor(confusion, dtype=torch.long)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {tuple(conf.shape)}")
    n_cls = conf.shape[0]
    names = list(classes) if classes is not None else list(range(n_cls))
    support, predicted, hits = conf.sum(1).tolist(), conf.sum(0).tolist(), conf.diag().tolist()
    n = sum(support)
    if n == 0:
        raise ValueError("cannot compute metrics of an empty confusion matrix")
    recall = [h / s if s else None for h, s in zip(hits, support)]
    f1s = []
    for h, s, p in zip(hits, support, predicted):
        if s or p:
            f1s.append(2 * h / (s + p))  # = 2PR / (P + R)
    present = [r for r in recall if r is not None]
    return {
        "accuracy": sum(hits) / n,
        "uar": sum(present) / len(present),
        "macro_f1": sum(f1s) / len(f1s),
        "n": n,
        "per_class_accuracy": dict(zip(names, recall)),
        "support": dict(zip(names, support)),
        "confusion": conf.tolist(),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset, *, batch_size: int = 64, device: Union[str, torch.device] = "cpu",
    num_classes: Optional[int] = None, amp: str = "none",
) -> dict[str, Any]:
    """Accuracy, UAR, macro-F1, mean loss, per-class accuracy and confusion matrix (rows: true
    class); see :func:`classification_metrics`.

    ``dataset`` yields (image (C, H, W), label); it must carry its eval transform.
    """
    device = torch.device(device)
    model.eval()
    n_cls = num_classes or len(dataset.classes)
    conf = torch.zeros(n_cls, n_cls, dtype=torch.long)
    loss_sum, n = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        pred = logits.argmax(-1)
        conf += torch.bincount((y * n_cls + pred).cpu(), minlength=n_cls * n_cls).reshape(n_cls, n_cls)
        n += y.numel()
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    res = classification_metrics(conf, getattr(dataset, "classes", None) or range(n_cls))
    res["loss"] = loss_sum / n
    return res


