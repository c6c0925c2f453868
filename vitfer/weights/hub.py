"""Fetching checkpoints from the Hugging Face hub and caching their converted form.

Everything is resolved when a function is called, never at import: ``HF_HUB_CACHE`` (or
``HF_HOME``/hub) for the hub cache, ``HF_HUB_OFFLINE`` for offline mode (then only cached files
are used: ``local_files_only=True``), ``HF_ENDPOINT`` for the hub's address, ``VITFER_HOME``
(default ``~/.cache/vitfer``) for vitfer's converted files:
``$VITFER_HOME/converted/<owner>--<repo>@<revision>.safetensors``.

A converted file records the hub commit (and the sha256) of the file it was converted from. Each
load first resolves the revision with ``hf_hub_download`` (on the hub, or from the local hub
cache's ``refs/<revision>`` offline) and uses the converted file only if it was made from that
commit; when ``refs/main`` has moved, the new file is converted and the cache rewritten. Only when
the hub file is not available at all (offline, or the hub unreachable, and the hub cache cold)
is the converted file used as it is.

Before asking the hub (unless offline), a quick TCP connect to the endpoint (or the proxy in
``HTTPS_PROXY``/``HTTP_PROXY``) checks that it can be reached; if not, only the local caches are
used and a missing file fails at once with a message that says the hub was unreachable, instead
of after huggingface_hub's retries. ``VITFER_HUB_PROBE=0`` turns the check off.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from torch import Tensor

from .errors import CheckpointError
from .io import atomic_save_safetensors, read_checkpoint, read_safetensors_metadata, sha256_file

__all__ = [
    "HF_PREFIX",
    "HUB_FILENAMES",
    "FetchResult",
    "converted_cache_path",
    "download_hub_checkpoint",
    "fetch_state_dict",
    "hf_cache_dir",
    "hf_cli",
    "hf_offline",
    "hub_endpoint",
    "hub_unreachable",
    "parse_hf_source",
    "pretrained_tag",
    "vitfer_home",
]

_logger = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}
# Seconds the reachability check waits for a TCP connection to the hub (or proxy).
PROBE_TIMEOUT_S = 2.5


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


def hub_endpoint() -> str:
    """The hub's address now: ``HF_ENDPOINT`` if set, else huggingface_hub's (``https://huggingface.co``)."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except Exception:  # pragma: no cover
        return "https://huggingface.co"


def _probe_target(endpoint: str) -> tuple[Optional[str], int, str]:
    """(host, port, description) that a request to ``endpoint`` connects to first (the proxy if any)."""
    url = urllib.parse.urlsplit(endpoint)
    host, scheme = url.hostname, (url.scheme or "https")
    try:
        port = url.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = 443
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and host and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        try:
            pport = p.port or (443 if p.scheme == "https" else 80)
        except ValueError:
            pport = 80
        return p.hostname, pport, f"proxy {p.hostname}:{pport} for {host}"
    return host, port, f"{host}:{port}"


def hub_unreachable(endpoint: Optional[str] = None, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the hub cannot be reached (one TCP connect, at most ``timeout`` seconds, name
    resolution included), or ``None`` when it can (or ``VITFER_HUB_PROBE=0`` turns the check off)."""
    if os.environ.get("VITFER_HUB_PROBE", "").strip().lower() in _FALSE:
        return None
    endpoint = endpoint or hub_endpoint()
    host, port, what = _probe_target(endpoint)
    if not host:
        return f"no host in the endpoint {endpoint!r}"
    result: list[Optional[str]] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as e:
            result.append(f"{what}: {e.strerror or e}")

    t = threading.Thread(target=connect, name="vitfer-hub-probe", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return f"{what}: no answer within {timeout:g} s"
    return result[0]


def hf_cli() -> str:
    """The command line that the installed huggingface_hub provides: ``hf`` (huggingface_hub >= 0.34)
    or ``huggingface-cli`` (older)."""
    try:
        from importlib.metadata import distribution

        names = {ep.name for ep in distribution("huggingface_hub").entry_points if ep.group == "console_scripts"}
    except Exception:  # pragma: no cover - metadata missing
        names = set()
    if "hf" not in names and "huggingface-cli" in names:
        return "huggingface-cli"
    return "hf"


class _DropRetryEcho(logging.Filter):
    """huggingface_hub logs two lines per retry (the error, then "Retrying in Ns [Retry i/n]."):
    keep the first."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Retrying in ") and "[Retry " in msg)


