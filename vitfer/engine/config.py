"""The configuration of a fine-tuning run: fields, checks, and named recipes."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from vitfer.runtime import resolve_device

_logger = logging.getLogger(__name__)

DATASET_KINDS = ("synthetic", "ckplus48", "jaffe", "folder", "fer2013")
SPLIT_KINDS = ("random", "subject", "kfold", "subject-kfold", "official")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
HEADS = ("linear", "mlp", "svm")
AMP_MODES = ("auto", "none", "bf16")
#: How a student learns from its teacher (``distill_type``): DeiT's hard labels (the teacher's
#: argmax) or soft ones (the teacher's distribution at temperature ``distill_tau``).
DISTILL_TYPES = ("hard", "soft")
#: Families whose models take a distillation token (``model_overrides["distilled"]``).
DISTILL_TOKEN_FAMILIES = ("vit", "convit", "crossvit", "vit_hybrid")
#: The study's plain transformers: from scratch they learn only from a teacher (recipe ``distill``).
PLAIN_TRANSFORMER_FAMILIES = ("vit", "convit", "crossvit")
#: Datasets a run can pretrain on first (``pretrain``; a folder dataset needs options of its own).
PRETRAIN_DATASETS = ("synthetic", "ckplus48", "jaffe", "fer2013")
AUTO = "auto"
#: Sizes of the from-scratch job (``img_size`` / ``patch_size`` = "auto" without pretrained weights).
SCRATCH_IMG_SIZE, SCRATCH_PATCH_SIZE = 48, 6
#: The files that make up a run folder; a folder holding any of them belongs to a run.
RUN_FILES = ("config.json", "metrics.jsonl", "metrics.json", "model.safetensors")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the epoch and step."""


