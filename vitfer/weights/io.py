"""Reading checkpoint files safely and writing safetensors atomically.

The format of a file is told from its *content* (:func:`sniff_format`), never from its name: a
``model.pt`` that holds safetensors (``vitfer.save`` writes safetensors whatever the suffix) reads
as safetensors, a ``.safetensors`` that holds a ``torch.save`` zip reads as torch, and content
that is none of the formats below is a :class:`CheckpointError` naming the file and what its first
bytes look like (HTML error page, git-lfs pointer, empty file ...).

* safetensors (8-byte little-endian header length, then a JSON header ``{...``): read with
  :func:`safetensors.torch.load_file`; metadata with ``safe_open``.
* ``torch.save`` (a zip archive with ``data.pkl``, or a legacy pickle stream starting with
  ``0x80``): ``torch.load(..., weights_only=True)`` only; a pickle that names anything but tensors
  and plain containers (e.g. a ``__reduce__`` that would run code) is refused with a
  :class:`CheckpointError`, nothing from it is executed. ``argparse.Namespace`` (the ``args``
  entry of DeiT/ConViT-style training checkpoints) is the one extra class allowed.
* ``.npz`` (Google's JAX ViT releases; a zip archive of ``.npy`` members):
  ``numpy.load(..., allow_pickle=False)``.

Writes go to a temporary file in the target's folder, are flushed and fsync'ed, then moved into
place with ``os.replace``: a reader never sees a half-written file, and an error (or a kill)
mid-write leaves any previous file untouched; a failed write (disk full ...) raises an ``OSError``
that names the file and says that the previous one is intact.

Every safetensors file vitfer writes (:func:`atomic_save_safetensors`: checkpoints, training
state, the converted cache) records a checksum in its metadata (:data:`CHECKSUM_KEY`, the SHA-256
of every tensor's name, dtype, shape and bytes and of the other metadata entries), and reading
such a file verifies it: a flipped bit in the tensor data or in the metadata is a
:class:`CheckpointError`, never silently wrong weights. Files without the entry (written by other
tools, or by vitfer before it recorded checksums) are read as before.
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
    "CHECKPOINT_FORMATS",
    "CHECKSUM_KEY",
    "TORCH_SUFFIXES",
    "atomic_save_safetensors",
    "atomic_write",
    "atomic_write_text",
    "describe_content",
    "read_checkpoint",
    "read_safetensors_metadata",
    "safetensors_checksum",
    "sha256_file",
    "sniff_format",
    "unwrap_state_dict",
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# What sniff_format returns.
CHECKPOINT_FORMATS = ("safetensors", "torch", "npz")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # the PROTO opcode that starts every pickle of protocol >= 2 (legacy torch.save)
# A safetensors header larger than this is not a header (safetensors itself refuses > 100 MB).
_MAX_ST_HEADER = 100_000_000
#: The safetensors metadata entry holding :func:`safetensors_checksum` of the rest of the file.
CHECKSUM_KEY = "vitfer_sha256"
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


def describe_content(path: PathLike, head: Optional[bytes] = None) -> str:
    """What the first bytes of ``path`` look like, in words (for error messages)."""
    path = Path(path)
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
    if not head:
        return "an empty file"
    text = head.lstrip()
    low = text[:64].lower()
    if low.startswith(b"version https://git-lfs"):
        return "a git-lfs pointer file (the real file was never fetched: run `git lfs pull`)"
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "an HTML/XML page (a failed or redirected download?)"
    if low.startswith((b"{", b"[")):
        return "JSON text (a config or an error response, not weights)"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array (not an .npz archive of named arrays)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive (unpack it first)"
    if head.startswith(_ZIP_MAGIC):
        return "a zip archive that is neither a torch.save checkpoint nor an .npz"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:32]):
        preview = head[:32].decode("ascii", "replace").replace("\n", "\\n")
        return f"text starting with {preview!r}"
    return f"binary data starting with bytes {head[:8].hex(' ')}"


def _zip_kind(path: Path) -> Optional[str]:
    """``"npz"``, ``"torch"`` or ``None`` (unknown zip) for a file starting with the zip magic; a
    zip whose directory cannot be read (truncated) counts as torch, so that torch's reader
    reports it."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    return None


