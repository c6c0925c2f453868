"""An exponential moving average of a model's weights (Polyak averaging), kept beside training.

Small face datasets give noisy weights from one step to the next; the average of the recent
weights generalises better and is what validation, the checkpoint and the test use when a run
asks for it (``FinetuneConfig.ema``, ``--ema DECAY``). As in timm's ``ModelEmaV3``, the decay
warms up (``min(decay, (1 + step) / (10 + step))``) so that the first steps are not averaged with
the random initialisation, and BatchNorm's running statistics are averaged like the weights.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmup_ema_multi_avg_fn(decay: float):
    """``multi_avg_fn`` for :class:`~torch.optim.swa_utils.AveragedModel`: torch's
    ``get_ema_multi_avg_fn`` with timm's decay warm-up, ``min(decay, (1 + n) / (10 + n))`` at the
    ``n``-th update, and integer buffers (BatchNorm's counter) taken from the model as they are."""

    @torch.no_grad()
    def fn(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        n = float(n_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return fn


class ModelEma:
    """The averaged copy of ``model`` (:attr:`module`, kept in eval mode, no gradients): torch's
    :class:`~torch.optim.swa_utils.AveragedModel` over parameters and buffers, with
    :func:`warmup_ema_multi_avg_fn`.

    ``update(model, step)`` after every optimiser step folds the model's current weights in;
    :meth:`state_dict` / :meth:`load_state_dict` save and restore it with a run's state (the
    update count is the step, so nothing else needs saving).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.averaged = AveragedModel(model, multi_avg_fn=warmup_ema_multi_avg_fn(self.decay), use_buffers=True)
        self.module = self.averaged.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used after optimiser step ``step`` (counted from 1)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, model: nn.Module, step: int) -> None:
        # the copy made at construction is the first average: update ``step`` is the step-th after it
        self.averaged.n_averaged.fill_(step)
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(sd, strict=True)
