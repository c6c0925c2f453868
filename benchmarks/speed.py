#!/usr/bin/env python
"""Speed of vitfer models against timm's models of the same name, measured in one process.

For each model: both implementations get identical weights and inputs; eval throughput (batch 8,
``torch.no_grad``) and one SGD training step (batch 10, cross-entropy, 7 classes) are timed in
alternating order over several repeats, and the median of the per-repeat ratios vitfer/timm is
reported (ratio > 1: vitfer faster). Absolute numbers drift on shared machines; the ratios are
what to compare. Each model runs in a fresh process of its own (``--in-process``: all in this one):
the heap a model's training steps leave behind changes how the next model's allocations fault
(on 2026-12-05 vit_tiny's eval ratio was 0.98 after five other models in one process, 1.12 alone).

    python benchmarks/speed.py vit_tiny_patch16_224 vit_base_patch16_224
    python benchmarks/speed.py convit_tiny --device cuda --amp bf16

Needs timm (the test extra). On CPU vitfer runs its hand-written attention path and timm its
default fused one (``TIMM_FUSED_ATTN`` unset).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_segment(fn: Callable[[], None], device: torch.device, min_time: float) -> tuple[int, float]:
    """Run ``fn`` until ``min_time`` seconds have passed (at least once); (iterations, seconds)."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(device)
        el = time.perf_counter() - start
        if el >= min_time:
            return n, el


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    import timm

    from vitfer.models import create_model, get_model_spec

    spec = get_model_spec(name)
    device = torch.device(args.device)
    dtype_ctx = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp == "bf16" else nullcontext
    )
    ours = create_model(spec.name, num_classes=args.num_classes).to(device)
    ref = timm.create_model(spec.name, num_classes=args.num_classes).to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    size = ours.pretrained_cfg["input_size"]
    g = torch.Generator().manual_seed(0)
    x_eval = torch.randn(args.eval_batch, *size, generator=g).to(device)
    x_train = torch.randn(args.train_batch, *size, generator=g).to(device)
    y_train = torch.randint(0, args.num_classes, (args.train_batch,), generator=g).to(device)

    ours.eval()
    ref.eval()
    with torch.no_grad():
        diff = (ours(x_eval[:2]).float() - ref(x_eval[:2]).float()).abs().max().item()

    def eval_fn(m):
        def run():
            with torch.no_grad(), dtype_ctx():
                m(x_eval)
        return run

    def train_fn(m, opt):
        def run():
            with dtype_ctx():
                loss = F.cross_entropy(m(x_train), y_train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    rows = []
    modes = [m for m in ("eval", "train") if m in args.modes]
    for mode in modes:
        if mode == "eval":
            ours.eval(), ref.eval()
            fns = {"vitfer": eval_fn(ours), "timm": eval_fn(ref)}
            batch = args.eval_batch
        else:
            ours.train(), ref.train()
            fns = {
                "vitfer": train_fn(ours, torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)),
                "timm": train_fn(ref, torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9)),
            }
            batch = args.train_batch
        for fn in fns.values():  # warm-up
            for _ in range(args.warmup):
                fn()
            _sync(device)
        ips = {"vitfer": [], "timm": []}
        peak = {}
        for r in range(args.repeats):
            order = ("vitfer", "timm") if r % 2 == 0 else ("timm", "vitfer")
            for side in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                n, el = _time_segment(fns[side], device, args.min_time)
                ips[side].append(n * batch / el)
                if device.type == "cuda":
                    peak[side] = max(peak.get(side, 0), torch.cuda.max_memory_allocated(device))
        ratios = [a / b for a, b in zip(ips["vitfer"], ips["timm"])]
        rows.append(
            dict(
                model=name, mode=mode, batch=batch,
                vitfer=statistics.median(ips["vitfer"]), timm=statistics.median(ips["timm"]),
                ratio=statistics.median(ratios), ratios=ratios, diff=diff,
                peak_vitfer=peak.get("vitfer"), peak_timm=peak.get("timm"),
            )
        )
        print(
            f"  {name} {mode}: vitfer {rows[-1]['vitfer']:.2f} img/s, timm {rows[-1]['timm']:.2f} img/s, "
            f"ratios {' '.join(f'{r:.3f}' for r in ratios)}",
            file=sys.stderr, flush=True,
        )
    return rows


def bench_isolated(name: str, args: argparse.Namespace) -> list[dict]:
    """:func:`bench_model` of ``name`` in a fresh Python process (its progress on stderr), so that no
    other model's allocation history skews it; the rows come back as JSON."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vitfer-speed-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), name, "--in-process", "--json", str(out),
               "--device", args.device, "--amp", args.amp, "--modes", *args.modes,
               "--eval-batch", str(args.eval_batch), "--train-batch", str(args.train_batch),
               "--num-classes", str(args.num_classes), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--min-time", str(args.min_time)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"benchmarking {name} in its own process failed (exit {done.returncode})")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registered vitfer model names that timm also has")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype")
    p.add_argument("--modes", nargs="+", default=["eval", "train"], choices=("eval", "train"))
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=10)
    p.add_argument("--num-classes", type=int, default=7)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per timed segment")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--in-process", action="store_true",
                   help="benchmark every model in this process instead of a fresh one each")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, amp {args.amp}",
          file=sys.stderr)
    rows = []
    bench = bench_isolated if not args.in_process and len(args.models) > 1 else bench_model
    for name in args.models:
        rows += bench(name, args)
    if args.json is not None:
        args.json.write_text(json.dumps(rows))
    cuda = args.device.startswith("cuda")
    head = "| model | mode | batch | vitfer img/s | timm img/s | median ratio vitfer/timm | max abs diff (logits) |"
    sep = "|---|---|---|---|---|---|---|"
    if cuda:
        head += " peak MiB vitfer | peak MiB timm |"
        sep += "---|---|"
    print(head)
    print(sep)
    for r in rows:
        line = (f"| {r['model']} | {r['mode']} | {r['batch']} | {r['vitfer']:.2f} | {r['timm']:.2f} | "
                f"**{r['ratio']:.3f}** | {r['diff']:.1e} |")
        if cuda:
            line += f" {(r['peak_vitfer'] or 0) / 2**20:.0f} | {(r['peak_timm'] or 0) / 2**20:.0f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
