#!/usr/bin/env python
"""Where a training epoch's time goes, and how much of it better matrix products could win back.

    python benchmarks/train_profile.py                                        # scratch recipe, synthetic faces
    python benchmarks/train_profile.py --dataset ckplus48 --data-dir /path/to/datasets --split subject
    python benchmarks/train_profile.py --recipe distill --model convit_tiny --dataset ckplus48 \\
        --data-dir /path/to/datasets --split subject --distill runs/a-distill-run/teacher

It runs a short ``vitfer finetune`` (``--epochs``, in a temporary folder) and prints, from the
epochs' records (``metrics.jsonl``'s ``phase_seconds``, see ``vitfer.engine.loop.PHASES``), the
seconds an epoch spends loading and augmenting data, in the forward pass (the teacher's included),
the backward pass, the optimiser and the rest, beside validation; the first epoch (warm-up) is left
out when there are more. Then the model's matrix products: the shapes of every matrix product of
one forward at the run's batch size (the profiler's record of the matrix-product operators), each
timed alone in the run's precision (fp32 or bf16), and the rate they reach against the best of
square products from 256^3 to 2048^3 on the same threads; and the operators that take one training
step's time. A rate near the best square product's says the time is the arithmetic itself: a faster epoch then needs
less arithmetic, not a faster kernel.
"""
from __future__ import annotations

import argparse
import collections
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gemm_backends' timer


