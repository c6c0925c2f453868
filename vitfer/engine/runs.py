"""Run folders: where a run writes, what it records, and the state that lets it resume."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .config import BOOKKEEPING, RUN_FILES, FinetuneConfig, RunFolderError, config_from_dict, resolve_config

_logger = logging.getLogger(__name__)


def default_out_dir(cfg: FinetuneConfig, root: Union[str, os.PathLike] = "runs", label: str = "") -> Path:
    """A new folder ``runs/<model>-<dataset>[-<label>]-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... if taken)."""
    parts = [cfg.model, cfg.dataset] + ([label] if label else []) + [time.strftime("%Y%m%d-%H%M%S")]
    stem = "-".join(parts).replace(os.sep, "_")
    out, k = Path(root) / stem, 2
    while out.exists():
        out, k = Path(root) / f"{stem}-{k}", k + 1
    return out


def versions() -> dict[str, str]:
    """Versions of vitfer and the libraries a run's numbers depend on."""
    import numpy
    import PIL

    import vitfer

    return {"vitfer": vitfer.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__}


def prepare_run_folder(out_dir: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """Make ``out_dir`` ready for a new run.

    A folder that holds another run's files (:data:`RUN_FILES`) is an error unless ``overwrite``,
    which deletes those files first, with the state to resume from and a cross-validation's
    summary (:data:`REPLACED_FILES`), so that the folder never mixes files of two runs: a run that
    fails later leaves only its own files, its ``config.json`` saying that it failed, and a
    ``--resume`` after an interrupted ``--overwrite`` never continues the run that was replaced.
    Sub-folders (folds, pretraining stages) are runs of their own, checked when they run.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} is a file")
    found = [f for f in REPLACED_FILES if (out / f).exists()]
    if found:
        if not overwrite:
            what = ""
            try:
                old = json.loads((out / "config.json").read_text())
                what = f" ({old['config']['model']} on {old['config']['dataset']}, {old.get('status', '?')})"
            except (OSError, ValueError, KeyError, TypeError):
                pass
            raise RunFolderError(
                f"output folder {out} already holds a run{what}: {', '.join(found)}; pass --overwrite "
                f"(overwrite=True) to replace it, or choose another --out"
            )
        for f in REPLACED_FILES:
            if (out / f).exists():
                (out / f).unlink()
        _logger.info("replacing the previous run in %s", out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- resume state ------------------------------------------------------------------------------
STATE_FILE = "state.safetensors"
#: What ``overwrite`` deletes: the run's files, its resume state and a cross-validation's summary.
REPLACED_FILES = RUN_FILES + (STATE_FILE, "summary.json", "summary.md")
#: Config fields that may differ when a run is resumed (they do not change its numbers).
RESUMABLE_CHANGES = BOOKKEEPING + ("num_workers", "device", "grad_checkpointing")


def _rng_tensors() -> dict[str, "torch.Tensor"]:
    import numpy as np

    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    out["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    return out


def _rng_json() -> dict[str, Any]:
    import random

    import numpy as np

    _, _, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss_next]}


def _set_rng(tensors: dict[str, "torch.Tensor"], info: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    pos, has_gauss, cached = info["numpy"]
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_train_state(
    path: Union[str, os.PathLike], model: "torch.nn.Module", optimizer: "torch.optim.Optimizer", info: dict[str, Any],
    ema: Any = None, extra: Optional["torch.nn.Module"] = None,
) -> Path:
    """Write everything a run needs to continue exactly, atomically, into one safetensors file:
    the model (its current, not its best, weights), the optimiser's state and hyper-parameters,
    the RNG states of torch (CPU and CUDA), numpy and Python, and ``info`` (epoch, step, history,
    best epoch, config; JSON), and the weight average ``ema`` (:class:`~vitfer.engine.ema.ModelEma`)
    when the run keeps one. No pickle: tensors in safetensors, the rest in its JSON metadata."""
    from vitfer.weights.io import atomic_save_safetensors

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    plain: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach()
            else:
                plain.setdefault(str(idx), {})[k] = v
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach() for k, v in ema.state_dict().items()})
    if extra is not None:  # modules trained beside the model (distillation's feature map)
        tensors.update({f"extra.{k}": v.detach() for k, v in extra.state_dict().items()})
    tensors.update(_rng_tensors())
    meta = {**info, "optimizer": {"param_groups": opt["param_groups"], "plain_state": plain}, "rng": _rng_json()}
    return atomic_save_safetensors({k: v.cpu() for k, v in tensors.items()}, path,
                                   {"vitfer_train_state": json.dumps(meta)})


def load_train_state(
    path: Union[str, os.PathLike], model: "torch.nn.Module", optimizer: "torch.optim.Optimizer", ema: Any = None,
    extra: Optional["torch.nn.Module"] = None,
) -> dict[str, Any]:
    """Restore what :func:`save_train_state` wrote into ``model``, ``optimizer``, ``ema`` (when
    given) and the global RNGs; returns its ``info``. Raises ``CheckpointError`` for a damaged or
    foreign file, or one without the weight average a run with ``ema`` needs."""
    from vitfer.weights.errors import CheckpointError
    from vitfer.weights.io import read_checkpoint

    tensors, meta, _ = read_checkpoint(Path(path))
    if "vitfer_train_state" not in meta:
        raise CheckpointError(f"{path} is not a vitfer training state (no 'vitfer_train_state' metadata)")
    info = json.loads(meta["vitfer_train_state"])
    device = next(iter(model.state_dict().values())).device
    sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the saved model does not fit the run's model: {e}") from e
    if ema is not None:
        ema_sd = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not ema_sd:
            raise CheckpointError(f"{path} holds no weight average (ema) for a run that keeps one")
        try:
            ema.load_state_dict(ema_sd)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: the saved weight average does not fit the run's model: {e}") from e
    if extra is not None:
        extra_sd = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        try:
            extra.load_state_dict(extra_sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: the saved distillation feature map does not fit the run's: {e}") from e
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v.to(device) if name != "step" else v
    for idx, st in info["optimizer"]["plain_state"].items():
        state.setdefault(int(idx), {}).update(st)
    groups = info["optimizer"]["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    _set_rng(tensors, info["rng"])
    return info


def run_status(cfg: FinetuneConfig, folder: Union[str, os.PathLike], *, other: str = "raise") -> str:
    """``new``, ``finished``, ``resume`` or ``restart`` for the run ``cfg`` in ``folder``. A folder
    holding a run of another config is an error naming the differing fields (``other="raise"``)
    or to be restarted (``other="restart"``)."""
    from dataclasses import asdict

    folder = Path(folder)
    try:
        state = json.loads((folder / "config.json").read_text())
        stored = stored_config(state["config"])
    except FileNotFoundError:
        return "new"
    except (OSError, ValueError, KeyError, TypeError) as e:
        if other == "restart":
            return "restart"
        raise RunFolderError(f"{folder}/config.json is unreadable ({e}); pass --overwrite to start it again") from e
    diff = config_differences(stored, asdict(resolve_config(cfg)))
    if diff:
        if other == "restart":
            _logger.info("%s holds a run of another config (%s): training it again", folder, "; ".join(diff))
            return "restart"
        raise RunFolderError(
            f"{folder} holds a run of another config ({'; '.join(diff)}); pass --overwrite to replace it, or choose "
            f"another --out"
        )
    if state.get("status") == "finished" and (folder / "metrics.json").is_file():
        return "finished"
    return "resume" if (folder / STATE_FILE).is_file() else "restart"


def stored_config(values: dict[str, Any]) -> dict[str, Any]:
    """A config a run recorded (``config.json``, a state file), as the resolved dict a run of today
    would record: resolved again, so that a run recorded before sizes, lr and precision were
    resolved compares equal to the same run now."""
    from dataclasses import asdict

    return asdict(resolve_config(config_from_dict(values)))


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The config fields that differ between a stored run and a resumed one (``field: old -> new``),
    leaving out :data:`RESUMABLE_CHANGES`."""
    from dataclasses import MISSING, fields

    defaults = {f.name: f.default for f in fields(FinetuneConfig) if f.default is not MISSING}
    keys = sorted((set(old) | set(new)) - set(RESUMABLE_CHANGES))
    # a field added since the stored run was made is the same run when it holds its default
    keys = [k for k in keys if k in old or k not in defaults or json.dumps(new.get(k)) != json.dumps(defaults[k])]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if json.dumps(old.get(k)) != json.dumps(new.get(k))]
