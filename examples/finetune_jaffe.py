"""Fine-tune a vitfer model on JAFFE (7 classes, 213 images of 10 subjects), k-fold by subject.

    python examples/finetune_jaffe.py --data-dir /path/to/datasets                 # 10 folds
    python examples/finetune_jaffe.py --data-dir /path/to/datasets --split random  # study protocol

With ``--split subject-kfold`` every fold holds out whole subjects (10 folds on JAFFE's 10 women:
leave one subject out); each fold's line names its held-out subjects, and the last line gives the
mean and standard deviation of the test accuracy over the folds. ``--split random`` is the study's
single random split (70 test images). JAFFE is tiny: from scratch a transformer barely learns it;
the study's 97% came from ImageNet weights (``--pretrained hub``, a converted checkpoint file or
``hf-hub:REPO``, fine-tuned at the model's own input size).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vitfer.engine import FinetuneConfig, TrainingError, finetune, run_folds
from vitfer.weights import CheckpointError


def _at_least_2(text: str) -> int:
    v = int(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"a k-fold split needs at least 2 folds, got {v}")
    return v


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding jaffe/ (default $VITFER_DATA_DIR)")
    p.add_argument("--model", default="convit_tiny")
    p.add_argument("--split", default="subject-kfold", choices=("random", "subject-kfold"))
    p.add_argument("--n-folds", type=_at_least_2, default=10, help="folds of the subject-kfold split (>= 2)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--pretrained", default=None, metavar="SOURCE",
                   help="start from pretrained weights: 'hub', a checkpoint file or hf-hub:REPO[@REV]")
    p.add_argument("--out", default="runs/jaffe", help="parent folder of the run folders")
    p.add_argument("--overwrite", action="store_true", help="replace earlier runs there instead of resuming them")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pretrained = (True if args.pretrained == "hub" else args.pretrained) if args.pretrained else False
    kfold = args.split == "subject-kfold"
    try:
        cfg = FinetuneConfig(
            model=args.model, dataset="jaffe", data_dir=args.data_dir, split=args.split, n_folds=args.n_folds,
            epochs=args.epochs, batch_size=16, lr=1e-4, pretrained=pretrained,
            img_size="auto" if pretrained else 64, patch_size="auto" if pretrained else 8,
            out_dir=str(Path(args.out) / ("folds" if kfold else "random")), overwrite=args.overwrite,
        )
        if kfold:  # every fold, each a resumable run in OUT/folds/fold-K (finished folds are skipped on a rerun)
            summary = run_folds(cfg)
        else:
            res = finetune(cfg)
    except (CheckpointError, TrainingError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if kfold:
        for f in summary["folds"]:
            print(f"fold {f['fold'] + 1}/{summary['n_folds']} (test subjects {', '.join(f['test_subjects'])}): "
                  f"{100 * f['accuracy']:.1f}% of {f['n']} images")
        acc = summary["accuracy"]
        print(f"{args.model} on JAFFE ({args.split}, {summary['n_folds']} folds): {100 * acc['mean']:.1f}% +- "
              f"{100 * acc['std']:.1f}% (mean +- standard deviation over folds); summary in {cfg.out_dir}/summary.md")
    else:
        print(f"{args.model} on JAFFE (random split): test accuracy {100 * res['test']['accuracy']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
