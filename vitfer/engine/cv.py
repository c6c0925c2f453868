"""Cross-validation: every fold of a k-fold split as its own resumable run, and their summary.

    from vitfer.engine import FinetuneConfig, run_folds
    summary = run_folds(FinetuneConfig(dataset="jaffe", split="subject-kfold", n_folds=10, out_dir="runs/jaffe-loso"))

Fold ``k`` runs in ``OUT/fold-K`` (an ordinary run folder). A rerun of the same command skips the
finished folds, resumes an interrupted one from its last epoch and starts the others; a fold folder
holding a run of another config is an error unless ``overwrite``. ``OUT/summary.json`` and
``OUT/summary.md`` give the accuracy, UAR and macro-F1 of every fold, their mean and standard
deviation, and the confusion matrix pooled over the folds (every image is tested exactly once).
On JAFFE, ``subject-kfold`` with 10 folds holds out one woman per fold: leave-one-subject-out.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

from .config import FinetuneConfig
from .loop import Callback
from .metrics import classification_metrics
from .run import run_or_reuse

__all__ = ["fold_dir", "run_folds", "summarize_folds"]

_logger = logging.getLogger(__name__)


def fold_dir(out: Path, fold: int) -> Path:
    return Path(out) / f"fold-{fold}"


def run_folds(cfg: FinetuneConfig, *, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run every fold of ``cfg.split`` (``kfold`` or ``subject-kfold``, ``cfg.n_folds`` folds) in
    ``cfg.out_dir/fold-K``; returns (and writes) the summary (see the module docstring)."""
    if cfg.split not in ("kfold", "subject-kfold"):
        raise ValueError(f"running every fold needs split 'kfold' or 'subject-kfold', got {cfg.split!r}")
    if not cfg.out_dir:
        raise ValueError("running every fold needs an output folder (out_dir)")
    out = Path(cfg.out_dir).expanduser()
    if cfg.overwrite:  # the folds start afresh (each fold folder is replaced when it runs); so does the summary
        for name in ("summary.json", "summary.md"):
            if (out / name).exists():
                (out / name).unlink()
    results = []
    for k in range(cfg.n_folds):
        fcfg = replace(cfg, fold=k, out_dir=str(fold_dir(out, k)))
        _logger.info("fold %d (folds 0-%d): %s", k, cfg.n_folds - 1, fcfg.out_dir)
        results.append(run_or_reuse(fcfg, callbacks=callbacks, overwrite=cfg.overwrite))
    summary = summarize_folds(results, cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes
        write_summary(out, summary)
    return summary


def summarize_folds(results: Sequence[dict[str, Any]], cfg: FinetuneConfig | None = None) -> dict[str, Any]:
    """Per-fold metrics, their mean and (sample) standard deviation, and the pooled confusion."""
    if not results:
        raise ValueError("no fold results to summarise")
    classes = results[0]["classes"]
    folds = []
    pooled = [[0] * len(classes) for _ in classes]
    for k, r in enumerate(results):
        t = r["test"]
        folds.append({"fold": k, "accuracy": t["accuracy"], "uar": t["uar"], "macro_f1": t["macro_f1"], "n": t["n"],
                      "test_subjects": r.get("test_subjects", []), "best_epoch": r.get("best_epoch"),
                      "train_time_s": r.get("train_time_s"), "out_dir": r.get("out_dir")})
        for i, row in enumerate(t["confusion"]):
            for j, v in enumerate(row):
                pooled[i][j] += v

    def stats(key: str) -> dict[str, float]:
        vals = [f[key] for f in folds]
        return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}

    return {
        "config": asdict(cfg) if cfg is not None else results[0].get("config"),
        "model": results[0].get("model"),
        "classes": classes,
        "n_folds": len(folds),
        "folds": folds,
        "accuracy": stats("accuracy"),
        "uar": stats("uar"),
        "macro_f1": stats("macro_f1"),
        "pooled": classification_metrics(pooled, classes),
        "train_time_s": sum(f["train_time_s"] or 0.0 for f in folds),
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table (one row a fold, then mean +- std and the pooled matrix)."""
    cfg = summary.get("config") or {}
    lines = [
        f"# {summary['model']} on {cfg.get('dataset', '?')}: {cfg.get('split', '?')}, {summary['n_folds']} folds",
        "",
        "| fold | test subjects | images | accuracy % | UAR % | macro-F1 % | best epoch |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for f in summary["folds"]:
        subj = ", ".join(f["test_subjects"][:6]) + (f" (+{len(f['test_subjects']) - 6})" if len(f["test_subjects"]) > 6 else "")
        lines.append(f"| {f['fold']} | {subj or '-'} | {f['n']} | {100 * f['accuracy']:.1f} | {100 * f['uar']:.1f} | "
                     f"{100 * f['macro_f1']:.1f} | {f['best_epoch']} |")
    a, u, m = summary["accuracy"], summary["uar"], summary["macro_f1"]
    lines += [
        f"| **mean +- std** | | {sum(f['n'] for f in summary['folds'])} | **{100 * a['mean']:.1f} +- {100 * a['std']:.1f}** | "
        f"{100 * u['mean']:.1f} +- {100 * u['std']:.1f} | {100 * m['mean']:.1f} +- {100 * m['std']:.1f} | |",
        "",
        f"Pooled over the folds: accuracy {100 * summary['pooled']['accuracy']:.1f}%, UAR "
        f"{100 * summary['pooled']['uar']:.1f}%; training time {summary['train_time_s']:.0f} s in all.",
        "",
        "Pooled confusion matrix (rows: true class, columns: predicted):",
        "",
        "| | " + " | ".join(summary["classes"]) + " |",
        "|---|" + "---:|" * len(summary["classes"]),
    ]
    for name, row in zip(summary["classes"], summary["pooled"]["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from vitfer.weights.io import atomic_write_text

    atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(Path(out) / "summary.md", summary_markdown(summary))
