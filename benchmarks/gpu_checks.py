#!/usr/bin/env python
"""Every check that needs a GPU, in one run (for a session that is lent one; CI has none).

    python benchmarks/gpu_checks.py                 # all checks, default models
    python benchmarks/gpu_checks.py --skip-speed    # numerics only
    python benchmarks/gpu_checks.py --device cpu --models vit_tiny_patch16_224   # dry run of the script

1. parity: vitfer vs timm on the device, same weights, fp32 (TF32 off), eval: logits and
   ``forward_features`` within ``1e-4 * max(1, max|ref|)`` (the fp32 parity bound of tests/parity.py).
2. dispatch: with ``impl="auto"`` every attention layer calls PyTorch's fused SDPA on CUDA tensors
   and never the hand-written path (counted by wrapping both).
3. bf16: under ``torch.autocast(bfloat16)`` the forward and one backward run, are finite, and the
   logits agree with timm's under the same autocast to a bf16 bound (5e-2 * max(1, max|ref|)).
4. speed: ``benchmarks/speed.py`` on the device with bf16 autocast (eval and train, peak memory).

Prints one markdown table per section and exits non-zero when a numerical check fails.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import speed  # noqa: E402  (benchmarks/speed.py)

DEFAULT_MODELS = [
    "vit_tiny_patch16_224", "vit_base_patch16_224", "convit_tiny", "convit_base",
    "crossvit_tiny_240", "crossvit_base_240", "crossvit_15_dagger_408", "vit_base_r50_s16_224",
    "resnet50d", "vgg16", "vgg19", "vit_tiny_r18d_48", "vit_tiny_cs_48",
]
SPEED_MODELS = ["vit_base_patch16_224", "convit_base", "crossvit_base_240", "vit_base_r50_s16_224", "resnet50d", "vgg16"]
TRANSFORMERS = ("vit_", "convit", "crossvit")


def _pair(name: str, device: torch.device):
    import timm

    from vitfer.models import create_model

    ours = create_model(name, num_classes=7).to(device).eval()
    if timm.is_model(name):
        ref = timm.create_model(name, num_classes=7).to(device).eval()
    else:  # vitfer's small from-scratch hybrids: timm's ViT on HybridEmbed, built from the same config
        from accuracy import timm_twin  # benchmarks/accuracy.py

        ref = timm_twin(ours.cpu()).to(device).eval()
        ours.to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    size = ours.pretrained_cfg["input_size"]
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(device)
    return ours, ref, x


def _tol(ref: torch.Tensor, rel: float) -> float:
    return rel * max(1.0, ref.detach().float().abs().max().item())


def check_parity(name: str, device: torch.device) -> dict:
    ours, ref, x = _pair(name, device)
    with torch.no_grad():
        lo, lr = ours(x), ref(x)
        fo, fr = ours.forward_features(x), ref.forward_features(x)
    fo = fo if isinstance(fo, torch.Tensor) else torch.cat([t.flatten(1) for t in fo], 1)
    fr = fr if isinstance(fr, torch.Tensor) else torch.cat([t.flatten(1) for t in fr], 1)
    dl = (lo - lr).abs().max().item()
    df = (fo - fr).abs().max().item()
    # the hybrid's channels-last backbone sums in another order (tests/models/test_vit_hybrid.py)
    feat_rel = 3e-4 if "_r50_" in name else 1e-4
    ok = dl <= _tol(lr, 1e-4) and df <= _tol(fr, feat_rel)
    return dict(model=name, check="parity fp32", ok=ok, detail=f"logits {dl:.1e}, features {df:.1e}")


def check_dispatch(name: str, device: torch.device) -> dict:
    import vitfer.layers.attention as A
    import vitfer.layers.gpsa as G

    ours, _, x = _pair(name, device)
    calls = {"sdpa": 0, "manual": 0}
    real_sdpa, real_manual, real_gpsa_manual = F.scaled_dot_product_attention, A._manual_attention, G._gated_attention_manual

    def sdpa(*a, **kw):
        calls["sdpa"] += 1
        return real_sdpa(*a, **kw)

    def manual(*a, **kw):
        calls["manual"] += 1
        return real_manual(*a, **kw)

    def gpsa_manual(*a, **kw):
        calls["manual"] += 1
        return real_gpsa_manual(*a, **kw)

    F.scaled_dot_product_attention, A._manual_attention, G._gated_attention_manual = sdpa, manual, gpsa_manual
    try:
        with torch.no_grad():
            ours(x)
        loss = ours(x).float().logsumexp(-1).mean()
        loss.backward()
    finally:
        F.scaled_dot_product_attention, A._manual_attention, G._gated_attention_manual = (
            real_sdpa, real_manual, real_gpsa_manual)
    want_sdpa = device.type == "cuda"
    ok = (calls["sdpa"] > 0 and calls["manual"] == 0) if want_sdpa else (calls["manual"] > 0 and calls["sdpa"] == 0)
    return dict(model=name, check="dispatch auto", ok=ok, detail=f"sdpa calls {calls['sdpa']}, manual calls {calls['manual']}")


def check_bf16(name: str, device: torch.device) -> dict:
    ours, ref, x = _pair(name, device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        lo, lr = ours(x).float(), ref(x).float()
    ours.train()
    y = torch.tensor([0, 1], device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = F.cross_entropy(ours(x), y)
    loss.backward()
    grads_finite = all(torch.isfinite(p.grad).all().item() for p in ours.parameters() if p.grad is not None)
    d = (lo - lr).abs().max().item()
    ok = bool(torch.isfinite(lo).all().item()) and grads_finite and d <= _tol(lr, 5e-2)
    return dict(model=name, check="bf16 autocast", ok=ok,
                detail=f"logits vs timm {d:.1e}, loss {loss.item():.3f}, grads finite {grads_finite}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--speed-models", nargs="+", default=SPEED_MODELS)
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)

    rows = []
    t0 = time.time()
    for name in args.models:
        checks = [check_parity, check_bf16]
        if name.startswith(TRANSFORMERS):
            checks.insert(1, check_dispatch)
        for fn in checks:
            try:
                rows.append(fn(name, device))
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                traceback.print_exc()
                rows.append(dict(model=name, check=fn.__name__, ok=False, detail=f"{type(e).__name__}: {e}"[:200]))
            print(f"  {rows[-1]['model']} {rows[-1]['check']}: {'ok' if rows[-1]['ok'] else 'FAIL'} "
                  f"({rows[-1]['detail']}) [{time.time() - t0:.0f}s]", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| model | check | result | detail |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['check']} | {'ok' if r['ok'] else '**FAIL**'} | {r['detail']} |")

    if not args.skip_speed:
        print(flush=True)
        speed.main(args.speed_models + ["--device", args.device, "--amp", "bf16", "--repeats", "5", "--min-time", "0.5"])
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
