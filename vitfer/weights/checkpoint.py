"""Self-describing checkpoints: safetensors whose metadata is enough to rebuild the model.

The metadata (str -> str) holds one JSON blob under the key ``"vitfer"``::

    {"format_version": 1, "model": "convit_tiny", "family": "convit",
     "overrides": {"num_classes": 7, "img_size": [160, 160]},   # config fields != the variant's
     "num_classes": 7, "class_names": ["anger", ...], "input_size": [3, 160, 160],
     "mean": [...], "std": [...], "interpolation": "bicubic", "crop_pct": 0.875,
     "source": "hf-hub:timm/convit_tiny.fb_in1k@main",
     "init": "hf-hub:timm/convit_tiny.fb_in1k@main",              # or "scratch"
     "vitfer_version": "0.1.0", "created": "2026-01-01T00:00:00Z", ...extra info...}

``num_classes`` and the input fields describe the model that was saved (its own head and input
size), and ``init`` what its weights were initialised from: the pretrained source that
``create_model(..., pretrained=...)`` loaded (``model.pretrained_source``), or ``"scratch"``; the
architecture's default ImageNet hub id is never recorded as if it were the weights' source.

``vitfer.load(path)`` builds ``create_model(model, **overrides)``, loads the tensors strictly and
returns the model in eval mode with ``class_names`` and ``pretrained_cfg`` set.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .convert import tuplify
from .errors import CheckpointError
from .io import TORCH_SUFFIXES, atomic_save_safetensors, read_checkpoint, read_safetensors_metadata, sniff_format

__all__ = ["FORMAT_VERSION", "RUN_CHECKPOINT", "describe_state_dict", "load", "model_metadata", "read_metadata",
           "resolve_checkpoint", "save"]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]
#: The checkpoint a run folder holds (``vitfer finetune``'s best epoch).
RUN_CHECKPOINT = "model.safetensors"


def resolve_checkpoint(path: PathLike) -> Path:
    """``path`` itself, or for a run folder its ``model.safetensors``.

    Raises:
        CheckpointError: ``path`` is a folder without ``model.safetensors`` (the message names the
            run folders inside it, e.g. the folds of a cross-validation, when there are any).
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return p
    if (p / RUN_CHECKPOINT).is_file():
        return p / RUN_CHECKPOINT
    runs = sorted(d.name for d in p.iterdir() if (d / RUN_CHECKPOINT).is_file())
    hint = (f"; the run folders inside it: {', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''} "
            f"(give one of them, e.g. {p / runs[0]})") if runs else (
        "; give a checkpoint file or the folder of a finished vitfer finetune run")
    raise CheckpointError(f"{p} is a folder without {RUN_CHECKPOINT}{hint}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _jsonable(v: Any, what: str) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x, what) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x, what) for k, x in v.items()}
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (Path, torch.device, torch.dtype)):
        return str(v)
    raise CheckpointError(f"cannot store {what} in checkpoint metadata: {type(v).__name__} {v!r} is not JSON")


def _pair(v: Any) -> Optional[tuple[int, int]]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    return None


