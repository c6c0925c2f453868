"""The experiment engine: fine-tuning runs, their folders and state, evaluation, cross-validation.

    from vitfer.engine import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(model="convit_tiny", dataset="ckplus48", data_dir="..."))

Modules: ``config`` (the run's fields, checks and recipes), ``model`` (building the model of a
run), ``metrics`` (accuracy, UAR, macro-F1, confusion), ``runs`` (run folders and resume state),
``loop`` (the training loop), ``distributed`` (torchrun), ``cv`` (every fold of a k-fold split). The engine logs through ``logging``; only the CLI prints.
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
)
from .cv import run_folds, summarize_folds, summary_markdown
from .evaluation import evaluate_checkpoint
from .loop import Callback, EpochBatchSampler, build_dataset, finetune
from .metrics import classification_metrics, evaluate
from .model import build_model, default_lr, param_groups, patch_override
from .runs import (
    STATE_FILE, config_differences, default_out_dir, load_train_state, prepare_run_folder, save_train_state, versions,
)

__all__ = [
    "evaluate_checkpoint", "STATE_FILE", "Callback", "EpochBatchSampler", "config_differences", "load_train_state", "run_folds",
    "save_train_state", "summarize_folds", "summary_markdown", "AMP_MODES", "AUTO", "DATASET_KINDS", "OPTIMIZERS", "RUN_FILES", "SPLIT_KINDS", "FinetuneConfig",
    "RunFolderError", "TrainingError", "build_dataset", "build_model", "classification_metrics", "default_lr",
    "default_out_dir", "evaluate", "finetune", "param_groups", "patch_override", "prepare_run_folder", "versions",
]