def sniff_format(path: PathLike) -> str:
    """The checkpoint format of ``path`` told from its content: ``"safetensors"``, ``"torch"`` or
    ``"npz"`` (see the module docstring for the magic bytes).

    Raises:
        CheckpointError: the file is missing, or its content is none of these; the message names
            the file and what it looks like.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint file {path}: {e}") from e
    # safetensors first: its header length may well start with the byte 0x80 of a pickle.
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= _MAX_ST_HEADER:
        return "safetensors"  # (a header longer than the file: truncated; its reader says so)
    if head.startswith(_ZIP_MAGIC):
        kind = _zip_kind(path)
        if kind is not None:
            return kind
    elif head[:1] == bytes([_PICKLE_PROTO]):
        return "torch"
    what = describe_content(path, head)
    if 0 < size < 9 and what.startswith("binary"):
        what = f"only {size} bytes long, too short for any checkpoint format (truncated?)"
    raise CheckpointError(
        f"{_describe(path)} is not a checkpoint vitfer can read: it is {what}. vitfer reads safetensors, "
        f"torch.save (.pth/.pt/.bin) and JAX .npz files, whatever their names; delete the file and "
        f"download / convert it again"
    )


def read_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The str -> str metadata of a safetensors file ({} when it has none).

    Raises:
        CheckpointError: the file is not safetensors (the message says what it is instead), or
            it cannot be read.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt != "safetensors":
        what = "a torch.save checkpoint" if fmt == "torch" else "a JAX .npz archive"
        raise CheckpointError(f"{_describe(path)} is not a safetensors file: its content is {what}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read the safetensors file {_describe(path)}: {e}. The file is truncated or corrupt; "
            f"delete it and download / convert it again"
        ) from e


def safetensors_checksum(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """``"sha256:<hex>"`` of ``tensors`` (name, dtype, shape and bytes of each, by name) and of
    the ``metadata`` entries other than :data:`CHECKSUM_KEY` (what :func:`atomic_save_safetensors`
    records and reading a safetensors file verifies)."""
    h = hashlib.sha256()
    for k in sorted(metadata):
        if k != CHECKSUM_KEY:
            h.update(f"m\0{k}\0{metadata[k]}\0".encode())
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        h.update(f"t\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def _read_safetensors(path: Path, device: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    meta = read_safetensors_metadata(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device=device)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"cannot read the safetensors file {_describe(path)}: {e}. The file is truncated or "
            f"corrupt; delete it and download / convert it again"
        ) from e
    recorded = meta.get(CHECKSUM_KEY)
    if recorded is not None:
        actual = safetensors_checksum(tensors, meta)
        if actual != recorded:
            raise CheckpointError(
                f"the safetensors file {_describe(path)} is corrupt: its tensors or metadata do not match the "
                f"checksum recorded when it was written ({recorded[:23]}..., now {actual[:23]}...); delete it and "
                f"write / download / convert it again"
            )
    return tensors, meta


def _allow_namespace():
    """Allow ``argparse.Namespace`` (training scripts' ``args``) in weights-only unpickling."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext()


def _read_torch(path: Path) -> Any:
    try:
        # From an open file, not a name: torch.load picks a reader from a ".safetensors" suffix itself.
        with _allow_namespace(), open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        if any("unsupported operand" in ln.lower() for ln in first):  # junk bytes, not a refused class
            raise CheckpointError(
                f"cannot read the torch checkpoint {_describe(path)}: its pickle stream is invalid "
                f"({next(ln.strip() for ln in first if 'unsupported operand' in ln.lower())}). The file is "
                f"truncated, corrupt or not a torch.save file"
            ) from e
        detail = next((ln.strip() for ln in first if "global" in ln.lower()), first[0] if first else "")
        raise CheckpointError(
            f"refusing to load {_describe(path)}: its pickle holds objects other than tensors and plain "
            f"containers ({detail}). vitfer reads .pth/.bin files only with torch.load(weights_only=True) "
            f"and never runs code from a checkpoint. If you trust the file, re-save its state dict "
            f"(torch.save(model.state_dict(), ...)) or convert it to safetensors yourself"
        ) from e
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, KeyError (bad opcode), ...
        raise CheckpointError(
            f"cannot read the torch checkpoint {_describe(path)}: {type(e).__name__}: {str(e).rstrip('. ')}. "
            f"The file is truncated, corrupt or not a torch.save file"
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
    """Read a checkpoint file safely; its format is told from its content (:func:`sniff_format`),
    whatever its name.

    Returns:
        ``(tensors, metadata, fmt)``: ``tensors`` maps names to ``torch.Tensor`` (``np.ndarray``
        for ``fmt == "npz"``), ``metadata`` is the safetensors metadata ({} otherwise), ``fmt`` is
        ``"safetensors"``, ``"torch"`` or ``"npz"``.

    Raises:
        CheckpointError: missing file, content of no supported format, truncated / corrupt file,
            or a pickle that would run code; the message names the file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_checkpoint(path / name, device)
        raise CheckpointError(f"{path} is a folder without model.safetensors or pytorch_model.bin")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    fmt = sniff_format(path)
    if fmt == "safetensors":
        tensors, meta = _read_safetensors(path, device)
        return tensors, meta, "safetensors"
    if fmt == "npz":
        return _read_npz(path), {}, "npz"
    sd = unwrap_state_dict(_read_torch(path), str(path))
    return ({k: v.to(device) for k, v in sd.items()} if device != "cpu" else sd), {}, "torch"


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
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # disk full, quota, permissions ...: say what is left
            kept = f"the previous {path} is left intact" if path.exists() else f"no {path.name} was written"
            raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}; {kept}") from e
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
    """Write ``tensors`` to ``path`` as safetensors, atomically (:func:`atomic_write`), with
    their checksum in the metadata (:data:`CHECKSUM_KEY`; verified when the file is read).

    On any error the temporary file is removed and a previous file at ``path`` is left untouched.
    """
    prepared = _prepare_for_safetensors(tensors)
    meta = {str(k): str(v) for k, v in (metadata or {}).items() if str(k) != CHECKSUM_KEY}
    meta[CHECKSUM_KEY] = safetensors_checksum(prepared, meta)
    # save_file is looked up at call time so that tests can make it fail mid-write.
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(prepared, tmp, metadata=meta))
