"""The study's tables: its published numbers (Tables 4.1 and 4.2), which vitfer models stand for
its models, and the formatting of run results as its tables (markdown and CSV).

Plain data and formatting, no torch: :mod:`vitfer.engine.study` writes the tables of a study it
runs, and :mod:`vitfer.analysis.report` the comparison of run folders, both through here.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Optional, Sequence

__all__ = ["QUICK_MODELS", "STUDY_MODELS", "STUDY_RESULTS", "format_duration", "run_table_row", "tables_csv",
           "tables_markdown", "train_time"]

#: The study's models in its table order: (its name, the vitfer model).
STUDY_MODELS: tuple[tuple[str, str], ...] = (
    ("resnet50d", "resnet50d"),
    ("vgg16", "vgg16"),
    ("vgg19", "vgg19"),
    ("convit_base", "convit_base"),
    ("crossvit_base", "crossvit_base_240"),
    ("vit_base_resnet50", "vit_base_resnet50_384"),
    ("vit_base_patch16", "vit_base_patch16_224"),
)

#: The study's own numbers (Tables 4.1 and 4.2): accuracy %, training time, parameters (M).
STUDY_RESULTS: dict[str, dict[str, tuple[float, str, float]]] = {
    "ckplus48": {
        "resnet50d": (100.0, "6m", 25.6), "vgg16": (100.0, "8m55s", 138.36), "vgg19": (100.0, "14m13s", 143.67),
        "convit_base": (100.0, "17m23s", 86.54), "crossvit_base": (99.5, "32m49s", 105.03),
        "vit_base_resnet50": (98.51, "31m42s", 98.95), "vit_base_patch16": (92.04, "13m56s", 86.54),
    },
    "jaffe": {
        "resnet50d": (92.86, "2m4s", 25.6), "vgg16": (92.86, "3m37s", 138.36), "vgg19": (94.29, "2m", 143.67),
        "convit_base": (91.42, "3m22s", 86.54), "crossvit_base": (90.0, "3m28s", 105.03),
        "vit_base_resnet50": (95.71, "6m15s", 98.95), "vit_base_patch16": (97.14, "4m45s", 86.54),
    },
}
_TABLE_NAMES = {"ckplus48": "Table 4.1: CK+48", "jaffe": "Table 4.2: JAFFE"}
_DATASET_NAMES = {"ckplus48": "CK+48", "jaffe": "JAFFE"}

_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
_VGG13 = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
#: ``quick``: the small member of each study model's family (vitfer model, overrides, label).
#: VGG has no small registered variant: vgg16's and vgg19's convolution stacks become VGG-11's and
#: VGG-13's (the shallower members of the family) and their 4096-wide fc1 512 wide. The hybrid
#: keeps its ResNetV2 stem + stages and ViT blocks, one bottleneck a stage, ViT-Ti width.
QUICK_MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "resnet50d": ("resnet18d", {}, "resnet18d"),
    "vgg16": ("vgg16", {"layers": _VGG11, "mlp_ratio": 0.125}, "vgg11 (fc 512)"),
    "vgg19": ("vgg19", {"layers": _VGG13, "mlp_ratio": 0.125}, "vgg13 (fc 512)"),
    "convit_base": ("convit_tiny", {}, "convit_tiny"),
    "crossvit_base": ("crossvit_tiny_240", {}, "crossvit_tiny_240"),
    "vit_base_resnet50": ("vit_base_r50_s16_224", {"backbone_layers": (1, 1, 1), "embed_dim": 192, "depth": 12,
                                                   "num_heads": 3}, "vit_r50 hybrid (tiny: 1-1-1 stages, ViT-Ti)"),
    "vit_base_patch16": ("vit_tiny_patch16_224", {}, "vit_tiny_patch16"),
}


def format_duration(seconds: Optional[float]) -> str:
    """``6m``, ``8m55s``, ``2h03m``, ``41s``: the study's way of writing training times."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s}s" if s else f"{m}m"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def train_time(res: dict[str, Any]) -> Optional[float]:
    t = res.get("train_time_s")
    return float(t) if t is not None else (float(res["seconds"]) if res.get("seconds") is not None else None)


def _study_name_of(model: str, overrides: Optional[dict[str, Any]]) -> tuple[str, str]:
    """The study model a run stands for and the table's label for it (``("", model)`` if none)."""
    for study, name in STUDY_MODELS:
        if name == model and not overrides:
            return study, study
    for study, (name, ov, label) in QUICK_MODELS.items():
        if name == model and json.dumps(ov or {}, sort_keys=True) == json.dumps(overrides or {}, sort_keys=True):
            return study, label
    return "", model


