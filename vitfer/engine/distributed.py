"""Multi-process data parallel training when started by ``torchrun``.

``torchrun --nproc-per-node 2 -m vitfer.cli finetune ...`` (or the ``vitfer`` script) sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`dist_info` then joins the process group (gloo on
the CPU, NCCL on CUDA, one GPU per local rank) and every process trains on its slice of each
global batch (:func:`batch_part`), the gradients averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`. Only rank 0 writes files. Without those
variables everything here is a no-op.

What the training step draws at random follows the global batch, so ``world`` processes train as
one process does with the same global batch (equal weights up to float rounding): mixup and CutMix
mix the gathered global batch (:meth:`DistInfo.gather`) and keep this process's rows, and
drop-path draws the global batch's mask and keeps its rows
(:func:`vitfer.layers.drop_path.global_batch`); every process starts from the same seed, so the
random state advances as in one process. Two things still differ from one process: BatchNorm
layers (the ResNet-Ds, the stems of the 48-px hybrids) normalise with each process's own slice,
and dropout (``drop_rate`` and kin in ``model_overrides``, off in every recipe) draws each
process's own masks (from the same random state, so the processes repeat one mask on different
images).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from vitfer.runtime import resolve_device

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPart:
    """Rows ``start:stop`` of a global batch of ``total`` images: one process's slice.
    ``sizes`` holds every process's number of rows, in rank order."""

    start: int
    stop: int
    total: int
    sizes: tuple[int, ...]

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def weight(self) -> float:
        """The factor on this process's mean loss that makes DDP's average of the processes'
        gradients the gradient of the global batch's mean loss (1.0 for equal slices)."""
        return (self.stop - self.start) * len(self.sizes) / self.total


def batch_part(total: int, rank: int, world: int) -> BatchPart:
    """Rank ``rank``'s slice of a global batch of ``total`` images split between ``world``
    processes as evenly as possible (the first ``total % world`` ranks take one more)."""
    if not 0 <= rank < world or total < world:
        raise ValueError(f"cannot split a batch of {total} images between {world} processes (rank {rank})")
    bounds = [r * (total // world) + min(r, total % world) for r in range(world + 1)]
    sizes = tuple(b - a for a, b in zip(bounds, bounds[1:]))
    return BatchPart(bounds[rank], bounds[rank + 1], total, sizes)


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

    def gather(self, x: Tensor, part: BatchPart) -> Tensor:
        """The global batch: every process's ``x`` (``part.sizes[r]`` rows on rank ``r``, the
        same trailing shape everywhere) concatenated in rank order; ``x`` itself on one process."""
        if self.world == 1:
            return x
        if x.shape[0] != part.sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {x.shape[0]} rows, its part of the batch is {part.sizes[self.rank]}")
        big = max(part.sizes)
        padded = x.new_zeros((big, *x.shape[1:]))
        padded[: x.shape[0]] = x
        out = [torch.empty_like(padded) for _ in range(self.world)]
        tdist.all_gather(out, padded.contiguous())
        return torch.cat([o[:n] for o, n in zip(out, part.sizes)])

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
