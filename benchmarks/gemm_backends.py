#!/usr/bin/env python
"""The transformer layers' GEMM shapes through PyTorch's BLAS (MKL on x86) and through oneDNN,
fp32 on the CPU: the measurement behind :mod:`vitfer.layers.gemm`.

For each (rows M, in K, out N): the forward ``F.linear(x, W, b)`` against oneDNN's linear, the
input gradient ``g @ W`` and the weight gradient (``g^T x`` and ``(x^T g)^T``) against each other,
and a residual add as oneDNN's post-op against an in-place add after the GEMM. GFLOP/s, the
median of ``--repeats`` timings.

    python benchmarks/gemm_backends.py              # ViT-B at 224 px, ConViT-Ti, ViT-Ti at 48 px
    python benchmarks/gemm_backends.py --shapes 1576x768x3072
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [
    (1576, 768, 2304), (1576, 768, 768), (1576, 768, 3072), (1576, 3072, 768),  # ViT-B, batch 8
    (1970, 192, 576), (1970, 192, 768), (1970, 768, 192),  # ConViT-Ti / ViT-Ti, batch 10, 224 px
    (2368, 192, 576), (2368, 192, 768), (2368, 768, 192),  # ViT-Ti patch 8 at 48 px, batch 64
    (16, 192, 7),  # a classifier head
]


def time_call(fn, repeats: int, min_time: float = 0.05) -> float:
    """Seconds a call of ``fn`` takes: the median of ``repeats`` runs, each calling it for at least
    ``min_time`` seconds (after three warm-up calls)."""
    for _ in range(3):
        fn()
    runs = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while (el := time.perf_counter() - t0) < min_time:
            fn()
            n += 1
        runs.append(el / n)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=None, help="MxKxN (default: the models' shapes)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    op = torch.ops.mkldnn._linear_pointwise
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, GFLOP/s (median of {args.repeats})")
    print("| M x K -> N | forward BLAS | forward oneDNN | g W BLAS | g W oneDNN | g^T x BLAS | (x^T g)^T BLAS "
          "| + residual: post-op | + residual: add_ after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m, k, n in shapes:
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        g, r = torch.randn(m, n), torch.randn(m, n)
        flop = 2 * m * k * n / 1e9
        cells = [
            lambda: F.linear(x, w, b),
            lambda: op(x, w, b, "none", [], ""),
            lambda: g.mm(w),
            lambda: op(g, w.t(), None, "none", [], ""),
            lambda: g.t().mm(x),
            lambda: x.t().mm(g).t().contiguous(),
            lambda: op.binary(x, r, w, b, "add"),
            lambda: op(x, w, b, "none", [], "").add_(r),
        ]
        vals = [flop / time_call(fn, args.repeats) for fn in cells]
        print(f"| {m} x {k} -> {n} | " + " | ".join(f"{v:.0f}" for v in vals) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
