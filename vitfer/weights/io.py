"""Reading checkpoint files safely and writing safetensors atomically.

* ``.safetensors``: read with :func:`safetensors.torch.load_file`; metadata with ``safe_open``.
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: ``torch.load(..., weights_only=True)`` only; a pickle that
  names anything but tensors and plain containers (e.g. a ``__reduce__`` that would run code) is
  refused with a :class:`CheckpointError`, nothing from it is executed. ``argparse.Namespace``
  (the ``args`` entry of DeiT/ConViT-style training checkpoints) is the one extra class allowed.
* ``.npz`` (Google's JAX ViT releases): ``numpy.load(..., allow_pickle=False)``.

Writes go to a temporary file in the target's folder, are flushed and fsync'ed, then moved into
place with ``os.replace``: a reader never sees a half-written file, and an error (or a kill)
mid-write leaves any previous file untouched.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import pickle
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor

from .errors import CheckpointError

__all__ = [
    "TORCH_SUFFIXES",
    "atomic_save_safetensors",
    "atomic_write",
    "atomic_write_text",
    "read_checkpoint",
    "read_safetensors_metadata",
    "sha256_file",
    "unwrap_state_dict",
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# Containers that training scripts wrap a state dict in, most specific first.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "module", "net")


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _describe(path: Path) -> str:
    try:
        return f"{path} ({path.stat().st_size} bytes)"
    except OSError:
        return str(path)


def read_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The str -> str metadata of a safetensors file ({} when it has none)."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read the safetensors file {_describe(path)}: {e}. The file is truncated or not "
            f"a safetensors file; delete it and download / convert it again"
        ) from e


def _read_safetensors(path: Path, device: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    meta = read_safetensors_metadata(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device=device)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"cannot read the safetensors file {_describe(path)}: {e}. The file is truncated or "
            f"corrupt; delete it and download / convert it again"
        ) from e
    return tensors, meta


def _allow_namespace():
    """Allow ``argparse.Namespace`` (training scripts' ``args``) in weights-only unpickling."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext()


def _read_torch(path: Path) -> Any:
    try:
        with _allow_namespace():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "global" in ln.lower()), first[0] if first else "")
        raise CheckpointError(
            f"refusing to load {_describe(path)}: its pickle holds objects other than tensors and plain "
            f"containers ({detail}). vitfer reads .pth/.bin files only with torch.load(weights_only=True) "
            f"and never runs code from a checkpoint. If you trust the file, re-save its state dict "
            f"(torch.save(model.state_dict(), ...)) or convert it to safetensors yourself"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read the torch checkpoint {_describe(path)}: {type(e).__name__}: {str(e).rstrip('. ')}. "
            f"The file is truncated or not a torch.save file"
        ) from e


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(str(path), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"cannot read the .npz checkpoint {_describe(path)}: {type(e).__name__}: {e}. The file is "
            f"truncated, not an .npz archive, or holds pickled objects (never loaded)"
        ) from e


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The state dict inside a loaded torch checkpoint.

    Accepts a bare ``{name: tensor}`` dict or one wrapped under ``model`` (ConViT / DeiT),
    ``state_dict`` (Lightning, many scripts), ... . A ``module.`` prefix on every key
    (``DataParallel``) is removed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    sd: Any = obj
    if not all(isinstance(v, Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                _logger.info("%s: using the state dict under %r", source, key)
                sd = inner
                break
        else:
            raise CheckpointError(
                f"{source}: no state dict found; top-level entries are {sorted(map(str, obj))[:20]} "
                f"(looked for a mapping of tensors, bare or under one of {list(_WRAPPER_KEYS)})"
            )
    out = {str(k): v for k, v in sd.items()}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def read_checkpoint(path: PathLike, device: str = "cpu") -> tuple[dict[str, Any], dict[str, str], str]:
    """Read a checkpoint file safely.

    Returns:
        ``(tensors, metadata, fmt)``: ``tensors`` maps names to ``torch.Tensor`` (``np.ndarray``
        for ``fmt == "npz"``), ``metadata`` is the safetensors metadata ({} otherwise), ``fmt`` is
        ``"safetensors"``, ``"torch"`` or ``"npz"``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_checkpoint(path / name, device)
        raise CheckpointError(f"{path} is a folder without model.safetensors or pytorch_model.bin")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors, meta = _read_safetensors(path, device)
        return tensors, meta, "safetensors"
    if suffix == ".npz":
        return _read_npz(path), {}, "npz"
    if suffix in TORCH_SUFFIXES:
        sd = unwrap_state_dict(_read_torch(path), str(path))
        return ({k: v.to(device) for k, v in sd.items()} if device != "cpu" else sd), {}, "torch"
    # Unknown suffix: sniff the first bytes (a zip is torch.save or npz; else try safetensors).
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                is_npz = all(n.endswith(".npy") for n in z.namelist())
        except zipfile.BadZipFile:
            is_npz = False
        if is_npz:
            return _read_npz(path), {}, "npz"
        sd = unwrap_state_dict(_read_torch(path), str(path))
        return sd, {}, "torch"
    tensors, meta = _read_safetensors(path, device)
    return tensors, meta, "safetensors"


def _prepare_for_safetensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, none sharing storage (safetensors refuses shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, str]] = set()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise CheckpointError(f"cannot save {name!r}: expected a tensor, got {type(t).__name__}")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        key = (t.untyped_storage().data_ptr(), str(t.device))
        shared = t.numel() > 0 and key in seen
        if t.numel() > 0:
            seen.add(key)
        if shared or not t.is_contiguous():
            t = t.contiguous().clone()
        out[name] = t
    return out


def _cleanup_stale_temps(path: Path, max_age_s: float = 3600.0) -> None:
    now = time.time()
    for p in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
        except OSError:
            pass


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file in the same
    folder, which is fsync'ed, made 0644 and moved into place with ``os.replace`` (then the folder
    is fsync'ed, best effort). On any error the temporary file is removed and a previous file at
    ``path`` is left untouched."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (best effort; not supported everywhere)
        dfd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_save_safetensors(
    tensors: Mapping[str, Tensor], path: PathLike, metadata: Optional[Mapping[str, str]] = None
) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (:func:`atomic_write`).

    On any error the temporary file is removed and a previous file at ``path`` is left untouched.
    """
    prepared = _prepare_for_safetensors(tensors)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    # save_file is looked up at call time so that tests can make it fail mid-write.
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(prepared, tmp, metadata=meta))