def gemm_rate(b: int, m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """GFLOP/s of ``b`` products ``(m, k) @ (k, n)`` (one batched product when ``b > 1``) in
    ``dtype`` (:func:`gemm_backends.time_call`: the median of ``repeats`` runs)."""
    from gemm_backends import time_call

    shape_a, shape_b = ((b, m, k), (b, k, n)) if b > 1 else ((m, k), (k, n))
    x, y = torch.randn(*shape_a).to(dtype), torch.randn(*shape_b).to(dtype)
    return 2.0 * b * m * k * n / time_call(lambda: x @ y, repeats) / 1e9


#: The operators that do a forward's matrix products (the fp32 oneDNN path's included), and where
#: their two factors are among the recorded input shapes.
MATMUL_OPS = {"aten::mm": (0, 1), "aten::addmm": (1, 2), "aten::addmm_": (1, 2), "aten::bmm": (0, 1),
              "aten::baddbmm": (1, 2), "mkldnn::_linear_pointwise": (0, 1)}


def matmul_shapes(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> list[tuple[int, int, int, int]]:
    """``(batch, rows, inner, cols)`` of every matrix product of one forward of ``x`` (the profiler's
    record of the operators in :data:`MATMUL_OPS`; batch 1 for a plain product)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        model(x)  # warm-up: the first call may take other paths
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    shapes = []
    for ev in prof.events():
        if ev.name not in MATMUL_OPS:
            continue
        ia, ib = MATMUL_OPS[ev.name]
        a, b = ev.input_shapes[ia], ev.input_shapes[ib]
        if ev.name == "mkldnn::_linear_pointwise":  # (input, weight (out, in))
            shapes.append((1, int(torch.tensor(a[:-1]).prod()), a[-1], b[0]))
        elif len(a) == 3:
            shapes.append((a[0], a[1], a[2], b[2]))
        else:
            shapes.append((1, a[0], a[1], b[1]))
    return shapes


def step_operators(model: torch.nn.Module, x: torch.Tensor, amp: bool, top: int = 12) -> list[tuple[str, float, int]]:
    """``(operator, share of the step's self time, calls)`` of the ``top`` operators of one training
    step (forward, cross-entropy, backward, AdamW) of ``x``, by self time (the profiler's)."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.zeros(x.shape[0], dtype=torch.long)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    total = sum(r[1] for r in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    return [(k, t / total, n) for k, t, n in rows[:top]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="scratch")
    p.add_argument("--model", default=None, help="default: the recipe's")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=None, help="data loader processes (default: the config's)")
    p.add_argument("--distill", default=None, metavar="TEACHER",
                   help="a teacher checkpoint or run folder (the distill recipe otherwise trains one first)")
    args = p.parse_args(argv)

    from vitfer.engine import FinetuneConfig, finetune
    from vitfer.engine.loop import PHASES
    from vitfer.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    fields = {"dataset": args.dataset, "epochs": args.epochs, "seed": args.seed}
    for key in ("model", "data_dir", "split", "num_workers", "distill"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FinetuneConfig.from_recipe(args.recipe, out_dir=str(Path(tmp) / "run"), overwrite=True, **fields)
        res = finetune(cfg)
        run_cfg = res["config"]
    hist = res["history"][1:] if len(res["history"]) > 1 else res["history"]
    per = {k: statistics.mean(h["phase_seconds"][k] for h in hist) for k in PHASES}
    epoch_s = statistics.mean(h["seconds"] for h in hist)
    val_s = statistics.mean(h.get("val_seconds", 0.0) for h in hist)
    ips = statistics.mean(h["images_per_s"] for h in hist)
    print(f"# {run_cfg['model']}, recipe {args.recipe}, {args.dataset}, batch {run_cfg['batch_size']}, "
          f"amp {run_cfg['amp']}, {torch.get_num_threads()} threads; epochs {len(hist)} of {len(res['history'])} "
          f"averaged (the first is warm-up)")
    print(f"\n{epoch_s:.2f} s an epoch, {ips:.0f} img/s; validation {val_s:.2f} s\n")
    print("| phase | s / epoch | share |\n|---|---:|---:|")
    for k in PHASES:
        print(f"| {k} | {per[k]:.3f} | {per[k] / max(epoch_s, 1e-9):.0%} |")

    amp = run_cfg["amp"] == "bf16"
    dtype = torch.bfloat16 if amp else torch.float32
    kw = {**(run_cfg.get("model_overrides") or {}), "num_classes": len(res["classes"]), "img_size": run_cfg["img_size"]}
    if run_cfg.get("patch_size") not in (None, "auto"):
        kw["patch_size"] = run_cfg["patch_size"]
    model = create_model(run_cfg["model"], **kw).eval()
    x = torch.randn(int(run_cfg["batch_size"]), 3, int(run_cfg["img_size"]), int(run_cfg["img_size"]))
    print(f"\nOne training step's operators at batch {x.shape[0]} (the profiler's self time)\n")
    print("| operator | share | calls |\n|---|---:|---:|")
    for name, share, n in step_operators(model, x, amp):
        print(f"| {name} | {share:.0%} | {n} |")
    model.eval()
    shapes = matmul_shapes(model, x, amp)
    big = max(gemm_rate(1, n, n, n, dtype, repeats=5) for n in (256, 512, 1024, 2048))
    counts = collections.Counter(shapes)
    print(f"\nThe model's matrix products in one forward at batch {x.shape[0]} ({dtype}; the best square product "
          f"from 256^3 to 2048^3: {big:.0f} GFLOP/s)\n")
    print("| batch x rows x inner -> cols | calls | GFLOP/s | of the best square rate |\n|---|---:|---:|---:|")
    flop = secs = 0.0
    for (b, m, k, n), c in sorted(counts.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[0][2] * kv[0][3] * kv[1]):
        rate = gemm_rate(b, m, k, n, dtype)
        f = 2.0 * b * m * k * n * c
        flop, secs = flop + f, secs + f / (rate * 1e9)
        print(f"| {b} x {m} x {k} -> {n} | {c} | {rate:.0f} | {rate / big:.0%} |")
    if secs:
        print(f"\nAll of them: {flop / 1e9:.2f} GFLOP a forward at {flop / secs / 1e9:.0f} GFLOP/s, "
              f"{flop / secs / 1e9 / big:.0%} of the best square rate: {secs * 1e3:.1f} ms of the forward (the "
              f"backward does about twice the arithmetic)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