def run_table_row(metrics: dict[str, Any], run_dir: Optional[str] = None) -> dict[str, Any]:
    """A table row (:func:`tables_markdown`) for one finished run's ``metrics.json``; the study's
    numbers beside it where the run's model stands for one of the study's."""
    cfg = metrics.get("config") or {}
    overrides = cfg.get("model_overrides") or None
    if overrides:  # JSON turned tuples into lists; compare as JSON
        overrides = json.loads(json.dumps(overrides))
    model = cfg.get("model") or metrics.get("model", "?")
    study, label = _study_name_of(model, overrides)
    dataset = cfg.get("dataset", "?")
    ref = STUDY_RESULTS.get(dataset, {}).get(study)
    return {
        "dataset": dataset, "no": 1, "study_model": study or None, "model": label, "vitfer_model": model,
        "model_overrides": overrides, "study_accuracy": ref[0] if ref else None, "study_time": ref[1] if ref else None,
        "study_params_m": ref[2] if ref else None, "accuracy": 100 * metrics["test_accuracy"],
        "train_time_s": train_time(metrics), "params_m": metrics.get("params_m"), "run_dir": run_dir,
        "split": cfg.get("split"), "subject_accuracy_mean": None, "subject_accuracy_std": None, "subject_folds": None,
        "subject_train_time_s": None, "subject_dir": None,
    }


def _num(v: Optional[float], fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def tables_markdown(rows: Sequence[dict[str, Any]], meta: Optional[dict[str, Any]] = None) -> str:
    """The rows as the study's tables, one a dataset (see :func:`study_table_rows`)."""
    meta = meta or {}
    lines = ["# The study's Tables 4.1 and 4.2, rerun", ""]
    if meta.get("quick"):
        lines += ["> **Not the study's setting** (`--quick`): small models of the same families trained from "
                  f"scratch (no pretrained weights) with the `{meta.get('recipe')}` recipe at 48 px for "
                  f"{meta.get('epochs')} epochs"
                  + (f" (the transformers, which learn from a teacher, {meta['distill_epochs']})"
                     if meta.get("distill_epochs") else "") + ", so that a 2-core CPU runs the grid in minutes. The study fine-tuned "
                  "ImageNet models at 224-384 px for 50 epochs; compare its numbers with a full `vitfer study`.", ""]
    if meta:
        lines += [f"Recipe `{meta.get('recipe')}`, main split `{meta.get('split')}` (the study's: one random split, "
                  f"200 / 70 test images), seed {meta.get('seed')}, trained on {meta.get('device')}. "
                  + (f"Subject-independent: {meta['subject_folds']} subject folds (no subject in both training and "
                     "test), accuracy mean +- std over the folds; the study did not run this protocol."
                     if meta.get("subject_folds") else "Subject-independent protocol: not run (`--subject-folds 0`; `--quick` leaves it out to keep its time, "
                     "`--subject-folds 3` adds it)."),
                  ""]
    for dataset, t in (meta.get("teachers") or {}).items():
        lines += [f"Transformer rows on {_DATASET_NAMES.get(dataset, dataset)}: trained from scratch with a teacher "
                  f"(DeiT's distillation: a distillation token and head learn the teacher's labels), a {t['model']} "
                  f"trained first on the same training images without seeing the validation or test images: its "
                  f"test accuracy {t['accuracy']:.2f}%, trained in {format_duration(t.get('train_time_s'))}.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        title = _TABLE_NAMES.get(dataset, dataset)
        lines += [f"## {title}", "",
                  "| No. | Model | Accuracy, % (study) | Training time (study) | Params (M) (study) | Model (ours) "
                  "| Accuracy, % | Training time | Params (M) | Subject-independent accuracy, % (mean +- std) "
                  "| Training time (all folds) |",
                  "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r["dataset"] != dataset:
                continue
            subj = "-" if r["subject_accuracy_mean"] is None else (
                f"{r['subject_accuracy_mean']:.2f} +- {r['subject_accuracy_std']:.2f} ({r['subject_folds']} folds)")
            lines.append(
                f"| {r['no']} | {r['study_model'] or '-'} | {_num(r['study_accuracy'], '{:g}')} | {r['study_time'] or '-'} "
                f"| {_num(r['study_params_m'], '{:g}')} | {r['model']} | {_num(r['accuracy'])} "
                f"| {format_duration(r['train_time_s'])} | {_num(r['params_m'])} | {subj} "
                f"| {format_duration(r['subject_train_time_s'])} |")
        lines.append("")
    if any(r.get("unfinished") for r in rows):
        lines.append("`-` in our columns: a cell not finished yet (the tables were written with `--tables-only`); "
                     "run the same `vitfer study` command to train it.")
        lines.append("")
    device = (meta or {}).get("device")
    lines.append("Training time: the training epochs of the run (the optimiser steps: validation and test excluded), "
                 f"as measured on {device or 'the machine that ran it'}.")
    return "\n".join(lines) + "\n"


_CSV_FIELDS = ("dataset", "no", "study_model", "study_accuracy", "study_time", "study_params_m", "model",
               "vitfer_model", "model_overrides", "accuracy", "train_time_s", "params_m", "subject_accuracy_mean",
               "subject_accuracy_std", "subject_folds", "subject_train_time_s", "run_dir", "subject_dir")


def _csv_value(v: Any) -> Any:
    """A CSV cell: dicts as JSON, floats to 4 decimals (27.5, not 27.500000000000004)."""
    if isinstance(v, dict):
        return json.dumps(v)
    if isinstance(v, float):
        return round(v, 4)
    return v


def tables_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in _CSV_FIELDS})
    return buf.getvalue()

