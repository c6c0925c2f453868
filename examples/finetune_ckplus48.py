"""Fine-tune a vitfer model on CK+48 (7 classes, 981 images of 118 subjects).

    python examples/finetune_ckplus48.py --data-dir /path/to/datasets            # study protocol
    python examples/finetune_ckplus48.py --data-dir /path/to/datasets --split subject

The study's protocol is a random stratified split (781 train / 200 test) which lets frames of
one person fall on both sides; ``--split subject`` holds whole subjects out instead. Without
ImageNet weights (no hub here) the recipe trains from scratch at 48x48 with 6-pixel patches,
AdamW peaking at 1e-4 (see MEASURED.md: higher rates leave small transformers at chance).
"""
from __future__ import annotations

import argparse
import logging

from vitfer.train import FinetuneConfig, finetune


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding ckplus48/ (default $VITFER_DATA_DIR)")
    p.add_argument("--model", default="convit_tiny")
    p.add_argument("--split", default="random", choices=("random", "subject"))
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights at 224 (needs the hub)")
    p.add_argument("--out", default="runs/ckplus48")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = FinetuneConfig(
        model=args.model, dataset="ckplus48", data_dir=args.data_dir, split=args.split, epochs=args.epochs,
        batch_size=16, lr=1e-4, warmup_steps=50, label_smoothing=0.1, out_dir=args.out,
        pretrained=args.pretrained, img_size=None if args.pretrained else 48,
        patch_size=None if args.pretrained else 6,
    )
    res = finetune(cfg)
    print(f"{args.model} on CK+48 ({args.split} split): test accuracy {100 * res['test']['accuracy']:.1f}%")


if __name__ == "__main__":
    main()