class RunFolderError(ValueError):
    """The output folder already holds another run (pass ``overwrite=True`` / ``--overwrite``)."""


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (saved into the run folder's ``config.json`` and
    ``metrics.json``). Checked when built (and again by :func:`finetune`): a bad value raises a
    ``ValueError`` that names the field.

    ``img_size`` and ``patch_size`` default to ``"auto"``: from scratch that is 48 px with 6-px
    patches (a size a CPU trains in minutes), with ``pretrained`` weights the model's own input
    size and patch size (the study fine-tuned at 224 / 240 / 384), since pretrained
    patch-embedding weights only fit their own patch size. ``None`` always means the model's own.
    """

    model: str = "vit_tiny_r18d_48"  # ViT blocks on ResNet-18-D stages, made to learn from scratch (see RECIPES)
    dataset: str = "synthetic"  # synthetic | ckplus48 | jaffe | folder | fer2013
    data_dir: Optional[str] = None  # dataset folder (ckplus48/jaffe default: $VITFER_DATA_DIR; folder: required)
    labels: Optional[str] = None  # folder: a path,label[,subject] CSV instead of class sub-folders
    subject_pattern: Optional[str] = None  # folder: regex whose group captures the subject from the file name
    crop_faces: bool = False  # folder: keep the largest face the detector finds in each image (skip the others)
    face_margin: float = 0.2  # margin added around a detected face, as a fraction of its size
    split: str = "random"  # random | subject | kfold | subject-kfold | official (FER-2013, train/ + test/)
    fold: int = 0
    n_folds: int = 5
    test_size: Optional[float] = None  # None: the dataset's default (the study's 200 / 70 images)
    val_size: float = 0.1  # fraction of the training side held out for model selection
    img_size: Union[int, str, None] = AUTO  # "auto": 48 from scratch, the model's own when pretrained; None: own
    patch_size: Union[int, str, None] = AUTO  # "auto": 6 from scratch (transformers), own when pretrained; None: own
    pretrained: Union[bool, str] = False
    pretrain: Optional[str] = None  # first train the same model on this dataset (e.g. ckplus48), then start from it
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any other config field, e.g. depth
    epochs: int = 5
    batch_size: int = 16
    optimizer: str = "adamw"  # adamw | adam | sgd (the study: SGD, lr 0.003, batch 10)
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"  # cosine (after the warm-up) | constant
    freeze: str = "none"  # none | backbone | N: train only the last N blocks / stages and the head
    head: str = "linear"  # linear | mlp (hidden layers mlp_hidden) | svm (linear SVM on frozen features)
    mlp_hidden: tuple[int, ...] = (512, 256)
    recipe: Optional[str] = None  # the named recipe the defaults came from (see RECIPES)
    lr: Optional[float] = None  # peak lr of the warm-up + cosine schedule; None: 1e-3 CNNs, 1e-4 transformers
    weight_decay: float = 0.05
    warmup_steps: int = 50
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup's Beta alpha (0 = off); with cutmix too, each batch uses one of the two
    cutmix: float = 0.0  # CutMix's Beta alpha (0 = off)
    drop_path_rate: float = 0.1
    ema: float = 0.0  # decay of a moving average of the weights, validated, saved and tested (0 = off)
    grad_checkpointing: bool = False  # recompute each block's activations in the backward (less memory, same numbers)
    augment: dict[str, Any] = field(default_factory=dict)  # overrides of vitfer.data.DEFAULT_AUGMENT
    synthetic_n: int = 1000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # auto (bf16 where the device has fast bf16) | none | bf16
    num_workers: int = 0
    out_dir: Optional[str] = None  # None: a new folder runs/<model>-<dataset>-<date>-<time>
    overwrite: bool = False  # replace a previous run in out_dir (else that is an error)
    max_steps: Optional[int] = None  # stop early after this many optimiser steps (smoke tests)
    user_set: tuple[str, ...] = ()  # fields set over the recipe's values (a pretraining stage inherits those it takes)
    exclude_images: tuple[str, ...] = ()  # digests of images this run may not use (another run's val / test)
    validation: bool = True  # False: the validation part is held out but never looked at (the last epoch is kept)
    distill: Optional[str] = None  # None: off; "auto": train a teacher first (<run>/teacher); or a checkpoint / run folder
    distill_type: str = "hard"  # hard (DeiT: the teacher's argmax) | soft (its distribution at temperature distill_tau)
    distill_alpha: float = 0.5  # weight of the teacher's term in the loss (1 - alpha: the labels')
    distill_tau: float = 1.0  # soft distillation's temperature
    distill_features: float = 0.0  # weight of the feature term: patch tokens regress the teacher's feature map (0 = off)
    teacher: str = "resnet18d"  # distill="auto": the teacher's model, trained with the scratch recipe
    teacher_epochs: Optional[int] = None  # distill="auto": the teacher's epochs (None: the scratch recipe's)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (see the class docstring)."""

        def bad(field_name: str, want: str) -> ValueError:
            return ValueError(f"{field_name} must be {want}, got {getattr(self, field_name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name, choices in (("dataset", DATASET_KINDS), ("split", SPLIT_KINDS), ("optimizer", OPTIMIZERS),
                              ("amp", AMP_MODES), ("schedule", SCHEDULES), ("head", HEADS)):
            if getattr(self, name) not in choices:
                raise bad(name, "one of " + ", ".join(choices))
        for name in ("img_size", "patch_size"):
            v = getattr(self, name)
            if not (v is None or v == AUTO or (is_int(v) and v >= 1)):
                raise bad(name, "a positive int, 'auto' or None (the model's own)")
        for name in ("epochs", "batch_size", "n_folds", "synthetic_n"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an int >= 1")
        if self.split in ("kfold", "subject-kfold"):
            if self.n_folds < 2:
                raise bad("n_folds", f"at least 2 for split {self.split!r}")
            if not is_int(self.fold) or not 0 <= self.fold < self.n_folds:
                raise bad("fold", f"in 0..{self.n_folds - 1} (n_folds={self.n_folds})")
        if not 0.0 <= self.val_size < 1.0 and not (is_int(self.val_size) and self.val_size >= 1):
            raise bad("val_size", "a fraction in [0, 1) or a count")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a positive finite number")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", ">= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "in [0, 1)")
        for name in ("mixup", "cutmix"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise bad(name, "a Beta alpha >= 0 (0 = off)")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0.0 <= self.ema < 1.0:
            raise bad("ema", "a decay in [0, 1) (0 = off), e.g. 0.998")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise bad("drop_path_rate", "in [0, 1)")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an int >= 0")
        if not is_int(self.num_workers) or self.num_workers < 0:
            raise bad("num_workers", "an int >= 0")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < 1):
            raise bad("max_steps", "None or an int >= 1")
        if not (self.freeze in ("none", "backbone") or (isinstance(self.freeze, str) and self.freeze.isdigit())):
            raise bad("freeze", "'none', 'backbone' or a number of trailing blocks to train")
        if self.head == "svm" and self.freeze != "backbone":
            raise ValueError("head 'svm' fits a linear SVM on frozen features: it needs freeze='backbone' (--freeze backbone)")
        if not (0.0 <= self.momentum < 1.0):
            raise bad("momentum", "in [0, 1)")
        if not all(isinstance(h, int) and h >= 1 for h in self.mlp_hidden):
            raise bad("mlp_hidden", "a tuple of positive ints")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise bad("recipe", "one of " + ", ".join(RECIPES))
        if self.distill is not None and (not isinstance(self.distill, str) or not self.distill.strip()):
            raise bad("distill", "None, 'auto' or a teacher checkpoint / run folder")
        if self.distill_type not in DISTILL_TYPES:
            raise bad("distill_type", "one of " + ", ".join(DISTILL_TYPES))
        if isinstance(self.distill_alpha, bool) or not (isinstance(self.distill_alpha, (int, float))
                                                        and 0.0 <= self.distill_alpha <= 1.0):
            raise bad("distill_alpha", "in [0, 1]")
        if isinstance(self.distill_tau, bool) or not (isinstance(self.distill_tau, (int, float))
                                                      and math.isfinite(self.distill_tau) and self.distill_tau > 0):
            raise bad("distill_tau", "a positive temperature")
        if isinstance(self.distill_features, bool) or not (isinstance(self.distill_features, (int, float))
                                                           and math.isfinite(self.distill_features)
                                                           and self.distill_features >= 0):
            raise bad("distill_features", "a weight >= 0 (0 = off)")
        if self.teacher_epochs is not None and (not is_int(self.teacher_epochs) or self.teacher_epochs < 1):
            raise bad("teacher_epochs", "None or an int >= 1")
        if self.distill is not None and self.head == "svm":
            raise ValueError("distillation (--distill) trains the model; head 'svm' fits a frozen one: use one of them")
        if self.dataset == "folder" and not (self.data_dir or self.labels):
            raise ValueError("dataset 'folder' needs its folder: data_dir (--data-dir DIR), a folder of class sub-folders "
                             "(or --labels FILE.csv)")
        if self.dataset == "fer2013" and not self.data_dir:
            raise ValueError("dataset 'fer2013' needs the CSV: data_dir (--data-dir fer2013.csv or the folder holding it)")
        if (self.labels or self.subject_pattern) and self.dataset != "folder":
            raise ValueError("--labels and --subject-pattern apply to --dataset folder")
        if self.pretrain is not None:
            if self.pretrain not in PRETRAIN_DATASETS:
                raise bad("pretrain", "None or one of " + ", ".join(PRETRAIN_DATASETS))
            if self.pretrain == self.dataset:
                raise ValueError(f"pretrain={self.pretrain!r} is the run's own dataset: pretrain on another one")
            if self.pretrained:
                raise ValueError("pretrain (--pretrain DATASET) and pretrained weights (--pretrained) exclude each other")
        if self.crop_faces and self.dataset not in ("folder", "jaffe"):
            raise ValueError("--crop-faces applies to --dataset folder and jaffe (the others are face crops already)")
        if not 0.0 <= self.face_margin <= 1.0:
            raise bad("face_margin", "in [0, 1]")
        resolve_device(self.device)

    @classmethod
    def from_recipe(cls, recipe: str, **fields: Any) -> "FinetuneConfig":
        """A config with the defaults of the named recipe (:data:`RECIPES`), then ``fields``."""
        if recipe not in RECIPES:
            import difflib

            close = difflib.get_close_matches(recipe, list(RECIPES), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ValueError(f"unknown recipe {recipe!r}{hint}; recipes: {', '.join(RECIPES)}")
        user_set = tuple(sorted(set(fields) - {"user_set"}))
        chosen, recipe = recipe, recipe_for(recipe, fields)
        if recipe != chosen:
            _logger.info("the %s recipe for %s (a plain transformer, which from scratch learns only from a teacher) is "
                         "the %s recipe", chosen, fields.get("model"), recipe)
        return cls(recipe=recipe, **{**recipe_values(recipe, fields), "user_set": user_set})

    def resolved(self) -> "FinetuneConfig":
        """This config with every value worked out (:func:`resolve_config`)."""
        return resolve_config(self)

    def sizes(self) -> tuple[Optional[int], Optional[int]]:
        """``(img_size, patch_size)`` with ``"auto"`` resolved (None: the model's own)."""
        img = self.img_size if self.img_size != AUTO else (None if self.pretrained else SCRATCH_IMG_SIZE)
        patch = self.patch_size if self.patch_size != AUTO else (None if self.pretrained else SCRATCH_PATCH_SIZE)
        return img, patch  # type: ignore[return-value]


#: Options of a run that its pretraining stage takes when the user set them (``--epochs 1`` also
#: pretrains one epoch); the stage's other options are its recipe's for the pretraining dataset.
STAGE_OPTIONS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "schedule", "weight_decay", "warmup_steps",
                 "label_smoothing", "mixup", "cutmix", "drop_path_rate", "ema", "augment", "synthetic_n", "max_steps")
#: Fields a pretraining stage always shares with the run it serves (the model, its sizes, how it runs).
STAGE_SHARED = ("model", "model_overrides", "img_size", "patch_size", "seed", "device", "amp", "num_workers")
#: Config fields that describe where a run lives, not what it computes.
BOOKKEEPING = ("out_dir", "overwrite", "user_set")


def config_from_dict(values: dict[str, Any]) -> FinetuneConfig:
    """The config a run recorded (``config.json``, ``metrics.json``, a checkpoint's
    ``finetune_config``): its known fields, JSON lists read back as tuples."""
    known = {f.name: f for f in fields(FinetuneConfig)}
    out = {k: v for k, v in values.items() if k in known}
    for k in ("mlp_hidden", "user_set", "exclude_images"):
        if isinstance(out.get(k), list):
            out[k] = tuple(out[k])
    return FinetuneConfig(**out)


def default_lr(family: str) -> float:
    """Peak learning rate when none is given: 1e-3 for CNNs, 1e-4 for transformers.

    Measured on CK+48 from scratch on a 2-core CPU: small ViT / ConViT stay at chance at 3e-4 and
    above without long warm-up, and learn at 1e-4; ResNets learn fast at 1e-3.
    """
    return 1e-3 if family in ("resnet", "vgg") else 1e-4


def _pretrained_image_size(pretrained: Union[bool, str]) -> Optional[int]:
    """The input size a vitfer checkpoint given as ``pretrained`` was made for (it is rebuilt at
    that size), None for hub weights and other files (the registered model's size)."""
    if not isinstance(pretrained, str) or not Path(pretrained).expanduser().is_file():
        return None
    from vitfer.weights.checkpoint import read_metadata

    try:
        info = read_metadata(pretrained)
    except Exception:  # not a vitfer checkpoint (timm, torchvision ...): loading it says what is wrong
        return None
    size = (info.get("overrides") or {}).get("img_size")
    if size is None:
        size = (info.get("pretrained_cfg") or {}).get("input_size", [None])[-1]
    return int(size[-1] if isinstance(size, (list, tuple)) else size) if size else None


def patch_override(family: str, patch: Optional[int], multi_conv: bool = False) -> Any:
    """The ``patch_size`` override that ``FinetuneConfig.patch_size`` means for a family, or None
    where the family keeps its own: ViT and ConViT take ``patch``; CrossViT takes ``(patch,
    round(patch * 4 / 3))``, timm's 12:16 ratio between its branches, except the dagger variants
    whose three-conv stem only exists for 12 and 16; the hybrid's patches count backbone feature
    cells (its backbone already downsamples 16x) and CNNs have none."""
    if patch is None:
        return None
    if family in ("vit", "convit"):
        return patch
    if family == "crossvit" and not multi_conv:
        return (patch, max(1, round(patch * 4 / 3)))
    return None


def resolve_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with nothing left to work out, as the run uses it and records it (``config.json``,
    the checkpoint's ``finetune_config``), so that evaluation, the report, prediction, resume and
    pretraining read the run's settings back instead of deriving them again:

    - ``img_size``: an int (``"auto"``: 48 from scratch, the model's own with pretrained weights);
      ``patch_size``: an int, or None for the model's own (and for models without patches);
    - ``lr``: the peak learning rate (:func:`default_lr` of the model's family when None);
    - ``amp``: ``"bf16"`` or ``"none"`` (``"auto"``: bf16 where the device has fast bf16);
    - ``data_dir``: the dataset folder read (``$VITFER_DATA_DIR`` for CK+48 / JAFFE when not given)
      and ``labels`` as absolute paths;
    - with ``distill``: a teacher path made absolute, and ``model_overrides["distilled"] = True``
      for the families that take a distillation token (:data:`DISTILL_TOKEN_FAMILIES`) unless the
      overrides say otherwise.

    Resolving a resolved config changes nothing.
    """
    from vitfer.models.families import model_spec
    from vitfer.runtime import resolve_amp

    cfg.validate()
    spec = model_spec(cfg.model)
    img, patch = cfg.sizes()
    if img is None:
        img = _pretrained_image_size(cfg.pretrained) or int(spec.pretrained_cfg.input_size[-1])
    if patch is not None and patch_override(spec.family, patch) is None:
        patch = None  # the family has no patch size to set (CNNs, the hybrids)
    data_dir = cfg.data_dir
    if not data_dir and cfg.dataset in ("ckplus48", "jaffe"):
        data_dir = os.environ.get("VITFER_DATA_DIR") or None
    absolute = (lambda p: str(Path(p).expanduser().absolute()) if p else p)  # noqa: E731
    overrides, distill = cfg.model_overrides, cfg.distill
    if distill is not None:
        if distill == AUTO:
            model_spec(cfg.teacher)  # an unknown teacher model is an error now, naming close matches
        else:
            if not Path(distill).expanduser().exists():
                raise ValueError(f"distill: the teacher {distill!r} does not exist (a vitfer checkpoint or run folder, "
                                 f"or 'auto' to train one first)")
            distill = absolute(distill)
        if spec.family in DISTILL_TOKEN_FAMILIES and "distilled" not in overrides:
            overrides = {**overrides, "distilled": True}  # DeiT: a distillation token and head learn from the teacher
    return replace(
        cfg, img_size=int(img), patch_size=patch, lr=cfg.lr if cfg.lr is not None else default_lr(spec.family),
        amp=resolve_amp(cfg.amp, resolve_device(cfg.device)), data_dir=absolute(data_dir), labels=absolute(cfg.labels),
        model_overrides=overrides, distill=distill,
    )


def recipe_for(recipe: str, fields: dict[str, Any]) -> str:
    """The recipe a run of ``fields`` takes when ``recipe`` is asked for: ``scratch`` with one of the
    plain transformers (ViT, ConViT, CrossViT: :data:`PLAIN_TRANSFORMER_FAMILIES`) as the model is
    ``distill``, since from scratch on a few hundred faces they learn only from a teacher (the
    ``scratch`` recipe's own model is a hybrid, a ViT on a convolutional stem, which learns alone)."""
    model = fields.get("model")
    if recipe != "scratch" or not model or fields.get("pretrained"):
        return recipe
    from vitfer.models.families import model_spec

    try:
        family = model_spec(model).family
    except KeyError:  # an unknown model: the config's own check names it
        return recipe
    return "distill" if family in PLAIN_TRANSFORMER_FAMILIES else recipe


def recipe_values(recipe: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The config fields of ``recipe`` for a run given ``fields``: the recipe's own, then its
    ``datasets`` entry for ``fields["dataset"]`` (the default dataset when absent), then
    ``fields``; ``augment`` dicts are merged in the same order."""
    base = {k: v for k, v in RECIPES[recipe].items() if k != "datasets"}
    dataset = fields.get("dataset", FinetuneConfig.dataset)
    per = RECIPES[recipe].get("datasets", {})
    extra = per.get(dataset, per.get("default", {}))
    values = {**base, **extra, **fields}
    values["augment"] = {**base.get("augment", {}), **extra.get("augment", {}), **fields.get("augment", {})}
    return values


#: Named recipes: the defaults each sets (every field stays overridable). ``thesis*`` follow the
#: study's section 4.2; where it is silent (momentum, schedule, augmentation strengths) the choice
#: is vitfer's, noted here.
RECIPES: dict[str, dict[str, Any]] = {
    # Without pretrained weights: a ViT on a convolutional stem (vit_tiny_cs_48, 48 px, 36 tokens),
    # AdamW, a short warm-up and a cosine decay, bf16 autocast where it is fast; per dataset the
    # length and augmentation (measured: see README "Training transformers from scratch").
    "scratch": {
        "model": "vit_tiny_r18d_48", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "batch_size": 64,
        "warmup_steps": 100, "schedule": "cosine", "label_smoothing": 0.0, "drop_path_rate": 0.0, "amp": "auto",
        "datasets": {
            # the procedural faces: plenty of them (generating 10,000 takes about 4 s), few epochs
            "synthetic": {"synthetic_n": 10000, "epochs": 7,
                          "augment": {"rotation": 0.0, "translate": 0.0, "brightness": 0.0, "contrast": 0.0}},
            # small face datasets (CK+48: 703 training images on the subject split): many epochs, the
            # default augmentation, mixup / CutMix and drop-path against over-fitting
            "default": {"epochs": 100, "batch_size": 32, "label_smoothing": 0.1, "mixup": 0.2, "cutmix": 1.0,
                        "drop_path_rate": 0.1},
            # JAFFE (about 130 training photos on a subject split) is too small to learn faces from:
            # pretrain on CK+48 first, crop JAFFE's head-and-shoulders photos to the face as CK+48's
            # are, and fine-tune gently
            "jaffe": {"epochs": 60, "batch_size": 32, "label_smoothing": 0.1, "mixup": 0.2, "cutmix": 1.0,
                      "drop_path_rate": 0.1, "pretrain": "ckplus48", "crop_faces": True, "face_margin": 0.0,
                      "lr": 3e-4},
        },
    },
    # The study's own transformers (ViT, ConViT, CrossViT) without pretrained weights: DeiT's
    # distillation from a CNN teacher trained first on the run's training part (resnet18d under the
    # scratch recipe, no mixing), a distillation token and head on the teacher's soft predictions
    # (tau 1) of the same mixed (mixup 0.2 / CutMix) images the student sees, and the feature term
    # (a middle block's patch tokens regress the teacher's feature map); 48 px, 6-px patches, AdamW
    # 1e-4, batch 16, no drop-path, bf16 where fast (measured: see README "The study's own
    # transformers"). `scratch` with one of these models means it.
    "distill": {
        "model": "convit_tiny", "optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.05, "batch_size": 16,
        "warmup_steps": 100, "schedule": "cosine", "label_smoothing": 0.1, "drop_path_rate": 0.0, "amp": "auto",
        "mixup": 0.2, "cutmix": 1.0, "distill": "auto", "distill_type": "soft", "distill_alpha": 0.5,
        "distill_features": 10.0, "teacher": "resnet18d", "teacher_epochs": 30,
        "datasets": {
            # the procedural faces: plenty of them, few epochs, no mixing (as the scratch recipe)
            "synthetic": {"synthetic_n": 10000, "epochs": 7, "batch_size": 64, "mixup": 0.0, "cutmix": 0.0,
                          "augment": {"rotation": 0.0, "translate": 0.0, "brightness": 0.0, "contrast": 0.0}},
            # CK+48 and other small face sets (702 training images on CK+48's subject split)
            "default": {"epochs": 50},
            # JAFFE: as the scratch recipe, face crops and pretraining on CK+48 first (the stage distils
            # from its own CK+48 teacher); the teacher is pretrained on CK+48 too
            "jaffe": {"epochs": 60, "pretrain": "ckplus48", "crop_faces": True, "face_margin": 0.0},
        },
    },
    # The study's transformers and CNNs: SGD lr 0.003, batch 10, 50 epochs, ImageNet weights at the
    # model's own input size; flips (horizontal and vertical), rotation and pixel-level changes
    # (brightness, contrast, noise). Momentum 0.9 and a cosine decay after 50 warm-up steps are
    # vitfer's choices (the study names neither); no label smoothing or weight decay.
    "thesis": {
        "pretrained": True, "optimizer": "sgd", "lr": 0.003, "momentum": 0.9, "batch_size": 10, "epochs": 50,
        "schedule": "cosine", "warmup_steps": 50, "weight_decay": 0.0, "label_smoothing": 0.0, "drop_path_rate": 0.0,
        "augment": {"hflip": 0.5, "vflip": 0.5, "rotation": 15.0, "brightness": 0.2, "contrast": 0.2, "noise": 0.02},
    },
    # The study's ResNet50: most of the backbone frozen (all but the last stage), the head replaced
    # by three fully connected layers, Adam lr 0.0005, batch 10, 50 epochs (constant lr).
    "thesis-resnet": {
        "pretrained": True, "optimizer": "adam", "lr": 0.0005, "batch_size": 10, "epochs": 50, "schedule": "constant",
        "warmup_steps": 0, "weight_decay": 0.0, "label_smoothing": 0.0, "freeze": "1", "head": "mlp",
        "mlp_hidden": (512, 256), "augment": {"hflip": 0.5, "vflip": 0.5, "rotation": 15.0},
    },
    # The study's VGG19 + SVM: frozen ImageNet features, a linear SVM (C chosen on the validation
    # part) stored as the model's ordinary Linear head.
    "thesis-svm": {
        "pretrained": True, "freeze": "backbone", "head": "svm",
    },
}
