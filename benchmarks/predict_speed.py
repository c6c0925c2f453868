#!/usr/bin/env python
"""End-to-end prediction speed: images per second from files on disk (decode, preprocess, model,
records) on 48x48 face crops, through ``vitfer.inference.Predictor``.

    python benchmarks/predict_speed.py                                  # synthetic 48x48 faces
    python benchmarks/predict_speed.py --faces /path/to/datasets/ckplus48 # real crops, read in place

For each model (a small vitfer transformer and a CNN, random weights: speed does not depend on
them) and each precision (fp32, bf16 autocast) and batch size, it classifies every file and
prints a markdown table of images per second (the median of ``--repeats`` passes, after one
warm-up pass). The reference point: the ``fer`` package (a Keras mini-Xception) runs about 650
img/s end to end on the same kind of input on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = {
    # name: create_model overrides (48 px inputs)
    "vit_tiny_patch16_224": {"img_size": 48, "patch_size": 8},
    "convit_tiny": {"img_size": 48, "patch_size": 8},
    "resnet18d": {},
}


def _faces(folder: Path, n: int) -> list[Path]:
    from vitfer.data import SyntheticFaces

    ds = SyntheticFaces(n=n, image_size=48, seed=0)
    from PIL import Image

    paths = []
    for i in range(n):
        p = folder / f"face{i:05d}.png"
        Image.fromarray(ds.uint8(i)[0].numpy(), "L").save(p)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", default=None, help="a folder of face crops (default: 1000 synthetic 48x48 faces)")
    p.add_argument("--n", type=int, default=1000, help="synthetic faces to write")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    import vitfer
    from vitfer.inference import Predictor, expand_inputs
    from vitfer.models import create_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        files = expand_inputs([args.faces]) if args.faces else _faces(tmp_path, args.n)
        print(f"{len(files)} files, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print("| model | precision | batch | img/s |")
        print("|---|---|---:|---:|")
        for name in args.models:
            model = create_model(name, num_classes=7, **MODELS.get(name, {}))
            if "img_size" not in MODELS.get(name, {}):
                model.pretrained_cfg["input_size"] = (3, 48, 48)
            model.pretrained_cfg["crop_pct"] = 1.0
            ckpt = tmp_path / f"{name}.safetensors"
            vitfer.save(model, ckpt, class_names=["a", "b", "c", "d", "e", "f", "g"])
            for precision in args.precisions:
                for bs in args.batch_sizes:
                    pred = Predictor(ckpt, precision=precision, batch_size=bs, workers=args.workers)
                    runs = []
                    for r in range(args.repeats + 1):
                        t0 = time.perf_counter()
                        n = sum(1 for _ in pred.predict_files(files))
                        if r:  # the first pass warms up
                            runs.append(n / (time.perf_counter() - t0))
                    print(f"| {name} | {precision} | {bs} | {statistics.median(runs):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
