"""Multi-process data parallel training when started by ``torchrun``.

``torchrun --nproc-per-node 2 -m vitfer.cli finetune ...`` (or the ``vitfer`` script) sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`dist_info` then joins the process group (gloo on
the CPU, NCCL on CUDA, one GPU per local rank) and every process trains on its slice of each
global batch, the gradients averaged by :class:`~torch.nn.parallel.DistributedDataParallel`.
Only rank 0 writes files. BatchNorm layers (the CNNs) normalise with each process's own slice.
Without those variables everything here is a no-op.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from vitfer.runtime import resolve_device

_logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def sum(self, *values: float) -> tuple[float, ...]:
        """``values`` summed over all processes."""
        if self.world == 1:
            return tuple(float(v) for v in values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        tdist.all_reduce(t)
        return tuple(t.tolist())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: ``model`` itself, or a DDP wrapper around it."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def dist_info(device: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), else a
    single-process :class:`DistInfo` on ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, resolve_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        _logger.info("process %d of %d joined (%s)", rank, world, tdist.get_backend())
        if rank != 0:  # one copy of the progress lines: rank 0's
            logging.getLogger("vitfer").setLevel(logging.WARNING)
    return DistInfo(rank, world, dev)