def _config_overrides(model: nn.Module, name: str) -> dict[str, Any]:
    """The config fields of ``model`` that differ from the registered variant, from its live state."""
    from vitfer.models.families import default_config

    cfg = getattr(model, "cfg", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        out = {"num_classes": int(model.num_classes)}
        if getattr(model, "in_chans", 3) != 3:
            out["in_chans"] = int(model.in_chans)
        return out
    cur = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if "num_classes" in cur and hasattr(model, "num_classes"):
        cur["num_classes"] = int(model.num_classes)
    if "in_chans" in cur and hasattr(model, "in_chans"):
        cur["in_chans"] = int(model.in_chans)
    if "global_pool" in cur and isinstance(getattr(model, "global_pool", None), str):
        cur["global_pool"] = model.global_pool
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if "img_size" in cur and input_size is not None and _pair(cur["img_size"]) is not None:
        live = (int(input_size[-2]), int(input_size[-1]))
        if live != _pair(cur["img_size"]):
            cur["img_size"] = live
    dflt = default_config(name)
    dflt = {f.name: getattr(dflt, f.name) for f in dataclasses.fields(dflt)} if dflt is not None else {}
    out = {}
    for k, v in cur.items():
        if k in dflt:
            same = v == dflt[k] or (k == "img_size" and _pair(v) is not None and _pair(v) == _pair(dflt[k]))
            if same:
                continue
        out[k] = _jsonable(v, f"config field {k!r}")
    return out


def model_metadata(
    model: nn.Module,
    class_names: Optional[Sequence[str]] = None,
    source: Optional[str] = None,
    *,
    init: Optional[str] = None,
    **info: Any,
) -> dict[str, Any]:
    """The JSON-able description of ``model`` stored by :func:`save`.

    Args:
        source: where these weights come from (default ``model.pretrained_source``).
        init: what the weights were initialised from (default ``model.pretrained_source``, the
            pretrained source ``create_model`` loaded, or ``"scratch"`` when there is none).
    """
    from vitfer import __version__
    from vitfer.models.registry import get_model_spec, is_model

    name = getattr(model, "model_name", "") or ""
    if not name or not is_model(name):
        raise CheckpointError(
            f"cannot save a self-describing checkpoint: model.model_name is {name!r}, not a registered "
            f"vitfer model; build the model with vitfer.create_model(...)"
        )
    spec = get_model_spec(name)
    num_classes = int(getattr(model, "num_classes", 0))
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise CheckpointError(
                f"{len(class_names)} class names given ({class_names}) but the model has {num_classes} classes"
            )
    pcfg = dict(getattr(model, "pretrained_cfg", None) or spec.pretrained_cfg.to_dict())
    meta = {
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "family": spec.family,
        "overrides": _config_overrides(model, spec.name),
        "num_classes": num_classes,
        "class_names": class_names,
        "input_size": _jsonable(pcfg.get("input_size"), "input_size"),
        "mean": _jsonable(pcfg.get("mean"), "mean"),
        "std": _jsonable(pcfg.get("std"), "std"),
        "interpolation": pcfg.get("interpolation"),
        "crop_pct": pcfg.get("crop_pct"),
        "source": source if source is not None else getattr(model, "pretrained_source", None),
        "init": init if init is not None else (getattr(model, "pretrained_source", None) or "scratch"),
        "vitfer_version": __version__,
        "created": _now(),
    }
    for k, v in info.items():
        if k in meta:
            raise CheckpointError(f"info key {k!r} is reserved in vitfer checkpoint metadata")
        meta[k] = _jsonable(v, f"info {k!r}")
    return meta


def describe_state_dict(model_name: str, sd: Mapping[str, Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata for a converted architecture-default state dict (the converted cache, ``vitfer convert``).

    ``num_classes`` / ``in_chans`` are read off the tensors; ``info`` entries are added (a source
    checkpoint's own vitfer description, under ``"base"``, supplies class names and overrides).
    """
    from vitfer import __version__

    from vitfer.models.families import classifier_names, first_conv_names, model_spec

    spec = model_spec(model_name)
    cfg = spec.pretrained_cfg
    base = dict(info.get("base") or {})
    heads = [c for c in classifier_names(cfg) if f"{c}.weight" in sd]
    num_classes = int(sd[f"{heads[0]}.weight"].shape[0]) if heads else 0
    overrides = dict(base.get("overrides") or {})
    dflt = default_config(spec.name)
    if dflt is not None and getattr(dflt, "num_classes", None) != num_classes:
        overrides["num_classes"] = num_classes
    else:
        overrides.pop("num_classes", None)
    convs = [c for c in first_conv_names(cfg) if f"{c}.weight" in sd]
    in_chans = int(sd[f"{convs[0]}.weight"].shape[1]) if convs else cfg.input_size[0]
    if in_chans != cfg.input_size[0]:
        overrides["in_chans"] = in_chans
    meta = {
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "family": spec.family,
        "overrides": overrides,
        "num_classes": num_classes,
        "class_names": base.get("class_names") if base.get("num_classes") == num_classes else None,
        "input_size": list(base.get("input_size") or cfg.input_size),
        "mean": list(base.get("mean") or cfg.mean),
        "std": list(base.get("std") or cfg.std),
        "interpolation": base.get("interpolation") or cfg.interpolation,
        "crop_pct": base.get("crop_pct") or cfg.crop_pct,
        "init": info.get("source"),
        "vitfer_version": __version__,
        "created": _now(),
    }
    for k, v in info.items():
        if k != "base":
            meta[k] = _jsonable(v, f"info {k!r}")
    return meta


def default_config(name: str):
    from vitfer.models.families import default_config as registered_default

    return registered_default(name)


def check_rebuildable(meta: Mapping[str, Any], sd: Mapping[str, Tensor]) -> None:
    """The model that :func:`load` will build from ``meta`` must have exactly ``sd``'s keys and shapes."""
    from .convert import build_meta, format_mismatch

    try:
        ref = build_meta(meta["model"], **tuplify(meta["overrides"])).state_dict()
    except Exception as e:
        raise CheckpointError(
            f"cannot save {meta['model']}: rebuilding it from its config overrides {meta['overrides']} failed: {e}"
        ) from e
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    shapes = [(k, tuple(sd[k].shape), tuple(ref[k].shape)) for k in sd if k in ref and sd[k].shape != ref[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            format_mismatch(
                "vitfer.save", f"{meta['model']} rebuilt from overrides {meta['overrides']}", missing, unexpected,
                shapes, "the model was changed after it was built in a way its config does not record",
            )
        )


def save(
    model: nn.Module,
    path: PathLike,
    *,
    class_names: Optional[Sequence[str]] = None,
    source: Optional[str] = None,
    init: Optional[str] = None,
    **info: Any,
) -> Path:
    """Write ``model``'s state dict to ``path`` (safetensors, atomically) with metadata that
    :func:`load` needs to rebuild it: model name, config overrides, class names, input size,
    mean/std, interpolation, crop_pct, source, init (what the weights started from: a pretrained
    source or ``"scratch"``), vitfer version, creation time, and ``info``.

    The file is always safetensors, whatever the suffix of ``path``: ``.safetensors`` is the
    recommended name, but ``model.pt`` is accepted too (with a logged warning, since
    ``torch.load`` cannot read it) and loads with :func:`load`, which tells formats by content.
    Shared or non-contiguous tensors are copied (safetensors refuses shared storage).
    """
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES or suffix in (".npz", ".pkl", ".pickle"):
        _logger.warning(
            "%s: vitfer.save writes safetensors whatever the suffix; vitfer.load reads it, torch.load does not "
            "(name it .safetensors to avoid the confusion)", path,
        )
    meta = model_metadata(model, class_names=class_names, source=source, init=init, **info)
    sd = model.state_dict()
    check_rebuildable(meta, sd)
    out = atomic_save_safetensors(sd, path, {"vitfer": json.dumps(meta, sort_keys=True), "format": "pt"})
    _logger.info("saved %s (%d tensors) to %s", meta["model"], len(sd), out)
    return out


def _no_metadata_message(path: Path, what: str) -> str:
    return (
        f"{path} is {what} and carries no vitfer metadata, so it does not say which model it holds (vitfer.load "
        f"and `vitfer predict` need a checkpoint written by vitfer.save, `vitfer finetune` or `vitfer convert`). "
        f"Use it as the pretrained weights of a model you name: on the command line `--model NAME --pretrained "
        f"{path}` (e.g. `vitfer finetune --model NAME --pretrained {path}`), or `vitfer convert --model NAME --from "
        f"{path} --out DIR` to turn it into a self-describing checkpoint; from Python "
        f"vitfer.create_model('<model name>', pretrained={str(path)!r})"
    )


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The vitfer description stored in a checkpoint (raises if the file has none).

    Raises:
        CheckpointError: the file is missing, is not a checkpoint, or carries no vitfer metadata
            (a plain timm / torch checkpoint: the message says how to use it instead).
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    fmt = sniff_format(path)
    if fmt == "torch":
        raise CheckpointError(_no_metadata_message(path, "a plain torch checkpoint (torch.save, e.g. a timm .pth)"))
    if fmt == "npz":
        raise CheckpointError(_no_metadata_message(path, "a JAX .npz checkpoint (e.g. Google's ViT release)"))
    meta = read_safetensors_metadata(path)
    if "vitfer" not in meta:
        raise CheckpointError(
            _no_metadata_message(path, "a plain safetensors state dict (e.g. a timm checkpoint)")
        )
    try:
        info = json.loads(meta["vitfer"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its 'vitfer' metadata is not valid JSON: {e}") from e
    if not isinstance(info, dict) or "model" not in info:
        raise CheckpointError(f"{path}: its 'vitfer' metadata does not name a model: {meta['vitfer'][:200]}")
    if int(info.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer vitfer (format {info['format_version']} > {FORMAT_VERSION}); upgrade vitfer"
        )
    return info


def load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` by :func:`save` (or ``vitfer convert``), from that file alone.

    Returns:
        the model in eval mode on ``map_location``, with ``class_names``, ``pretrained_cfg``
        (input size, mean/std, interpolation, crop_pct) and ``checkpoint_info`` (the metadata) set.
    """
    from vitfer.models.registry import create_model, is_model

    from vitfer.models.families import import_all_families, import_family

    from .convert import build_empty
    from .pretrained import load_state_dict_strict

    path = resolve_checkpoint(path)
    info = read_metadata(path)
    name = info["model"]
    fam = info.get("family")
    if fam:
        try:
            import_family(fam)
        except KeyError:
            pass
    if not is_model(name):
        import_all_families()
    if not is_model(name):
        raise CheckpointError(f"{path} holds a {name!r} model, which this vitfer does not provide (family {fam!r})")
    overrides = tuplify(info.get("overrides") or {})
    try:
        # Every persistent tensor comes from the file: skip the random init where that is safe.
        model = build_empty(name, "cpu", **overrides) or create_model(name, **overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build {name} with the stored overrides {overrides}: {e}") from e
    tensors, _, _ = read_checkpoint(path)
    load_state_dict_strict(model, tensors, str(path))
    model.to(map_location)
    model.eval()
    pcfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for k in ("input_size", "mean", "std", "interpolation", "crop_pct"):
        if info.get(k) is not None:
            pcfg[k] = tuple(info[k]) if isinstance(info[k], list) else info[k]
    if pcfg:
        pcfg["num_classes"] = int(model.num_classes)
    model.pretrained_cfg = pcfg
    model.class_names = list(info["class_names"]) if info.get("class_names") else None
    model.pretrained_source = info.get("source")
    model.checkpoint_info = info
    return model
