"""``vitfer evaluate CKPT``: score a checkpoint on a dataset."""
from __future__ import annotations

import argparse
import json

from vitfer.cli._common import format_metrics, positive_int


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from vitfer.engine import DATASET_KINDS, SPLIT_KINDS

    p = sub.add_parser(
        "evaluate", help="metrics of a checkpoint on its run's test split or on another dataset",
        description="Accuracy, UAR, macro-F1, per-class accuracy and confusion matrix of CKPT. Without --dataset: "
        "the data, split, fold and seed the checkpoint's run used (its test accuracy, reproduced). With --dataset: "
        "that data (every image unless --split); classes are matched by expression, so a CK+48 model is scored on "
        "JAFFE's shared expressions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by vitfer finetune")
    p.add_argument("--dataset", default=None, choices=DATASET_KINDS, help="evaluate on this data (default: the run's)")
    p.add_argument("--data-dir", default=None, help="its folder (ckplus48/jaffe: default $VITFER_DATA_DIR)")
    p.add_argument("--split", default=None, choices=("all", *SPLIT_KINDS),
                   help="all images, or the --part of this split (default: the run's split; all for another dataset)")
    p.add_argument("--part", default="test", choices=("train", "val", "test"), help="which part of the split")
    p.add_argument("--fold", type=int, default=None, help="fold of a k-fold split (default: the run's)")
    p.add_argument("--n-folds", type=int, default=None, help="folds of a k-fold split (default: the run's)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward")
    p.add_argument("--amp", default=None, choices=("auto", "none", "bf16"),
                   help="precision (default: the run's own, so its test accuracy is reproduced; fp32 for checkpoints "
                   "without a run)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from vitfer.engine import evaluate_checkpoint

    res = evaluate_checkpoint(
        args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, split=args.split, part=args.part,
        fold=args.fold, n_folds=args.n_folds, seed=args.seed, device=args.device, batch_size=args.batch_size,
        amp=args.amp,
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    where = f"{res['dataset']}, " + ("all images" if res["split"] == "all" else f"{res['part']} part of the {res['split']} split")
    if "fold" in res:
        where += f" (fold {res['fold']}, folds 0-{res['n_folds'] - 1})"
    precision = "bf16 autocast" if res.get("amp") == "bf16" else "fp32"
    print(f"{res['model']} on {where}, seed {res['seed']}, {res['img_size']} px, {precision}")
    if "cross_dataset" in res:
        c = res["cross_dataset"]
        print(f"shared expressions: {', '.join(c['shared'])}; left out: {', '.join(c['dataset_only']) or 'none'} "
              f"({c['images_left_out']} images)")
    for line in format_metrics(res, "test" if res["part"] in ("test", "all") else res["part"]):
        print(line)
    print("confusion matrix (rows: true class, columns: predicted):")
    names = list(res["per_class_accuracy"])
    w = max(len(str(n)) for n in names)
    for name, row in zip(names, res["confusion"]):
        print(f"  {name:<{w}} " + " ".join(f"{v:4d}" for v in row))
    return 0
