#!/usr/bin/env python
"""Memory and time of one training step with and without gradient checkpointing.

``model.set_grad_checkpointing(True)`` recomputes each block's activations in the backward instead
of keeping them. For each setting this runs warm-up steps, then times SGD steps (cross-entropy, 7
classes) and reports:

* the activation memory kept for the backward: the bytes of every tensor autograd saves during
  the forward, parameters excluded (counted with ``torch.autograd.graph.saved_tensors_hooks``;
  on any device);
* on CUDA, the peak allocated memory of a step (``torch.cuda.max_memory_allocated``);
* the median step time, and the largest gradient difference between the two settings.

    python benchmarks/grad_checkpointing.py vit_base_patch16_224 --batch 8
    python benchmarks/grad_checkpointing.py vit_base_patch16_224 --batch 64 --device cuda
"""
import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward of ``model(x)`` (distinct storages,
    the parameters themselves not counted: they are held either way)."""
    seen: dict[int, int] = {}
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
        except RuntimeError:  # tensors without storage (e.g. wrapper subclasses)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="vit_base_patch16_224")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from vitfer.models import create_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    base = create_model(args.model, num_classes=7).to(device).train()
    size = base.pretrained_cfg["input_size"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *size, generator=g).to(device)
    y = torch.randint(0, 7, (args.batch,), generator=g).to(device)
    rows, grads = [], {}
    for ckpt in (False, True):
        model = copy.deepcopy(base)
        model.set_grad_checkpointing(ckpt)
        act = saved_bytes(model, x)
        for _ in range(args.warmup):
            step(model, x, y)
        times = []
        peak = None
        for _ in range(args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            step(model, x, y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
            times.append(time.perf_counter() - t0)
        grads[ckpt] = [q.grad.detach().clone() for q in model.parameters()]
        rows.append((ckpt, act, peak, statistics.median(times)))
        del model
    diff = max((a - b).abs().max().item() for a, b in zip(grads[False], grads[True]))
    print(f"{args.model}, batch {args.batch}, input {tuple(size)}, device {device}, torch {torch.__version__}")
    print("| grad checkpointing | activations kept for backward (MiB) | peak CUDA memory (MiB) | step time (s) |")
    print("|---|---|---|---|")
    for ckpt, act, peak, t in rows:
        pk = f"{peak / 2**20:.0f}" if peak is not None else "-"
        print(f"| {'on' if ckpt else 'off'} | {act / 2**20:.1f} | {pk} | {t:.2f} |")
    print(f"activation memory ratio on/off: {rows[1][1] / rows[0][1]:.3f}; "
          f"time ratio on/off: {rows[1][3] / rows[0][3]:.2f}; max |grad diff| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
