"""``vitfer study``: the study's grid of models and datasets, and its Tables 4.1 and 4.2."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from vitfer.cli._common import positive_int
from vitfer.cli._logging import progress_to_stdout


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_study(sub: argparse._SubParsersAction) -> None:
    from vitfer.engine import SPLIT_KINDS
    from vitfer.engine.config import RECIPES
    from vitfer.engine.study import STUDY_DATASETS, STUDY_MODELS

    p = sub.add_parser(
        "study", help="rerun the study's grid (7 models x CK+48, JAFFE) and write its tables",
        description="Run the study's grid: every model on every dataset is an ordinary run folder "
        "(OUT/<dataset>/<model>; subject-independent folds in OUT/<dataset>/<model>-subject/fold-K). A rerun skips "
        "finished cells and resumes an interrupted one. Writes OUT/tables.md and OUT/tables.csv: the study's Tables "
        "4.1 (CK+48) and 4.2 (JAFFE), its numbers beside ours. --quick: small models of the same families from "
        "scratch (48 px, the scratch recipe: the CNNs 10 epochs, the transformers 25 on the hard labels of a resnet18d "
        "teacher trained first, at lr 3e-4), about 25 min on a 2-core CPU, not the study's setting.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", default=None, help="folder holding ckplus48/ and jaffe/ (default $VITFER_DATA_DIR)")
    p.add_argument("--out", default="study", help="the study's folder")
    p.add_argument("--models", type=_names, default=None,
                   help="comma-separated study names (" + ", ".join(s for s, _ in STUDY_MODELS) + ") or any "
                   "registered model (default: the study's seven; with --quick a study name means its small variant)")
    p.add_argument("--datasets", type=_names, default=list(STUDY_DATASETS), help="comma-separated datasets")
    p.add_argument("--split", default="random", choices=SPLIT_KINDS,
                   help="protocol of the main columns (the study's: one random split, 200 / 70 test images)")
    p.add_argument("--subject-folds", type=int, default=None,
                   help="subject-independent folds for the extra columns (0: not run; default 5, with --quick 0)")
    p.add_argument("--recipe", default=None, choices=tuple(RECIPES), help="default: thesis (--quick: scratch)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="override the recipe's epochs (--quick: 10, the transformers 25 and their teacher 20; "
                   "--epochs sets all of them)")
    p.add_argument("--quick", action="store_true",
                   help="the CPU version: small variants, no pretrained weights, scratch recipe, the transformers distilled")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="train every cell again (default: skip finished cells)")
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: write the tables of the cells finished so far (the others as -)")
    p.set_defaults(func=_cmd_study)


def _cmd_study(args: argparse.Namespace) -> int:
    from vitfer.cli.finetune import Progress
    from vitfer.engine.study import StudyConfig, format_duration, run_study

    cfg = StudyConfig(data_dir=args.data_dir, out_dir=args.out, models=args.models, datasets=args.datasets,
                      split=args.split, recipe=args.recipe, subject_folds=args.subject_folds, epochs=args.epochs,
                      quick=args.quick, seed=args.seed, device=args.device, overwrite=args.overwrite)
    if args.verbose:
        progress_to_stdout("vitfer.engine", "vitfer.data")
    callbacks = [Progress()] if sys.stderr.isatty() else []
    t0 = time.perf_counter()
    starts: dict[int, float] = {}

    def on_cell(cell: Any, event: str, result: Any) -> None:
        what = f"{cell.dataset} / {cell.label}" + (" (subject folds)" if cell.protocol == "subject" else "")
        if event == "start":
            starts[id(cell)] = time.perf_counter()
            print(f"[{format_duration(time.perf_counter() - t0)}] {what}: {cell.out_dir}", flush=True)
            return
        if event == "missing":
            print("    not finished yet", flush=True)
            return
        acc = result.get("test_accuracy") if cell.protocol == "main" else result["accuracy"]["mean"]
        took = format_duration(time.perf_counter() - starts.pop(id(cell), t0))
        print(f"    {'already finished' if event == 'skipped' else 'done'}: accuracy {100 * acc:.2f}% "
              f"({took})", flush=True)

    res = run_study(cfg, train=not args.tables_only, callbacks=callbacks, on_cell=on_cell)
    if args.tables_only:
        print(f"tables of the finished cells: {res['out_dir']}/tables.md, tables.csv")
    else:
        print(f"study finished in {format_duration(time.perf_counter() - t0)}: {res['out_dir']}/tables.md, tables.csv")
    print()
    print(res["tables_md"], end="")
    return 0