@contextlib.contextmanager
def _hub_logging() -> Iterator[None]:
    """During a hub call: one line per retry, and each printed once (huggingface_hub's logger has
    its own stderr handler *and* propagates to the root logger, so with a configured root logger,
    as on vitfer's command line, every warning came out twice)."""
    lib = logging.getLogger("huggingface_hub")
    flt = _DropRetryEcho()
    # (a logger's filters see only the records logged on it: the modules that log retries)
    loggers = [logging.getLogger("huggingface_hub.utils._http"), logging.getLogger("huggingface_hub.file_download")]
    for lg in loggers:
        lg.addFilter(flt)
    propagate = lib.propagate
    if lib.handlers and logging.getLogger().handlers:
        lib.propagate = False
    try:
        yield
    finally:
        lib.propagate = propagate
        for lg in loggers:
            lg.removeFilter(flt)


def pretrained_tag(model_name: str) -> Optional[str]:
    """The timm tag of ``"arch.tag"`` (``None`` for a plain name); see
    :func:`vitfer.models.registry.pretrained_tag`."""
    from vitfer.models.families import model_spec
    from vitfer.models.registry import pretrained_tag as _tag

    model_spec(model_name)  # registers the families, raises for an unknown name
    return _tag(model_name)


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


def _cold_cache_message(
    repo_id: str, revision: Optional[str], model_name: str, offline: bool, unreachable: Optional[str] = None
) -> str:
    rev = revision or "main"
    cache = _effective_hf_cache_dir()
    folder = _hub_cache_folder(repo_id)
    endpoint = hub_endpoint()
    conv = converted_cache_path(repo_id, revision)
    f0 = HUB_FILENAMES[0]
    if offline:
        why = "offline mode (HF_HUB_OFFLINE=1) and they are not cached"
    elif unreachable:
        why = f"the Hugging Face hub {endpoint} could not be reached ({unreachable}) and they are not cached"
    else:
        why = "they could not be downloaded"
    return (
        f"pretrained weights for {model_name!r} are not available: {why}.\n"
        f"  hub file: {repo_id} / {f0} (or {HUB_FILENAMES[1]}) at revision {rev!r}\n"
        f"  looked in the Hugging Face cache {cache} (folder {folder})\n"
        f"  and in vitfer's converted cache {conv}\n"
        f"On a machine with internet, download {endpoint}/{repo_id}/resolve/{rev}/{f0}, then one of:\n"
        f"  1. pass the file itself:\n"
        f"       command line: vitfer finetune --model {model_name} --pretrained /path/to/{f0} ...\n"
        f"       Python:       create_model({model_name!r}, pretrained='/path/to/{f0}')\n"
        f"  2. or fill this machine's Hugging Face cache: `{hf_cli()} download {repo_id} {f0} --cache-dir DIR`\n"
        f"     there, then copy DIR/{os.path.basename(folder)} to {cache}\n"
        f"     (snapshots/<commit>/{f0} plus refs/{rev} holding <commit>);\n"
        f"  3. or convert it once: `vitfer convert --model {model_name} --from /path/to/{f0} --out DIR`, then pass\n"
        f"     DIR/{model_name}.safetensors as the pretrained file (1.) or copy it to {conv}."
    )


class _HubUnavailable(CheckpointError):
    """The hub file is neither downloadable nor cached (the cold-cache message)."""


