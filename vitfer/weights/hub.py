"""Fetching checkpoints from the Hugging Face hub and caching their converted form.

Everything is resolved when a function is called, never at import: ``HF_HUB_CACHE`` (or
``HF_HOME``/hub) for the hub cache, ``HF_HUB_OFFLINE`` for offline mode (then only cached files
are used: ``local_files_only=True``), ``VITFER_HOME`` (default ``~/.cache/vitfer``) for vitfer's
converted files: ``$VITFER_HOME/converted/<owner>--<repo>@<revision>.safetensors``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from .errors import CheckpointError
from .io import atomic_save_safetensors, read_checkpoint, sha256_file

__all__ = [
    "HF_PREFIX",
    "HUB_FILENAMES",
    "FetchResult",
    "converted_cache_path",
    "download_hub_checkpoint",
    "fetch_state_dict",
    "hf_cache_dir",
    "hf_offline",
    "parse_hf_source",
    "vitfer_home",
]

_logger = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


def vitfer_home() -> Path:
    """``$VITFER_HOME``, default ``~/.cache/vitfer``."""
    return Path(os.environ.get("VITFER_HOME") or Path.home() / ".cache" / "vitfer").expanduser()


def hf_cache_dir() -> Optional[str]:
    """The hub cache folder from the environment now (``HF_HUB_CACHE``, else ``HF_HOME``/hub), or
    ``None`` for huggingface_hub's own default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _effective_hf_cache_dir() -> str:
    d = hf_cache_dir()
    if d is not None:
        return d
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now."""
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return v.strip().lower() in _TRUE


def parse_hf_source(source: str) -> tuple[str, Optional[str]]:
    """``"hf-hub:owner/repo@rev"`` (prefix optional) -> ``("owner/repo", "rev")`` (rev ``None`` if absent)."""
    s = source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source
    repo, _, rev = s.partition("@")
    if not repo or repo.count("/") > 1 or repo.startswith("/") or repo.endswith("/"):
        raise CheckpointError(f"invalid hub source {source!r}: expected 'hf-hub:<owner>/<repo>[@<revision>]'")
    return repo, (rev or None)


def _safe(s: str) -> str:
    return s.replace("/", "--").replace("\\", "--")


def converted_cache_path(repo_id: str, revision: Optional[str] = None) -> Path:
    """``$VITFER_HOME/converted/<owner>--<repo>@<revision>.safetensors``."""
    return vitfer_home() / "converted" / f"{_safe(repo_id)}@{_safe(revision or 'main')}.safetensors"


def _hub_cache_folder(repo_id: str) -> str:
    return os.path.join(_effective_hf_cache_dir(), "models--" + repo_id.replace("/", "--"))


def _cold_cache_message(repo_id: str, revision: Optional[str], model_name: str, offline: bool) -> str:
    rev = revision or "main"
    cache = _effective_hf_cache_dir()
    folder = _hub_cache_folder(repo_id)
    why = "offline mode (HF_HUB_OFFLINE=1) and they are not cached" if offline else "they could not be downloaded"
    return (
        f"pretrained weights for {model_name!r} are not available: {why}.\n"
        f"  hub file: {repo_id} / {HUB_FILENAMES[0]} (or {HUB_FILENAMES[1]}) at revision {rev!r}\n"
        f"  looked in the Hugging Face cache {cache} (folder {folder})\n"
        f"  and in vitfer's converted cache {converted_cache_path(repo_id, revision)}\n"
        f"To place the weights by hand (on a machine with internet):\n"
        f"  1. download https://huggingface.co/{repo_id}/resolve/{rev}/{HUB_FILENAMES[0]}\n"
        f"     (or `huggingface-cli download {repo_id} {HUB_FILENAMES[0]} --cache-dir {cache}`, then copy\n"
        f"     {folder} to this machine's cache:\n"
        f"     snapshots/<commit>/{HUB_FILENAMES[0]} plus refs/{rev} holding <commit>);\n"
        f"  2. or pass the file itself: create_model({model_name!r}, pretrained='/path/to/{HUB_FILENAMES[0]}');\n"
        f"  3. or run `vitfer convert --model {model_name} --out DIR` there and copy DIR/{model_name}.safetensors\n"
        f"     to {converted_cache_path(repo_id, revision)}."
    )


def download_hub_checkpoint(
    repo_id: str, revision: Optional[str] = None, model_name: str = "this model"
) -> tuple[Path, str]:
    """``hf_hub_download`` of ``model.safetensors``, falling back to ``pytorch_model.bin``.

    Returns:
        ``(local_path, filename)``.

    Raises:
        CheckpointError: neither file is available (the message says how to place one by hand).
    """
    from huggingface_hub import hf_hub_download

    try:
        from huggingface_hub.errors import (
            EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub.utils import (
            EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
            RevisionNotFoundError,
        )

    from vitfer import __version__

    offline = hf_offline()
    errors: list[BaseException] = []
    for filename in HUB_FILENAMES:
        try:
            path = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=hf_cache_dir(),
                library_name="vitfer",
                library_version=__version__,
                local_files_only=offline,
            )
            if filename != HUB_FILENAMES[0]:
                _logger.info("%s has no %s; using %s", repo_id, HUB_FILENAMES[0], filename)
            return Path(path), filename
        except RepositoryNotFoundError as e:
            raise CheckpointError(
                f"hub repository {repo_id!r} not found (or it is private / gated): {e}"
            ) from e
        except RevisionNotFoundError as e:
            raise CheckpointError(f"hub repository {repo_id!r} has no revision {revision!r}: {e}") from e
        except (EntryNotFoundError, LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
            # Not on the hub, not cached (offline) or no connection: try the next file name.
            _logger.debug("hf_hub_download(%s, %s) failed: %s", repo_id, filename, e)
            errors.append(e)
        except HfHubHTTPError as e:  # pragma: no cover - network dependent (e.g. 5xx)
            errors.append(e)
    err = CheckpointError(_cold_cache_message(repo_id, revision, model_name, offline))
    raise err from (errors[-1] if errors else None)


def _metadata_json(meta: dict[str, str]) -> dict[str, Any]:
    try:
        return json.loads(meta.get("vitfer", "{}"))
    except ValueError:
        return {}


@dataclass
class FetchResult:
    """A converted (timm-layout) state dict for an architecture, and where it came from."""

    state_dict: dict[str, Tensor]
    source: str  # "hf-hub:<repo>@<rev>" or a path
    layout: str  # of the source: timm / vitfer / google-npz / ibm-crossvit-pth / torchvision-pth
    info: dict[str, Any] = field(default_factory=dict)  # source file, sha256, cache path ...
    base: dict[str, Any] = field(default_factory=dict)  # the source file's own vitfer metadata, if any


def _converted_metadata(model_name: str, sd: dict[str, Tensor], info: dict[str, Any]) -> dict[str, str]:
    from .checkpoint import describe_state_dict

    return {"vitfer": json.dumps(describe_state_dict(model_name, sd, info), sort_keys=True), "format": "pt"}


def _fetch_hub(model_name: str, repo_id: str, revision: Optional[str]) -> FetchResult:
    from .convert import convert_checkpoint

    src = f"{HF_PREFIX}{repo_id}@{revision or 'main'}"
    cache = converted_cache_path(repo_id, revision)
    if cache.is_file():
        try:
            tensors, meta, fmt = read_checkpoint(cache)
            sd, _ = convert_checkpoint(model_name, tensors, fmt, str(cache), meta)
            info = _metadata_json(meta)
            _logger.info("loaded converted weights of %s from %s", model_name, cache)
            src_info = info.get("source_info", {})
            extra = {"cache_path": str(cache), "class_names": info.get("class_names")}
            return FetchResult(sd, src, src_info.get("layout", "vitfer"), {**src_info, **extra}, info)
        except CheckpointError as e:
            _logger.warning("ignoring the unusable converted cache file %s (%s); converting again", cache, e)
    path, filename = download_hub_checkpoint(repo_id, revision, model_name)
    tensors, meta, fmt = read_checkpoint(path)
    sd, layout = convert_checkpoint(model_name, tensors, fmt, f"{repo_id}/{filename}", meta)
    commit = path.parent.name if path.parent.parent.name == "snapshots" else None
    source_info = {
        "hub_repo": repo_id,
        "revision": revision or "main",
        "commit": commit,
        "filename": filename,
        "sha256": sha256_file(path),
        "layout": layout,
    }
    base = _metadata_json(meta)
    try:
        cache_info = {"source": src, "source_info": source_info, "base": base}
        atomic_save_safetensors(sd, cache, _converted_metadata(model_name, sd, cache_info))
        _logger.info("cached converted weights of %s at %s", model_name, cache)
    except OSError as e:  # a read-only home must not stop loading
        _logger.warning("could not write the converted cache %s: %s", cache, e)
    info = {**source_info, "cache_path": str(cache), "class_names": base.get("class_names")}
    return FetchResult(sd, src, layout, info, base)


def fetch_state_dict(model_name: str, source: Union[bool, str, os.PathLike] = True) -> FetchResult:
    """Resolve ``source`` and return a validated timm-layout state dict of ``model_name``'s architecture.

    Args:
        model_name: a registered name; a timm-style ``"arch.tag"`` with ``source=True`` fetches
            ``timm/arch.tag`` instead of the default tag.
        source: ``True`` (the model's default ``pretrained_cfg.hf_hub_id``), ``"hf-hub:<repo>[@<rev>]"``,
            or a local file (``.safetensors``, ``.pth``/``.bin``, ``.npz``) or folder.
    """
    from .convert import _spec, convert_checkpoint

    spec = _spec(model_name)
    if source is True:
        hub_id = spec.pretrained_cfg.hf_hub_id
        tag = model_name.split(".", 1)[1] if "." in model_name else None
        if tag and hub_id and hub_id.startswith("timm/") and tag != spec.pretrained_cfg.tag:
            hub_id = f"timm/{spec.name}.{tag}"  # a timm-style "arch.tag" name asks for that tag's weights
        if not hub_id:
            raise CheckpointError(f"{spec.name} has no default pretrained weights (pretrained_cfg.hf_hub_id is None)")
        repo, rev = parse_hf_source(hub_id)
        return _fetch_hub(spec.name, repo, rev)
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        repo, rev = parse_hf_source(source)
        return _fetch_hub(spec.name, repo, rev)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        tensors, meta, fmt = read_checkpoint(path)
        sd, layout = convert_checkpoint(spec.name, tensors, fmt, str(path), meta)
        base = _metadata_json(meta)
        info = {"path": str(path), "layout": layout, "class_names": base.get("class_names")}
        return FetchResult(sd, str(path), layout, info, base)
    raise CheckpointError(
        f"pretrained must be True, a file path or 'hf-hub:<repo>[@<revision>]', got {source!r}"
    )
