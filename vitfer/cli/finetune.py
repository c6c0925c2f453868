"""``vitfer finetune``: train or fine-tune a model (one run, every fold, resume)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from vitfer.cli._common import PARSERS, explicit_args, fold_arg, format_metrics, positive_int, size_arg
from vitfer.cli._logging import progress_to_stdout


class Progress:
    """The CLI's view of a run (an engine :class:`~vitfer.engine.Callback`): where stderr is a
    terminal, a tqdm bar per epoch (batch loss and accuracy, images/s, time left); elsewhere (a log
    file, CI) a line on stdout every ``every_s`` seconds within an epoch, since an epoch of a long
    run can take minutes; the engine's line an epoch comes on top. Remembers the run folder, so an
    interrupted run can say how to resume it."""

    def __init__(self, tty: bool, every_s: float = 30.0) -> None:
        self.tty, self.every_s = tty, every_s
        self.bar = None
        self.out_dir: Optional[str] = None
        self._t0 = self._last = 0.0
        self._seen = 0

    def on_train_start(self, info: dict[str, Any]) -> None:
        self.out_dir = info.get("out_dir")

    def on_epoch_start(self, info: dict[str, Any]) -> None:
        self._t0 = self._last = time.monotonic()
        self._seen = 0
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=info["steps_per_epoch"], desc=f"epoch {info['epoch']}/{info['epochs']}",
                            unit="step", leave=False, dynamic_ncols=True)

    def on_step(self, info: dict[str, Any]) -> None:
        self._seen += info["images"]
        if self.bar is not None:
            self.bar.update(1)
            rate = self.bar.format_dict.get("rate") or 0.0
            self.bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info.get('accuracy', 0.0):.2f}",
                                 img_s=f"{rate * info['images']:.0f}", refresh=False)
            return
        now = time.monotonic()
        if not self.tty and now - self._last >= self.every_s:
            self._last = now
            done = (info["step"] - 1) % info["steps_per_epoch"] + 1
            print(f"  epoch {info['epoch']}/{info['epochs']} step {done}/{info['steps_per_epoch']}: loss "
                  f"{info['loss']:.4f} acc {info.get('accuracy', 0.0):.3f} ({self._seen / max(now - self._t0, 1e-9):.0f} "
                  f"img/s)", flush=True)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, result: dict[str, Any]) -> None:
        self.on_epoch_end({})


def add_finetune(sub: argparse._SubParsersAction) -> None:
    from vitfer.engine import AMP_MODES, DATASET_KINDS, OPTIMIZERS, SPLIT_KINDS, FinetuneConfig
    from vitfer.engine.config import DISTILL_TYPES, HEADS, RECIPES, SCHEDULES

    d = FinetuneConfig.from_recipe("scratch")  # what `vitfer finetune` with no option runs
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on FER data (default: the built-in synthetic faces)",
        description="Fine-tune a model. Writes a run folder (--out, default a new runs/<model>-<dataset>-<time>): "
        "config.json (the run's settings, resolved), metrics.jsonl (per epoch), model.safetensors (best epoch on the "
        "validation part) and metrics.json (test accuracy, UAR, macro-F1, per-class accuracy, confusion matrix, the "
        "split). The defaults shown are the values the default run uses (the scratch recipe on the synthetic faces); "
        "another --dataset or --recipe brings its own (see --recipe), and every option given overrides them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help="named defaults, every one overridable; they replace the defaults shown here. scratch "
                   "(the default without --pretrained): vit_tiny_r18d_48 at 48 px, AdamW lr 1e-3, batch 64, 100 "
                   "warm-up steps, bf16 where fast; on the synthetic faces 10,000 of them and 7 epochs; on other "
                   "data 100 epochs, batch 32, label smoothing 0.1, mixup 0.2, CutMix 1.0, drop-path 0.1; on JAFFE "
                   "the same for 60 epochs at lr 3e-4, on face crops, after pretraining on CK+48. distill (what "
                   "scratch means for a plain ViT, ConViT or CrossViT, which from scratch learn only from a teacher): "
                   "a resnet18d teacher trained first on the run's training part, then the transformer with a "
                   "distillation token on the teacher's soft predictions of the same mixup / CutMix faces and its "
                   "patch tokens on the teacher's feature map, see --distill. thesis (the study: SGD lr 0.003, batch "
                   "10, 50 epochs, ImageNet weights at the "
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
    p.add_argument("--crop-faces", action=argparse.BooleanOptionalAction, default=d.crop_faces,
                   help="--dataset folder or jaffe: train on the largest face OpenCV's Haar cascade finds in each photo "
                   "(images without one are skipped and listed); needs the detect extra. The scratch recipe crops "
                   "JAFFE's faces (--no-crop-faces keeps the whole photo)")
    p.add_argument("--face-margin", type=float, default=d.face_margin,
                   help="with --crop-faces: margin around each detected face, as a fraction of its size (the "
                   "scratch recipe uses 0.0 on JAFFE); recorded in the checkpoint so vitfer predict --detect crops alike")
    p.add_argument("--split", default=d.split, choices=SPLIT_KINDS,
                   help="random (the study's), subject (no person on both sides), kfold, subject-kfold, official "
                   "(FER-2013's Usage column, or a folder with train/ and test/)")
    p.add_argument("--fold", type=fold_arg, default=d.fold,
                   help="test fold of the k-fold splits (0 .. n-folds - 1), or 'all': every fold in OUT/fold-K, "
                   "then OUT/summary.json and summary.md (finished folds are skipped on a rerun)")
    p.add_argument("--n-folds", type=int, default=d.n_folds, help="folds of the k-fold splits")
    p.add_argument("--val-size", type=float, default=d.val_size,
                   help="fraction of the training side held out to pick the best epoch (0: none, keep the last)")
    p.add_argument("--img-size", type=size_arg, default=d.img_size,
                   help="input size; auto = 48 from scratch, the model's own with --pretrained; 0 = the model's own")
    p.add_argument("--patch-size", type=size_arg, default=d.patch_size,
                   help="patch size of transformers (CrossViT: (p, 4p/3); the hybrid and dagger CrossViTs keep "
                   "theirs); auto = 6 from scratch, the model's own with --pretrained; 0 = the model's own")
    p.add_argument("--pretrained", default=None,
                   help="start from pretrained weights: 'hub' (the model's default weights), a checkpoint file, "
                   "or hf-hub:REPO[@REV]")
    p.add_argument("--pretrain", default=d.pretrain, metavar="DATASET",
                   help="first train the same model with the same recipe on DATASET (synthetic, ckplus48, jaffe, "
                   "fer2013; found beside --data-dir or in $VITFER_DATA_DIR), in the run folder's pretrain-DATASET, "
                   "then start from its weights. The stage takes the recipe's values for DATASET and the training "
                   "options given here (--epochs, --batch-size, --lr, ...); it never pretrains itself and never sees "
                   "this run's validation or test images. The scratch recipe pretrains JAFFE runs on CK+48; 'none' "
                   "turns it off")
    p.add_argument("--distill", nargs="?", const="auto", default=d.distill, metavar="TEACHER",
                   help="learn from a teacher's predictions as well as the labels (DeiT): TEACHER is a vitfer "
                   "checkpoint or run folder with the same classes; without TEACHER one is trained first (--teacher, "
                   "scratch recipe) on exactly this run's training part, in the run folder's teacher/ (resumable, "
                   "reused while its config holds; it never sees the validation or test images). ViT, ConViT and "
                   "CrossViT students get a distillation token and head (averaged with the class head at evaluation). "
                   "'none' turns it off")
    p.add_argument("--distill-type", default=d.distill_type, choices=DISTILL_TYPES,
                   help="hard: the teacher's argmax as labels (DeiT); soft: its distribution at --distill-tau")
    p.add_argument("--distill-alpha", type=float, default=d.distill_alpha,
                   help="weight of the teacher's term in the loss (the labels' is 1 - alpha)")
    p.add_argument("--distill-tau", type=float, default=d.distill_tau, help="soft distillation's temperature")
    p.add_argument("--distill-features", type=float, default=d.distill_features, metavar="WEIGHT",
                   help="weight of distillation's feature term: the student's patch tokens after one block regress "
                   "the teacher's feature map of the closest grid, through a linear map trained alongside (FitNets "
                   "hints as ViTKD uses them; 0 = off)")
    p.add_argument("--teacher", default=d.teacher, metavar="MODEL",
                   help="--distill without TEACHER: the teacher's model, trained with the scratch recipe")
    p.add_argument("--teacher-epochs", type=positive_int, default=d.teacher_epochs, metavar="N",
                   help="--distill without TEACHER: the teacher's epochs (default: the scratch recipe's)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="training epochs (with --resume: a larger number extends the run, a finished one too)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per optimiser step")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="optimiser (sgd: momentum 0.9)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="lr after the warm-up")
    p.add_argument("--freeze", default=d.freeze,
                   help="none, backbone (train the head only) or N (train the last N blocks / stages and the head)")
    p.add_argument("--head", default=d.head, choices=HEADS,
                   help="linear, mlp (hidden layers 512, 256) or svm (linear SVM on frozen features; needs "
                   "--freeze backbone and the svm extra)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="peak lr (without a recipe and without --lr: 1e-3 for CNNs, 1e-4 for transformers)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="decoupled weight decay (none on biases, norms, tokens, position embeddings)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="linear warm-up steps (at most a fifth of the run) before the cosine decay")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="in [0, 1)")
    p.add_argument("--mixup", type=float, default=d.mixup, help="mixup's Beta alpha (0 = off), e.g. 0.2")
    p.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix's Beta alpha (0 = off), e.g. 1.0")
    p.add_argument("--drop-path-rate", type=float, default=d.drop_path_rate,
                   help="stochastic depth of the transformer blocks, in [0, 1)")
    p.add_argument("--ema", type=float, default=d.ema, metavar="DECAY",
                   help="keep a moving average of the weights with this decay (e.g. 0.998) and validate, save and "
                   "test it (0 = off)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward instead of keeping them: the same "
                   "numbers for much less memory (measured on vit_base_patch16_224, batch 8: 1071 MiB of kept "
                   "activations down to 69 MiB), at the cost of a second forward per block")
    p.add_argument("--synthetic-n", type=int, default=d.synthetic_n, help="number of synthetic faces")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes the split, the initialisation and the augmentation")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default=d.amp, choices=AMP_MODES, help="mixed precision (bf16 autocast)")
    p.add_argument("--out", default=None, help="run folder (default: a new runs/<model>-<dataset>-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last finished epoch (its stored config; options "
                   "given must match it)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's, one a core). On a machine other jobs keep busy, "
                   "fewer threads than cores train much faster: measured at load 6 on 2 cores, 2 threads gave 5 "
                   "img/s, 1 thread 45-52 (and OMP_WAIT_POLICY=PASSIVE in the environment 23-25 with 2)")
    p.add_argument("--quiet", action="store_true", help="no progress output (the results are still printed)")
    p.set_defaults(func=_cmd_finetune)
    PARSERS["finetune"] = p


def config_from_args(args: argparse.Namespace) -> "Any":
    """The :class:`~vitfer.engine.FinetuneConfig` that ``vitfer finetune`` runs for ``args``: the
    recipe's values (``scratch`` without ``--pretrained``), then the options the command line sets
    (the others keep the recipe's values, or FinetuneConfig's without a recipe); with ``--resume``
    the stored run's resolved config, then the options given (a larger ``--epochs`` extends it)."""
    import dataclasses

    from vitfer.engine import FinetuneConfig, config_from_dict

    pretrained: Any = False
    if args.pretrained:
        pretrained = True if args.pretrained == "hub" else args.pretrained
    given = {k: getattr(args, k) for k in _CONFIG_OPTIONS}
    given.update(data_dir=args.data_dir, out_dir=args.out, pretrained=pretrained,
                 pretrain=None if args.pretrain in (None, "none") else args.pretrain,
                 distill=None if args.distill in (None, "none") else args.distill)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    explicit = {{"out": "out_dir"}.get(k, k) for k in explicit_args("finetune", args.argv)} & fields
    chosen = {k: given[k] for k in explicit if k in given}
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise ValueError(f"--resume {args.resume} and --out {args.out} name different folders")
        try:
            stored = json.loads((Path(args.resume) / "config.json").read_text())["config"]
        except FileNotFoundError:
            raise ValueError(f"--resume {args.resume}: no run there (no config.json)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--resume {args.resume}: its config.json is unreadable ({e})") from e
        return dataclasses.replace(config_from_dict({**stored, **chosen}), out_dir=args.resume)
    if args.fold == "all":
        chosen["fold"] = 0
    recipe = args.recipe or ("scratch" if not pretrained else None)
    if recipe:  # the recipe's defaults, then what the command line sets
        return FinetuneConfig.from_recipe(recipe, **chosen)
    return FinetuneConfig(**chosen)