def download_hub_checkpoint(
    repo_id: str,
    revision: Optional[str] = None,
    model_name: str = "this model",
    local_files_only: Optional[bool] = None,
) -> tuple[Path, str]:
    """``hf_hub_download`` of ``model.safetensors``, falling back to ``pytorch_model.bin``.

    Args:
        local_files_only: ``None``: ``HF_HUB_OFFLINE`` decides, and when it is not set the hub's
            reachability is checked first (:func:`hub_unreachable`; unreachable -> local cache only).

    Returns:
        ``(local_path, filename)``.

    Raises:
        CheckpointError: neither file is available (the message says how to place one by hand),
            the repository or revision does not exist.
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
    unreachable = None
    if local_files_only is None:
        local_files_only = offline
        if not offline:
            unreachable = hub_unreachable()
            if unreachable:
                _logger.warning("the Hugging Face hub is unreachable (%s); using only the local caches", unreachable)
                local_files_only = True
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now (huggingface_hub reads it at import)
    errors: list[BaseException] = []
    for filename in HUB_FILENAMES:
        try:
            with _hub_logging():
                path = hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=hf_cache_dir(),
                    library_name="vitfer",
                    library_version=__version__,
                    local_files_only=local_files_only,
                    endpoint=endpoint.rstrip("/") if endpoint else None,
                )
            if filename != HUB_FILENAMES[0]:
                _logger.info("%s has no %s; using %s", repo_id, HUB_FILENAMES[0], filename)
            return Path(path), filename
        except RepositoryNotFoundError as e:
            hint = ""
            if repo_id.startswith("timm/") and "." in repo_id:
                arch, tag = repo_id[len("timm/"):].split(".", 1)
                hint = (f"; if {model_name!r} names a pretrained tag, {tag!r} may not exist for {arch} "
                        f"(the tags are at https://huggingface.co/models?search=timm/{arch})")
            raise CheckpointError(
                f"hub repository {repo_id!r} not found (or it is private / gated){hint}: {e}"
            ) from e
        except RevisionNotFoundError as e:
            raise CheckpointError(f"hub repository {repo_id!r} has no revision {revision!r}: {e}") from e
        except (EntryNotFoundError, LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
            # Not on the hub, not cached (offline) or no connection: try the next file name.
            _logger.debug("hf_hub_download(%s, %s) failed: %s", repo_id, filename, e)
            errors.append(e)
        except HfHubHTTPError as e:  # pragma: no cover - network dependent (e.g. 5xx)
            errors.append(e)
    err = _HubUnavailable(_cold_cache_message(repo_id, revision, model_name, offline, unreachable))
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


def _read_converted(model_name: str, cache: Path, src: str) -> FetchResult:
    """The converted cache file ``cache`` as a :class:`FetchResult` (raises CheckpointError)."""
    from .convert import convert_checkpoint

    tensors, meta, fmt = read_checkpoint(cache)
    sd, _ = convert_checkpoint(model_name, tensors, fmt, str(cache), meta)
    info = _metadata_json(meta)
    src_info = info.get("source_info", {})
    extra = {"cache_path": str(cache), "class_names": info.get("class_names")}
    _logger.info("loaded converted weights of %s from %s (commit %s)", model_name, cache, src_info.get("commit"))
    return FetchResult(sd, src, src_info.get("layout", "vitfer"), {**src_info, **extra}, info)


def _cache_matches(cache: Path, path: Path, filename: str, commit: Optional[str]) -> bool:
    """Whether the converted file ``cache`` was made from the hub file ``path`` (same commit and
    file name; the same sha256 where the commit is unknown)."""
    if not cache.is_file():
        return False
    try:
        src_info = _metadata_json(read_safetensors_metadata(cache)).get("source_info") or {}
    except CheckpointError as e:
        _logger.warning("ignoring the unusable converted cache file %s (%s); converting again", cache, e)
        return False
    if src_info.get("filename") not in (None, filename):
        same = False
    elif commit is not None and src_info.get("commit"):
        same = src_info["commit"] == commit
    else:
        same = bool(src_info.get("sha256")) and src_info.get("sha256") == sha256_file(path)
    if not same:
        _logger.info(
            "the converted cache %s was made from commit %s; the hub file is now commit %s: converting again",
            cache, src_info.get("commit"), commit,
        )
    return same


def _fetch_hub(model_name: str, repo_id: str, revision: Optional[str], display_name: Optional[str] = None) -> FetchResult:
    from .convert import convert_checkpoint

    src = f"{HF_PREFIX}{repo_id}@{revision or 'main'}"
    cache = converted_cache_path(repo_id, revision)
    try:
        path, filename = download_hub_checkpoint(repo_id, revision, display_name or model_name)
    except _HubUnavailable:
        if cache.is_file():  # offline / unreachable with a cold hub cache: the converted file as it is
            try:
                res = _read_converted(model_name, cache, src)
                _logger.info("the hub file of %s is not available; using the converted cache %s", src, cache)
                return res
            except CheckpointError as e:
                _logger.warning("ignoring the unusable converted cache file %s (%s)", cache, e)
        raise
    commit = path.parent.name if path.parent.parent.name == "snapshots" else None
    if _cache_matches(cache, path, filename, commit):
        try:
            return _read_converted(model_name, cache, src)
        except CheckpointError as e:
            _logger.warning("ignoring the unusable converted cache file %s (%s); converting again", cache, e)
    tensors, meta, fmt = read_checkpoint(path)
    sd, layout = convert_checkpoint(model_name, tensors, fmt, f"{repo_id}/{filename}", meta)
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
            ``timm/arch.tag`` (:func:`vitfer.models.registry.pretrained_hub_id`), never another
            tag (an unknown tag is a "repository not found" error). With another ``source`` the
            tag is only a label.
        source: ``True`` (the model's default ``pretrained_cfg.hf_hub_id``), ``"hf-hub:<repo>[@<rev>]"``,
            or a local file (``.safetensors``, ``.pth``/``.bin``, ``.npz``: told by content) or folder.

    A vitfer checkpoint (``vitfer.save``) is validated against the architecture its metadata
    describes (its config overrides: patch size, image size, classes ...), not the default one.
    """
    from vitfer.models.registry import pretrained_hub_id

    from vitfer.models.families import model_spec
    from .convert import convert_checkpoint

    spec = model_spec(model_name)
    if source is True:
        try:
            hub_id = pretrained_hub_id(model_name)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        if not hub_id:
            raise CheckpointError(f"{spec.name} has no default pretrained weights (pretrained_cfg.hf_hub_id is None)")
        repo, rev = parse_hf_source(hub_id)
        return _fetch_hub(spec.name, repo, rev, model_name)
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        repo, rev = parse_hf_source(source)
        return _fetch_hub(spec.name, repo, rev, model_name)
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
