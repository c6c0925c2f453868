"""Model lookups shared by the engine and the weights code: the family modules, a model's
registered spec and default config, meta-device builds, and the names of its classifier and first
convolution in a pretrained config."""
from __future__ import annotations

import functools
import importlib
import logging
from typing import Any, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .registry import get_model_spec, is_model

__all__ = ["FAMILIES", "build_meta", "classifier_names", "default_config", "first_conv_names",
           "import_all_families", "import_family", "meta_init", "model_spec"]

_logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("vit", "convit", "crossvit", "vit_hybrid", "resnet", "vgg")


# --------------------------------------------------------------------------------------------
# Family modules and reference models
# --------------------------------------------------------------------------------------------
def import_family(family: str):
    """Import ``vitfer.models.<family>`` (registers its models); ``None`` if it does not exist yet."""
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {list(FAMILIES)}")
    modname = f"vitfer.models.{family}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return None
        raise


def import_all_families() -> list[str]:
    """Import every family module that exists; returns the families found."""
    return [f for f in FAMILIES if import_family(f) is not None]


def model_spec(name: str):
    """The :class:`~vitfer.models.registry.ModelSpec` of ``name`` (an alias or ``arch.tag`` too),
    after importing the family modules if it is not registered yet."""
    if not is_model(name):
        import_all_families()
    return get_model_spec(name)


class _MetaInit(TorchFunctionMode):
    """Create tensors on the meta device unless a device is given (small index helpers stay on CPU,
    so that constructors may call ``.tolist()`` on ``linspace`` / ``arange``)."""

    _keep_cpu = frozenset({torch.linspace, torch.arange, torch.logspace, torch.tensor, torch.as_tensor})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        from torch.utils._device import _device_constructors

        if func in _device_constructors() and kwargs.get("device") is None and func not in self._keep_cpu:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def meta_init() -> TorchFunctionMode:
    """Context manager: modules built inside have their parameters on the meta device (no memory,
    no init cost), while small index helpers (``linspace``, ``arange``, ``tensor``) stay on the CPU.
    ``module.to_empty(device="cpu")`` then allocates (uninitialised) storage."""
    return _MetaInit()


def build_meta(name: str, **overrides: Any) -> nn.Module:
    """Build ``name`` with parameters on the meta device (shapes only; fast for any size).

    Falls back to a normal CPU build if a constructor cannot run on meta tensors.
    """
    spec = model_spec(name)
    try:
        with _MetaInit():
            model = spec.builder(**overrides)
    except (TypeError, ValueError):
        raise
    except Exception as e:  # a constructor that needs real data (e.g. .item())
        _logger.debug("meta build of %s failed (%s); building on the CPU", name, e)
        model = spec.builder(**overrides)
    model.model_name = spec.name
    return model



@functools.lru_cache(maxsize=64)
def _default_model_cfg(name: str) -> Any:
    return getattr(build_meta(name), "cfg", None)


def default_config(name: str) -> Any:
    """The config dataclass of ``name`` at its registered defaults (``None`` if the model has none)."""
    return _default_model_cfg(model_spec(name).name)


def classifier_names(pretrained_cfg: Any) -> tuple[str, ...]:
    c = pretrained_cfg.get("classifier") if isinstance(pretrained_cfg, Mapping) else pretrained_cfg.classifier
    if not c:
        return ()
    return (c,) if isinstance(c, str) else tuple(c)


def first_conv_names(pretrained_cfg: Any) -> tuple[str, ...]:
    c = pretrained_cfg.get("first_conv") if isinstance(pretrained_cfg, Mapping) else pretrained_cfg.first_conv
    if not c:
        return ()
    return (c,) if isinstance(c, str) else tuple(c)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
