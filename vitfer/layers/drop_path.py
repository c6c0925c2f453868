"""Stochastic depth (drop whole residual branches per sample).

Data-parallel training runs the forward on one slice of a global batch in each process. Under
:func:`global_batch` ``(offset, total)``, :func:`drop_path` draws the mask of the whole global batch
(``total`` samples) and keeps the slice's rows, so every process, starting from the same random
state, draws exactly what one process training on the whole batch draws: no two processes repeat
one mask, and the random state advances as in one process.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

from torch import Tensor, nn

__all__ = ["drop_path", "DropPath", "global_batch"]

#: (offset, total) of the running forward's slice in its global batch; None: the batch is whole.
_GLOBAL_BATCH: ContextVar[Optional[tuple[int, int]]] = ContextVar("vitfer_drop_path_global_batch", default=None)


@contextmanager
def global_batch(offset: int, total: int) -> Iterator[None]:
    """Within the block, the batches :func:`drop_path` sees are rows ``offset:offset + B`` of a
    global batch of ``total`` samples (one process's slice in data-parallel training)."""
    if not 0 <= offset < total:
        raise ValueError(f"offset {offset} must lie inside the global batch of {total}")
    token = _GLOBAL_BATCH.set((int(offset), int(total)))
    try:
        yield
    finally:
        _GLOBAL_BATCH.reset(token)


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """Zero the whole sample ``x[b]`` with probability ``drop_prob`` (training only).

    x: (B, ...) -> (B, ...). Kept samples are divided by ``1 - drop_prob`` when
    ``scale_by_keep``, so the expectation is unchanged. Under :func:`global_batch` the mask is
    drawn for the global batch and ``x`` takes its rows of it.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    offset, total = _GLOBAL_BATCH.get() or (0, x.shape[0])
    if offset + x.shape[0] > total:
        raise ValueError(f"drop_path: a batch of {x.shape[0]} as rows {offset}:{offset + x.shape[0]} "
                         f"of a global batch of {total}")
    shape = (total,) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)[offset:offset + x.shape[0]]
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
