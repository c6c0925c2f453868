"""The experiment engine: fine-tuning runs, their folders and state, evaluation, cross-validation.

    from vitfer.engine import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(model="convit_tiny", dataset="ckplus48", data_dir="..."))

Modules, in import order: ``config`` (the run's fields, checks, recipes and :func:`resolve_config`),
``model`` (building the model of a run), ``metrics`` (accuracy, UAR, macro-F1, confusion), ``runs``
(run folders, their status and resume state), ``distributed`` (torchrun), ``ema``, ``mixing``,
``loop`` (the training loop of a prepared :class:`~vitfer.engine.loop.RunContext`), ``svm`` (the
SVM head), ``pretrain`` (the pretraining stage's config), ``run`` (:func:`finetune`: one run from
start to end), ``cv`` (every fold of a k-fold split), ``study``, ``evaluation`` (a checkpoint on
its run's data or another). The run's data come from :mod:`vitfer.data.runs`, below the engine.
The engine logs through ``logging``; only the CLI prints.
"""
from .config import (
    AMP_MODES,
    AUTO,
    DATASET_KINDS,
    OPTIMIZERS,
    RUN_FILES,
    SPLIT_KINDS,
    FinetuneConfig,
    RunFolderError,
    TrainingError,
    config_from_dict,
    default_lr,
    patch_override,
    resolve_config,
)
from .cv import run_folds, summarize_folds, summary_markdown
from .evaluation import evaluate_checkpoint
from .loop import Callback, EpochBatchSampler, RunContext
from .run import build_dataset, finetune, run_or_reuse
from .metrics import classification_metrics, evaluate
from .model import build_model, param_groups
from .runs import (
    STATE_FILE, config_differences, default_out_dir, load_train_state, prepare_run_folder, run_status, save_train_state,
    versions,
)

__all__ = [
    "evaluate_checkpoint", "STATE_FILE", "Callback", "EpochBatchSampler", "config_differences", "load_train_state", "run_folds",
    "save_train_state", "summarize_folds", "summary_markdown", "AMP_MODES", "AUTO", "DATASET_KINDS", "OPTIMIZERS", "RUN_FILES", "SPLIT_KINDS", "FinetuneConfig",
    "RunFolderError", "TrainingError", "build_dataset", "build_model", "classification_metrics", "default_lr",
    "default_out_dir", "evaluate", "finetune", "param_groups", "patch_override", "prepare_run_folder", "versions",
    "RunContext", "config_from_dict", "resolve_config", "run_or_reuse", "run_status",
]