#: ``vitfer finetune`` options that are config fields of the same name.
_CONFIG_OPTIONS = (
    "model", "dataset", "labels", "subject_pattern", "crop_faces", "split", "fold", "n_folds", "val_size", "img_size",
    "patch_size", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "warmup_steps", "label_smoothing", "mixup",
    "cutmix", "drop_path_rate", "ema", "synthetic_n", "seed", "device", "amp", "overwrite", "momentum", "schedule",
    "freeze", "head", "face_margin", "grad_checkpointing", "distill_type", "distill_alpha", "distill_tau",
    "distill_features", "teacher",
    "teacher_epochs",
)


def _cmd_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    if not cfg.out_dir and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # chosen here, so that an interrupted run can name the folder to resume
        from vitfer.engine import default_out_dir

        cfg = dataclasses.replace(cfg, out_dir=str(default_out_dir(cfg, label=cfg.split if args.fold == "all" else "")))
    if not args.quiet:
        progress_to_stdout("vitfer.engine", "vitfer.data")
    progress = Progress(tty=sys.stderr.isatty())
    callbacks = [progress] if not args.quiet else []
    try:
        return _run(args, cfg, callbacks)
    except KeyboardInterrupt:
        from vitfer.engine import STATE_FILE

        where = cfg.out_dir
        if where and (Path(where) / "config.json").is_file():
            kept = "every finished epoch" if (Path(where) / STATE_FILE).is_file() else "its settings"
            print(f"vitfer finetune: interrupted; {where} keeps {kept} (and any pretraining stage its own epochs): "
                  f"continue with vitfer finetune --resume {where}", file=sys.stderr)
        else:
            print("vitfer finetune: interrupted before the run folder was written (nothing to resume)", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, cfg: Any, callbacks: list) -> int:
    import dataclasses

    from vitfer.engine import finetune, run_folds

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
    for line in format_metrics(res["test"]):
        print(line)
    print(f"run folder: {res['out_dir']}")
    print(f"checkpoint: {res['checkpoint']}  (vitfer predict {res['checkpoint']} IMAGE...)")
    return 0
