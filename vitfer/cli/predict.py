"""``vitfer predict CKPT IMAGE|FOLDER|VIDEO ...``: classify faces in photos and videos."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from vitfer.cli._common import positive_int

_logger = logging.getLogger("vitfer.cli")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify faces in photos, folders and videos with a fine-tuned checkpoint",
        description="One record per face (per image without --detect): file, frame, box, label, probabilities. "
        "A file that cannot be read gets an error record and a line on stderr; every other file is still "
        "classified, and the exit status is 1 at the end when any failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by vitfer finetune / vitfer.save, or a run folder "
                   "(its model.safetensors)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders (recursive) or videos")
    p.add_argument("--detect", action="store_true",
                   help="find every face first (OpenCV's Haar cascade; pip install 'vitfer[detect]')")
    p.add_argument("--margin", type=_margin, default=None, metavar="M",
                   help="--detect: margin around each face, as a fraction of its size; None: as the checkpoint was "
                   "trained (its run's face margin; 0.2 when it records none)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the records as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the records as CSV (one column per class)")
    p.add_argument("--top", type=positive_int, default=3, help="classes shown per face in the text output")
    p.add_argument("--batch-size", type=positive_int, default=64, help="faces per forward")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="bf16: autocast (default: the precision the checkpoint's run tested in, fp32 if it records none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--annotate", default=None, metavar="DIR",
                   help="write copies of the images with boxes and labels, as DIR/<path relative to the folder "
                   "given>.png (photos/a/face.jpg -> DIR/a/face.jpg.png)")
    p.add_argument("--every", type=positive_int, default=10, help="videos: classify every N-th frame")
    p.set_defaults(func=_cmd_predict)


def _margin(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v <= -0.5:
        raise argparse.ArgumentTypeError(f"expected a finite number > -0.5 (a fraction of the face's size), got {v}")
    return v


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from vitfer.inference import Predictor, annotate, output_names

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision, detect=args.detect,
                          margin=args.margin, batch_size=args.batch_size, every=args.every)
    if args.detect:
        _logger.info("faces cropped with margin %g", predictor.margin)
    names_out = output_names(args.paths) if args.annotate else {}
    names = predictor.class_names
    records, failed = [], set()
    writer = None
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "frame", "box", "label", *names, "error"])
    by_file: dict[str, list[dict[str, Any]]] = {}
    for r in predictor.predict_files(args.paths):
        if "error" in r:
            failed.add(r["file"])
            print(f"vitfer predict: error: {r['error']}", file=sys.stderr)
        if args.annotate and r.get("frame") is None and "error" not in r:
            by_file.setdefault(r["file"], []).append(r)
        if args.json:
            records.append(r)
        elif writer is not None:
            probs = r.get("probabilities") or {}
            box = " ".join(map(str, r["box"])) if r.get("box") else ""
            writer.writerow([r["file"], "" if r.get("frame") is None else r["frame"], box, r.get("label") or "",
                             *(f"{probs[c]:.6f}" if c in probs else "" for c in names), r.get("error", "")])
        elif "error" not in r:
            where = r["file"] + (f"#{r['frame']}" if r.get("frame") is not None else "")
            where += f" [{','.join(map(str, r['box']))}]" if r.get("box") else ""
            if r.get("label") is None:
                print(f"{where}: {r.get('note', 'no result')}")
            else:
                top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[: args.top]
                print(where + ": " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top))
    if args.json:
        print(json.dumps(records, indent=2))
    for file, recs in by_file.items():
        out = annotate(file, recs, args.annotate, name=names_out.get(Path(file)))
        _logger.info("annotated %s", out)
    return 1 if failed else 0
