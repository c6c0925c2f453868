"""An exponential moving average of a model's weights (Polyak averaging), kept beside training.

Small face datasets give noisy weights from one step to the next; the average of the recent
weights generalises better and is what validation, the checkpoint and the test use when a run
asks for it (``FinetuneConfig.ema``, ``--ema DECAY``). As in timm's ``ModelEmaV3``, the decay
warms up (``min(decay, (1 + step) / (10 + step))``) so that the first steps are not averaged with
the random initialisation, and BatchNorm's running statistics are averaged like the weights.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """The averaged copy of ``model`` (:attr:`module`, kept in eval mode, no gradients).

    ``update(model, step)`` after every optimiser step folds the model's current weights in;
    :meth:`state_dict` / :meth:`load_state_dict` save and restore it with a run's state.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used after optimiser step ``step`` (counted from 1)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_f, cur_f = [], []
        for e, c in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                ema_f.append(e)
                cur_f.append(c.detach())
            else:  # counters (BatchNorm's num_batches_tracked): the model's own
                e.copy_(c)
        if ema_f:
            torch._foreach_lerp_(ema_f, cur_f, 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(sd, strict=True)
