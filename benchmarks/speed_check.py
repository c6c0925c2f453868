#!/usr/bin/env python
"""A speed check to run before a change lands: one model of every family against timm, eval and
training, with ``benchmarks/speed.py``'s method (same weights, one process, alternating, median
ratio); exits with status 1 when a family's median ratio vitfer/timm drops below ``--min-ratio``.

    python benchmarks/speed_check.py                 # every family, about 10-15 min on 2 cores
    python benchmarks/speed_check.py --models convit_tiny vit_tiny_patch16_224

Run it on a quiet machine: on a loaded one single ratios swing by +-0.2. Each model runs in a fresh
process of its own (``speed.bench_isolated``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import bench_isolated  # noqa: E402

FAMILY_MODELS = {
    "vit": "vit_tiny_patch16_224",
    "deit": "deit_tiny_distilled_patch16_224",
    "convit": "convit_tiny",
    "crossvit": "crossvit_tiny_240",
    "vit_hybrid": "vit_base_r50_s16_224",
    "resnet": "resnet50d",
    "vgg": "vgg16",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(FAMILY_MODELS.values()))
    p.add_argument("--min-ratio", type=float, default=1.0)
    p.add_argument("--modes", nargs="+", default=["eval", "train"], choices=("eval", "train"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    bench_args = argparse.Namespace(
        device="cpu", amp="none", modes=args.modes, eval_batch=8, train_batch=10, num_classes=7,
        repeats=args.repeats, warmup=2, min_time=0.3, threads=None,
    )
    print("| model | mode | vitfer img/s | timm img/s | median ratio | |")
    print("|---|---|---:|---:|---:|---|")
    slow = []
    for name in args.models:
        for row in bench_isolated(name, bench_args):
            ok = row["ratio"] >= args.min_ratio
            if not ok:
                slow.append(f"{name} {row['mode']} {row['ratio']:.3f}")
            print(f"| {name} | {row['mode']} | {row['vitfer']:.2f} | {row['timm']:.2f} | {row['ratio']:.3f} | "
                  f"{'ok' if ok else 'SLOWER'} |", flush=True)
    if slow:
        print(f"below {args.min_ratio}x timm: " + ", ".join(slow), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
