#!/usr/bin/env python
"""Minor page faults and time per eval forward, vitfer against timm, in one process.

    python benchmarks/page_faults.py vit_tiny_patch16_224
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824 \\
        python benchmarks/page_faults.py vit_tiny_patch16_224

Faults come from ``getrusage`` (Linux / macOS); the two sides alternate, several rounds.
Needs timm (the test extra).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5, help="forwards per round")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)

    import timm

    from vitfer.models import create_model, get_model_spec  # registers every family
    print("| model | side | minor faults / forward | ms / forward |")
    print("|---|---|---|---|")
    for name in args.models:
        spec = get_model_spec(name)
        ours = create_model(spec.name, num_classes=7).eval()
        ref = timm.create_model(spec.name, num_classes=7).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(args.batch, *ours.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
        stats: dict[str, tuple[list[float], list[float]]] = {"vitfer": ([], []), "timm": ([], [])}
        with torch.no_grad():
            for m in (ours, ref):
                for _ in range(2):
                    m(x)
            for r in range(args.rounds):
                for side, m in (("vitfer", ours), ("timm", ref)) if r % 2 == 0 else (("timm", ref), ("vitfer", ours)):
                    f0, t0 = _faults(), time.perf_counter()
                    for _ in range(args.iters):
                        m(x)
                    stats[side][0].append((_faults() - f0) / args.iters)
                    stats[side][1].append((time.perf_counter() - t0) * 1e3 / args.iters)
        for side, (faults, ms) in stats.items():
            print(f"| {name} | {side} | {statistics.median(faults):.0f} | {statistics.median(ms):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
