"""The ``vitfer`` command line.

    vitfer models [PATTERN] [--family F] [--json]
    vitfer convert --model NAME [--from hub|PATH|hf-hub:REPO[@REV]] --out DIR [--manifest PATH]
    vitfer manifest [--out weights/manifest.json]

Each subcommand is added by one ``_add_<command>(subparsers)`` function that sets ``func`` on its
parser; more subcommands (``finetune``, ``predict`` ...) plug in the same way. Only this module
prints; the library logs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = ["build_parser", "main"]

_logger = logging.getLogger("vitfer.cli")


# -- models -----------------------------------------------------------------------------------
def _models_rows(pattern: Optional[str], family: Optional[str]) -> list[dict[str, Any]]:
    from vitfer.models.registry import _ALIASES, get_model_spec, list_models
    from vitfer.weights.convert import build_meta, import_all_families

    import_all_families()
    rows = []
    for name in list_models(pattern, family=family):
        spec = get_model_spec(name)
        model = build_meta(name)
        n = sum(p.numel() for p in model.parameters())
        cfg = spec.pretrained_cfg
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "params": n,
                "input_size": list(cfg.input_size),
                "pretrained": cfg.hf_hub_id,
                "aliases": sorted(a for a, t in _ALIASES.items() if t == name),
            }
        )
    return rows


def _cmd_models(args: argparse.Namespace) -> int:
    rows = _models_rows(args.pattern, args.family)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models match", file=sys.stderr)
        return 1
    w = max(len(r["name"]) for r in rows)
    print(f"{'name':<{w}}  {'family':<10}  {'params (M)':>10}  {'input':<11}  default pretrained source")
    for r in rows:
        inp = "x".join(str(s) for s in r["input_size"])
        alias = f"  (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name']:<{w}}  {r['family']:<10}  {r['params'] / 1e6:>10.2f}  {inp:<11}  "
              f"hf-hub:{r['pretrained'] or '-'}{alias}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models (parameters, default pretrained source)")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style name filter, e.g. 'crossvit_*'")
    p.add_argument("--family", default=None, choices=("vit", "convit", "crossvit", "vit_hybrid", "resnet", "vgg"),
                   help="only this family")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


# -- convert ----------------------------------------------------------------------------------
def _cmd_convert(args: argparse.Namespace) -> int:
    from vitfer.weights.checkpoint import _check_rebuildable, describe_state_dict
    from vitfer.weights.convert import _spec
    from vitfer.weights.hub import HF_PREFIX, fetch_state_dict, pretrained_tag
    from vitfer.weights.io import atomic_save_safetensors, sha256_file
    from vitfer.weights.manifest import update_manifest_entry

    spec = _spec(args.model)
    tag = pretrained_tag(args.model)
    # "arch.tag" keeps its tag: it selects the hub weights and names the output and manifest entry.
    name = f"{spec.name}.{tag}" if tag else spec.name
    src = args.source
    if src == "hub":
        source: Any = True
    elif src.startswith(HF_PREFIX):
        source = src
    else:
        source = Path(src)
    res = fetch_state_dict(name, source)
    if res.source.startswith(HF_PREFIX):
        src_info = {k: res.info.get(k) for k in ("hub_repo", "revision", "commit", "filename", "sha256")}
        src_info["layout"] = res.layout
    else:
        path = Path(res.source)
        src_info = {"file": path.name, "sha256": sha256_file(path) if path.is_file() else None, "layout": res.layout}
    info = {"source": res.source, "source_info": src_info, "base": res.base}
    if tag:
        info["tag"] = tag
    meta = describe_state_dict(spec.name, res.state_dict, info)
    _check_rebuildable(meta, res.state_dict)
    out_dir = Path(args.out)
    out = out_dir / f"{name}.safetensors"
    atomic_save_safetensors(res.state_dict, out, {"vitfer": json.dumps(meta, sort_keys=True), "format": "pt"})
    record = {
        "file": out.name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "source": res.source,
        "source_info": src_info,
        "num_classes": meta["num_classes"],
        "vitfer_version": meta["vitfer_version"],
    }
    manifest = Path(args.manifest) if args.manifest else out_dir / "manifest.json"
    entry = update_manifest_entry(manifest, name, record)
    print(f"wrote {out} ({record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256'][:16]}...)")
    print(f"manifest {manifest}, entry {name}:")
    print(json.dumps(entry, indent=2, sort_keys=True))
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert pretrained weights into a self-describing vitfer checkpoint (DIR/NAME.safetensors)",
        description="Fetch (hub) or read (PATH: .safetensors, .pth/.bin, .npz) a checkpoint of MODEL, convert it "
        "to vitfer's layout, check it, and write DIR/MODEL.safetensors with vitfer metadata (vitfer.load reads it). "
        "The manifest (DIR/manifest.json unless --manifest) records the source and output hashes.",
    )
    p.add_argument("--model", required=True, help="registered model name (see `vitfer models`)")
    p.add_argument("--from", dest="source", default="hub",
                   help="'hub' (the model's default hub checkpoint, the default), 'hf-hub:REPO[@REV]', or a local file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--manifest", default=None, help="manifest to update (default: OUT/manifest.json)")
    p.set_defaults(func=_cmd_convert)


# -- manifest ---------------------------------------------------------------------------------
def _cmd_manifest(args: argparse.Namespace) -> int:
    from vitfer.weights.manifest import build_manifest, read_manifest, write_manifest

    path = Path(args.out)
    manifest = build_manifest(read_manifest(path))
    write_manifest(manifest, path)
    print(f"wrote {path}: {len(manifest['models'])} models "
          f"(families present {manifest['families_present']}, missing {manifest['families_missing']})")
    return 0


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="(re)generate the weights manifest from the registry")
    p.add_argument("--out", default="weights/manifest.json", help="manifest path (default: weights/manifest.json)")
    p.set_defaults(func=_cmd_manifest)


# -- finetune -----------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _size(text: str) -> Any:
    """--img-size / --patch-size: 'auto', 0 (the model's own) or a positive int."""
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 0 or a positive integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto', 0 or a positive integer, got {v}")
    return v or None


def _fold(text: str) -> Any:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number or 'all', got {text!r}") from None


_PARSERS: dict[str, argparse.ArgumentParser] = {}
_UNSET = object()


def _explicit_args(command: str, argv: Sequence[str]) -> set[str]:
    """The options of ``command`` that ``argv`` sets (not left at their defaults)."""
    parser = _PARSERS[command]
    ns = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    tail = list(argv)[list(argv).index(command) + 1:] if command in argv else list(argv)
    parser.parse_known_args(tail, ns)
    return {k for k, v in vars(ns).items() if v is not _UNSET}


class _Progress:
    """The CLI's view of a run (an engine :class:`~vitfer.engine.Callback`): a tqdm bar per epoch
    (batch loss and accuracy, images/s, time left) where stderr is a terminal; elsewhere the engine's one line an
    epoch is enough."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch_start(self, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=info["steps_per_epoch"], desc=f"epoch {info['epoch']}/{info['epochs']}",
                        unit="step", leave=False, dynamic_ncols=True)

    def on_step(self, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            rate = self.bar.format_dict.get("rate") or 0.0
            self.bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info.get('accuracy', 0.0):.2f}",
                                 img_s=f"{rate * info['images']:.0f}", refresh=False)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, result: dict[str, Any]) -> None:
        self.on_epoch_end({})


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from vitfer.engine import AMP_MODES, DATASET_KINDS, OPTIMIZERS, SPLIT_KINDS, FinetuneConfig
    from vitfer.engine.config import HEADS, RECIPES, SCHEDULES

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on FER data (default: the built-in synthetic faces)",
        description="Fine-tune a model. Writes a run folder (--out, default a new runs/<model>-<dataset>-<time>): "
        "config.json, metrics.jsonl (per epoch), model.safetensors (best epoch on the validation part) and "
        "metrics.json (test accuracy, UAR, macro-F1, per-class accuracy, confusion matrix).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help="named defaults, every one overridable: scratch (AdamW, 48 px; the default without "
                   "--pretrained), thesis (the study: SGD lr 0.003, batch 10, 50 epochs, ImageNet weights at the "
                   "model's size), thesis-resnet (frozen ResNet, 3-layer MLP head, Adam 5e-4), thesis-svm (frozen "
                   "features + linear SVM)")
    p.add_argument("--model", default=d.model, help="registered model name (`vitfer models`), or timm-style NAME.TAG")
    p.add_argument("--dataset", default=d.dataset, choices=DATASET_KINDS,
                   help="synthetic = the built-in drawn faces (no files needed); folder = any folder of class "
                   "sub-folders (photos of any size); fer2013 = the original fer2013.csv")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder (ckplus48/jaffe: default $VITFER_DATA_DIR; folder: required; fer2013: the "
                   "CSV or its folder)")
    p.add_argument("--labels", default=None, metavar="FILE.csv",
                   help="--dataset folder: a label file of path,label[,subject] rows (paths relative to it) instead of "
                   "class sub-folders")
    p.add_argument("--subject-pattern", default=None, metavar="REGEX",
                   help="--dataset folder: a regex whose group (or group 'subject') captures the subject from each "
                   "file name, for the subject splits")
    p.add_argument("--crop-faces", action="store_true",
                   help="--dataset folder: train on the largest face OpenCV's Haar cascade finds in each photo (images "
                   "without one are skipped and listed); needs the detect extra")
    p.add_argument("--split", default=d.split, choices=SPLIT_KINDS,
                   help="random (the study's), subject (no person on both sides), kfold, subject-kfold, official "
                   "(FER-2013's Usage column, or a folder with train/ and test/)")
    p.add_argument("--fold", type=_fold, default=d.fold,
                   help="test fold of the k-fold splits (0 .. n-folds - 1), or 'all': every fold in OUT/fold-K, "
                   "then OUT/summary.json and summary.md (finished folds are skipped on a rerun)")
    p.add_argument("--n-folds", type=int, default=d.n_folds, help="folds of the k-fold splits")
    p.add_argument("--val-size", type=float, default=d.val_size,
                   help="fraction of the training side held out to pick the best epoch (0: none, keep the last)")
    p.add_argument("--img-size", type=_size, default=d.img_size,
                   help="input size; auto = 48 from scratch, the model's own with --pretrained; 0 = the model's own")
    p.add_argument("--patch-size", type=_size, default=d.patch_size,
                   help="patch size of transformers (CrossViT: (p, 4p/3); the hybrid and dagger CrossViTs keep "
                   "theirs); auto = 6 from scratch, the model's own with --pretrained; 0 = the model's own")
    p.add_argument("--pretrained", default=None,
                   help="start from pretrained weights: 'hub' (the model's default weights), a checkpoint file, "
                   "or hf-hub:REPO[@REV]")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per optimiser step")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="optimiser (sgd: momentum 0.9)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="lr after the warm-up")
    p.add_argument("--freeze", default=d.freeze,
                   help="none, backbone (train the head only) or N (train the last N blocks / stages and the head)")
    p.add_argument("--head", default=d.head, choices=HEADS,
                   help="linear, mlp (hidden layers 512, 256) or svm (linear SVM on frozen features; needs "
                   "--freeze backbone and the svm extra)")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: 1e-3 for CNNs, 1e-4 for transformers)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="decoupled weight decay (none on biases, norms, tokens, position embeddings)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="linear warm-up steps (at most a fifth of the run) before the cosine decay")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="in [0, 1)")
    p.add_argument("--synthetic-n", type=int, default=d.synthetic_n, help="number of synthetic faces")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes the split, the initialisation and the augmentation")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default=d.amp, choices=AMP_MODES, help="mixed precision (bf16 autocast)")
    p.add_argument("--out", default=None, help="run folder (default: a new runs/<model>-<dataset>-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last finished epoch (its stored config; options "
                   "given must match it)")
    p.add_argument("--quiet", action="store_true", help="no progress output (the results are still printed)")
    p.set_defaults(func=_cmd_finetune)
    _PARSERS["finetune"] = p


def _format_metrics(test: dict[str, Any], what: str = "test") -> list[str]:
    lines = [f"{what} accuracy {100 * test['accuracy']:.1f}%  UAR {100 * test['uar']:.1f}%  "
             f"macro-F1 {100 * test['macro_f1']:.1f}%  ({test['n']} images); per class:"]
    support = test.get("support", {})
    for cls, acc in test["per_class_accuracy"].items():
        shown = "    -" if acc is None else f"{100 * acc:5.1f}%"
        lines.append(f"  {cls:<10} {shown}  ({support.get(cls, '?')} images)")
    return lines


def _cmd_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from vitfer.engine import FinetuneConfig, finetune, run_folds

    pretrained: Any = False
    if args.pretrained:
        pretrained = True if args.pretrained == "hub" else args.pretrained
    given = dict(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, labels=args.labels,
        subject_pattern=args.subject_pattern, crop_faces=args.crop_faces, split=args.split, fold=args.fold,
        n_folds=args.n_folds, val_size=args.val_size, img_size=args.img_size,
        patch_size=args.patch_size, pretrained=pretrained, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        label_smoothing=args.label_smoothing, synthetic_n=args.synthetic_n, seed=args.seed, device=args.device,
        amp=args.amp, out_dir=args.out, overwrite=args.overwrite, momentum=args.momentum, schedule=args.schedule,
        freeze=args.freeze, head=args.head,
    )
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    explicit = {{"out": "out_dir"}.get(k, k) for k in _explicit_args("finetune", args.argv)} & fields
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise ValueError(f"--resume {args.resume} and --out {args.out} name different folders")
        try:
            stored = json.loads((Path(args.resume) / "config.json").read_text())["config"]
        except FileNotFoundError:
            raise ValueError(f"--resume {args.resume}: no run there (no config.json)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--resume {args.resume}: its config.json is unreadable ({e})") from e
        values = {k: v for k, v in stored.items() if k in fields}
        values.update({k: given[k] for k in explicit if k in given})
        values["out_dir"] = args.resume
        cfg = FinetuneConfig(**values)
    else:
        if args.fold == "all":
            given["fold"] = 0
        recipe = args.recipe or ("scratch" if not pretrained else None)
        if recipe:  # the recipe's defaults, then what the command line sets
            cfg = FinetuneConfig.from_recipe(recipe, **{k: given[k] for k in explicit if k in given})
        else:
            cfg = FinetuneConfig(**given)
    if not args.quiet:
        _progress_to_stdout("vitfer.engine", "vitfer.data")
    callbacks = [_Progress()] if not args.quiet and sys.stderr.isatty() else []
    if args.fold == "all":
        if not cfg.out_dir:
            from vitfer.engine import default_out_dir

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ValueError("--fold all under torchrun needs --out (every process must name the same folder)")
            cfg = dataclasses.replace(cfg, out_dir=str(default_out_dir(cfg, label=cfg.split)))
        summary = run_folds(cfg, callbacks=callbacks)
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
        from vitfer.engine.cv import summary_markdown

        print(summary_markdown(summary))
        print(f"summary: {Path(cfg.out_dir) / 'summary.json'} and summary.md")
        return 0
    res = finetune(cfg, resume=bool(args.resume), callbacks=callbacks)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    for line in _format_metrics(res["test"]):
        print(line)
    print(f"run folder: {res['out_dir']}")
    print(f"checkpoint: {res['checkpoint']}  (vitfer predict {res['checkpoint']} IMAGE...)")
    return 0


# -- predict ------------------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify faces in photos, folders and videos with a fine-tuned checkpoint",
        description="One record per face (per image without --detect): file, frame, box, label, probabilities. "
        "A file that cannot be read gets an error record and a line on stderr; every other file is still "
        "classified, and the exit status is 1 at the end when any failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by vitfer finetune / vitfer.save")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders (recursive) or videos")
    p.add_argument("--detect", action="store_true",
                   help="find every face first (OpenCV's Haar cascade; pip install 'vitfer[detect]')")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the records as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the records as CSV (one column per class)")
    p.add_argument("--top", type=_positive_int, default=3, help="classes shown per face in the text output")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="faces per forward")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--annotate", default=None, metavar="DIR", help="write copies of the images with boxes and labels")
    p.add_argument("--every", type=_positive_int, default=10, help="videos: classify every N-th frame")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from vitfer.inference import Predictor, annotate

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision, detect=args.detect,
                          batch_size=args.batch_size, every=args.every)
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
        out = annotate(file, recs, args.annotate)
        _logger.info("annotated %s", out)
    return 1 if failed else 0


# -- export -------------------------------------------------------------------------------------
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX (dynamic batch), checked with onnxruntime",
        description="Write CKPT as an ONNX model (input 'images' (B, C, H, W), output 'logits', dynamic batch; "
        "class names, input size, mean and std in its metadata) and check it against the eager model with "
        "onnxruntime: logits within 1e-4 * max(1, max|ref|). Needs pip install 'vitfer[onnx]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by vitfer finetune / vitfer.save / vitfer convert")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--static-batch", type=_positive_int, default=None, metavar="N",
                   help="a fixed batch size instead of a dynamic one")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import vitfer
    from vitfer.inference.export import check_onnx, export_checkpoint

    kw: dict[str, Any] = {"opset": args.opset}
    if args.static_batch:
        kw.update(dynamic_batch=False, batch_size=args.static_batch)
    out = export_checkpoint(args.checkpoint, args.onnx, **kw)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if not args.no_check:
        res = check_onnx(vitfer.load(args.checkpoint), out)
        print(f"onnxruntime vs eager: max |diff| {res['max_abs_diff']:.2e} (bound {res['bound']:.2e}), "
              f"batch {res['batch']}")
    return 0


# -- evaluate -----------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from vitfer.engine import evaluate_checkpoint

    res = evaluate_checkpoint(
        args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, split=args.split, part=args.part,
        fold=args.fold, n_folds=args.n_folds, seed=args.seed, device=args.device, batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    where = f"{res['dataset']}, " + ("all images" if res["split"] == "all" else f"{res['part']} part of the {res['split']} split")
    if "fold" in res:
        where += f" (fold {res['fold']} of {res['n_folds']})"
    print(f"{res['model']} on {where}, seed {res['seed']}")
    if "cross_dataset" in res:
        c = res["cross_dataset"]
        print(f"shared expressions: {', '.join(c['shared'])}; left out: {', '.join(c['dataset_only']) or 'none'} "
              f"({c['images_left_out']} images)")
    for line in _format_metrics(res, "test" if res["part"] in ("test", "all") else res["part"]):
        print(line)
    print("confusion matrix (rows: true class, columns: predicted):")
    names = list(res["per_class_accuracy"])
    w = max(len(str(n)) for n in names)
    for name, row in zip(names, res["confusion"]):
        print(f"  {name:<{w}} " + " ".join(f"{v:4d}" for v in row))
    return 0


# -- entry point ------------------------------------------------------------------------------
_ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models, _add_convert, _add_manifest, _add_finetune, _add_predict, _add_evaluate, _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitfer", description="Vision Transformers for facial expression recognition")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _ADDERS:
        add(sub)
    return parser


class _StdHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` / ``sys.stderr`` is at the time of the
    record (tests and embedding programs swap them between calls)."""

    def __init__(self, which: str) -> None:
        super().__init__()
        self._which = which

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


_HANDLERS: dict[str, _StdHandler] = {}
_PROGRESS_LOGGERS: list[str] = []


def _handler(which: str, fmt: str, level: int) -> _StdHandler:
    """One handler per stream for the whole process, so that calling :func:`main` again does not
    print every line twice."""
    h = _HANDLERS.get(which)
    if h is None:
        h = _HANDLERS[which] = _StdHandler(which)
        if which == "stdout":
            h.addFilter(lambda r: r.levelno < logging.WARNING)
    h.setFormatter(logging.Formatter(fmt))
    h.setLevel(level)
    return h


def _setup_logging(verbose: int) -> None:
    """vitfer's warnings (with -v also its info, -vv debug lines) on stderr, one line each."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    fmt = "%(levelname)s %(name)s: %(message)s" if verbose else "warning: %(message)s"
    root = logging.getLogger("vitfer")
    h = _handler("stderr", fmt, level)
    if h not in root.handlers:
        root.addHandler(h)
    root.setLevel(min(level, logging.INFO))
    out = _HANDLERS.get("stdout")
    while _PROGRESS_LOGGERS:
        logging.getLogger(_PROGRESS_LOGGERS.pop()).removeHandler(out)


def _progress_to_stdout(*loggers: str) -> None:
    """Show the INFO lines of these loggers (a command's progress) on stdout, as bare messages."""
    h = _handler("stdout", "%(message)s", logging.INFO)
    for name in loggers:
        logging.getLogger(name).addHandler(h)
        _PROGRESS_LOGGERS.append(name)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one line, without the source location (``warning: <message>``)."""
    print(f"warning: {message}", file=sys.stderr)


def _vitfer_errors() -> tuple[type[BaseException], ...]:
    from vitfer.engine import TrainingError
    from vitfer.weights.errors import CheckpointError

    return (CheckpointError, TrainingError, KeyError, TypeError, ValueError, OSError, ImportError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``vitfer`` command; returns the exit status: 0 success, 2 a bad argument or any
    error vitfer reports (one line on stderr, no traceback), 1 a command that partly failed
    (``predict`` with an unreadable image)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _setup_logging(args.verbose)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except _vitfer_errors() as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            print(f"vitfer {args.command}: error: {msg}", file=sys.stderr)
            if args.verbose > 1:
                import traceback

                traceback.print_exc()
            return 2
        except KeyboardInterrupt:
            print(f"vitfer {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
