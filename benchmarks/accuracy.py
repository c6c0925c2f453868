"""From-scratch accuracy of vitfer's models against timm's model of the same architecture, trained
by the same engine with the same recipe, seeds and splits.

    python benchmarks/accuracy.py --data-dir DIR [--models vit_tiny_cs_48] [--datasets ckplus48 jaffe]
        [--splits random subject] [--seeds 0 1] [--impls vitfer timm] [--recipe scratch] [--epochs N]
        [--out results.md]

For the timm side the engine's model builder is replaced by one that returns timm's network (for
the convolutional-stem ViTs timm's ``VisionTransformer`` with ``HybridEmbed(ConvStem)``, built
from the same config; for the other families ``timm.create_model`` with the same sizes), so the
data, split, augmentation, optimiser, schedule and seeds are the engine's for both. The test
accuracy of each run is measured on its best-validation-epoch weights; the timm weights are
evaluated through vitfer's model of the same layout (the two agree to float rounding, see the
parity tests). Prints one markdown table: mean and standard deviation over the seeds, wall time
of a run and training images/s. Needs timm (the test extra).

A run whose recipe pretrains on another dataset first (the scratch recipe's JAFFE runs pretrain
on CK+48) trains that pretraining run once per implementation, model and seed and reuses it for
the other splits (its config does not depend on the split); the wall time of such runs is given
with and without it. To use both cores, run one process per implementation (``--impls vitfer``
and ``--impls timm`` with ``OMP_NUM_THREADS=1``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path


def timm_twin(ours):
    """timm's network with ``ours``'s architecture and vitfer's bookkeeping attributes, for the engine."""
    import timm

    cfg = ours.cfg
    if getattr(cfg, "backbone", None) in ("convstem", "resnetd"):
        from timm.layers.hybrid_embed import HybridEmbed
        from timm.models.vision_transformer import VisionTransformer
        from timm.models.vision_transformer_hybrid import ConvStem

        if cfg.backbone == "resnetd":  # ResNet-D's first stages: timm's resnet as a feature extractor
            stem = timm.create_model(f"resnet{18 if cfg.resnet_block == 'basic' else 50}d", features_only=True,
                                     out_indices=(len(cfg.resnet_layers),), in_chans=cfg.in_chans)
        else:
            stem = ConvStem(in_chans=cfg.in_chans, depth=len(cfg.stem_channels), channels=cfg.stem_channels,
                            kernel_size=cfg.stem_kernel_size, stride=cfg.stem_stride)
        ref = VisionTransformer(
            img_size=cfg.img_size, patch_size=1, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            global_pool=cfg.global_pool, drop_path_rate=cfg.drop_path_rate,
            embed_layer=partial(HybridEmbed, backbone=stem, proj=cfg.embed_proj),
        )
    else:
        kw = {k: getattr(cfg, k) for k in ("img_size", "patch_size", "in_chans", "num_classes", "drop_path_rate",
                                            "depth", "embed_dim", "num_heads") if hasattr(cfg, k)}
        ref = timm.create_model(ours.model_name, **kw)
    missing = set(ours.state_dict()) ^ set(ref.state_dict())
    if missing:
        raise SystemExit(f"timm's {ours.model_name} does not have vitfer's layout: {sorted(missing)[:5]}")
    ref.model_name, ref.cfg, ref.num_classes = ours.model_name, ours.cfg, ours.num_classes
    ref.pretrained_cfg = ours.pretrained_cfg
    return ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models", nargs="+", default=["vit_tiny_r18d_48"])
    ap.add_argument("--datasets", nargs="+", default=["ckplus48", "jaffe"])
    ap.add_argument("--splits", nargs="+", default=["random", "subject"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--impls", nargs="+", default=["vitfer", "timm"], choices=["vitfer", "timm"])
    ap.add_argument("--recipe", default="scratch")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (shorter runs)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args()

    import vitfer.engine.loop as loop
    from vitfer.engine import FinetuneConfig, finetune

    build = loop.build_model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for dataset in args.datasets:
                for split in args.splits:
                    for impl in args.impls:
                        accs, secs, speeds, pre_secs = [], [], [], []
                        for seed in args.seeds:
                            loop.build_model = build if impl == "vitfer" else (lambda c, n: timm_twin(build(c, n)))
                            fields = dict(model=model, dataset=dataset, data_dir=args.data_dir, split=split, seed=seed,
                                          out_dir=str(Path(tmp) / f"{model}-{dataset}-{split}-{impl}-{seed}"))
                            if args.epochs:
                                fields["epochs"] = args.epochs
                            cfg = FinetuneConfig.from_recipe(args.recipe, **fields)
                            shared = Path(tmp) / f"pretrain-{cfg.pretrain}-{model}-{impl}-{seed}"
                            if cfg.pretrain and shared.is_dir():
                                shutil.copytree(shared, Path(cfg.out_dir) / f"pretrain-{cfg.pretrain}")
                            reused = shared.is_dir()
                            t = time.perf_counter()
                            res = finetune(cfg)
                            secs.append(time.perf_counter() - t)
                            if "pretrain" in res:  # secs: the run alone, pre_secs: its pretraining
                                pre = Path(res["pretrain"]["out_dir"])
                                pre_secs.append(json.loads((pre / "metrics.json").read_text())["seconds"])
                                if not reused:
                                    shutil.copytree(pre, shared)
                                    secs[-1] -= pre_secs[-1]
                            accs.append(res["test"]["accuracy"])
                            speeds.append(statistics.mean(h["images_per_s"] for h in res["history"]))
                            print(f"{model} {impl} {dataset} {split} seed {seed}: test {accs[-1]:.3f} "
                                  f"({secs[-1]:.0f} s, epoch {res['best_epoch']} best)", file=sys.stderr, flush=True)
                        rows.append((model, impl, dataset, split, accs, secs, speeds, pre_secs))
        loop.build_model = build

    lines = [f"recipe `{args.recipe}`{f', {args.epochs} epochs' if args.epochs else ''}, seeds {args.seeds}; "
             "test accuracy mean +- std over the seeds", "",
             "| model | implementation | dataset | split | test accuracy | per seed | wall s / run | train img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for model, impl, dataset, split, accs, secs, speeds, pre_secs in rows:
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        wall = f"{statistics.mean(secs):.0f}"
        if pre_secs:
            wall = f"{statistics.mean(secs) + statistics.mean(pre_secs):.0f} (pretraining {statistics.mean(pre_secs):.0f})"
        lines.append(f"| {model} | {impl} | {dataset} | {split} | {statistics.mean(accs):.3f} +- {sd:.3f} | "
                     f"{' '.join(f'{a:.3f}' for a in accs)} | {wall} | {statistics.mean(speeds):.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
