"""Fine-tune a vitfer model on JAFFE (7 classes, 213 images of 10 subjects), k-fold by subject.

    python examples/finetune_jaffe.py --data-dir /path/to/datasets                 # 10 folds
    python examples/finetune_jaffe.py --data-dir /path/to/datasets --split random  # study protocol

Prints the mean and standard deviation of the test accuracy over the folds. JAFFE is tiny: from
scratch a transformer barely learns it (MEASURED.md); the study's 97% came from ImageNet weights
(``--pretrained``, which needs the hub or a warm cache).
"""
from __future__ import annotations

import argparse
import logging
import statistics

from vitfer.train import FinetuneConfig, finetune


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding jaffe/ (default $VITFER_DATA_DIR)")
    p.add_argument("--model", default="convit_tiny")
    p.add_argument("--split", default="subject-kfold", choices=("random", "subject-kfold"))
    p.add_argument("--n-folds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--out", default="runs/jaffe")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folds = range(args.n_folds) if args.split == "subject-kfold" else [0]
    accs = []
    for fold in folds:
        cfg = FinetuneConfig(
            model=args.model, dataset="jaffe", data_dir=args.data_dir, split=args.split, n_folds=args.n_folds,
            fold=fold, epochs=args.epochs, batch_size=16, lr=1e-4, out_dir=f"{args.out}/fold{fold}",
            pretrained=args.pretrained, img_size=None if args.pretrained else 64,
            patch_size=None if args.pretrained else 8,
        )
        accs.append(finetune(cfg)["test"]["accuracy"])
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"{args.model} on JAFFE ({args.split}): {100 * statistics.mean(accs):.1f}% +- {100 * sd:.1f}% over {len(accs)} fold(s)")


if __name__ == "__main__":
    main()
