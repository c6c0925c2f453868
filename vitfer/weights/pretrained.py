"""Loading pretrained weights into a model built with the user's overrides.

``vitfer.models.create_model(name, pretrained=...)`` calls :func:`load_pretrained`, which

1. gets a validated state dict for the *architecture's* default config, or for the config a
   vitfer checkpoint's metadata records (:func:`vitfer.weights.hub.fetch_state_dict`: hub +
   converted cache, or a local file);
2. adapts it to this model: the family's ``checkpoint_filter_fn(state_dict, model, grid_sizes)``
   (resamples position embeddings for another ``img_size``, from the checkpoint's own patch grid
   where its metadata gives it, non-square ones included), the first conv for another ``in_chans``
   (:func:`adapt_input_conv`, as timm), and the classifier: a checkpoint head whose class count
   differs from the model's (or a checkpoint without head) leaves the model's freshly initialised
   head in place (logged);
3. loads strictly (:func:`load_state_dict_strict`): every other key must be present with its shape.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
from typing import Any, Iterable, Mapping, Optional, Union

from torch import Tensor, nn

from .errors import CheckpointError

__all__ = [
    "adapt_input_conv",
    "adapt_state_dict",
    "checkpoint_grid_sizes",
    "load_pretrained",
    "load_state_dict_strict",
    "pos_embed_grid_sizes",
]

_logger = logging.getLogger(__name__)


def adapt_input_conv(in_chans: int, weight: Tensor) -> Tensor:
    """Adapt a first-conv weight (O, I, kh, kw) to ``in_chans`` input channels, as timm does.

    One channel: sum over the input channels (a grey image equals R = G = B, so the response to
    it is unchanged). Otherwise: repeat the channels cyclically up to ``in_chans`` and scale by
    ``I / in_chans`` (keeps the activation scale).
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be positive, got {in_chans}")
    if weight.ndim != 4:
        raise CheckpointError(f"cannot adapt a first-conv weight of shape {tuple(weight.shape)} (expected 4-D)")
    base = weight.shape[1]
    if in_chans == base:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = int(math.ceil(in_chans / base))
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (base / float(in_chans))
    return w.to(dtype)


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str, allow_missing: Iterable[str] = ()
) -> None:
    """Load ``state_dict`` into ``model``; key sets and shapes must agree exactly.

    ``allow_missing`` are model keys that may be absent (they keep their current values).

    Raises:
        CheckpointError: naming ``source``, every missing key, every unexpected key and every
            (checkpoint, model) shape pair.
    """
    from .convert import format_mismatch

    expected = model.state_dict()
    allow = set(allow_missing)
    missing = [k for k in expected if k not in state_dict and k not in allow]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
        for k in state_dict
        if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        name = getattr(model, "model_name", "") or type(model).__name__
        raise CheckpointError(format_mismatch(source, name, missing, unexpected, shapes))
    result = model.load_state_dict(dict(state_dict), strict=False)
    left = set(result.missing_keys) - allow
    if left or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise CheckpointError(f"{source}: load_state_dict left {sorted(left)} / {result.unexpected_keys}")


def _classifiers(model: nn.Module, spec) -> tuple[str, ...]:
    from .convert import classifier_names

    pcfg = getattr(model, "pretrained_cfg", None) or spec.pretrained_cfg.to_dict()
    return classifier_names(pcfg) or classifier_names(spec.pretrained_cfg)


def pos_embed_grid_sizes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{position-embedding key: (H, W) patch grid}`` of a transformer (``pos_embed``, or
    ``pos_embed_<i>`` per CrossViT branch); ``{}`` for a CNN."""
    pe = getattr(model, "patch_embed", None)
    if isinstance(pe, nn.ModuleList):
        return {f"pos_embed_{i}": (int(p.grid_size[0]), int(p.grid_size[1]))
                for i, p in enumerate(pe) if getattr(p, "grid_size", None) is not None}
    grid = getattr(pe, "grid_size", None) if pe is not None else None
    return {"pos_embed": (int(grid[0]), int(grid[1]))} if grid is not None else {}


def checkpoint_grid_sizes(model_name: str, base: Optional[Mapping[str, Any]]) -> Optional[dict[str, tuple[int, int]]]:
    """The position-embedding grids of the model that a checkpoint's vitfer metadata ``base``
    describes (its model name and config overrides: ``img_size``, ``patch_size`` ...), if it
    describes ``model_name``'s architecture; ``None`` otherwise (no metadata: the grid is inferred)."""
    from .convert import same_arch, build_meta, checkpoint_architecture

    name, overrides = checkpoint_architecture(base)
    if name is None or not same_arch(name, model_name):
        return None
    try:
        return pos_embed_grid_sizes(build_meta(name, **overrides))
    except Exception as e:  # the validation already built it; never hide the real error behind this one
        _logger.debug("cannot rebuild %s with %s for its grid sizes: %s", name, overrides, e)
        return None


def adapt_state_dict(
    model: nn.Module,
    sd: dict[str, Tensor],
    model_name: str,
    source: str,
    base: Optional[Mapping[str, Any]] = None,
) -> tuple[dict[str, Tensor], list[str]]:
    """Adapt a state dict of the architecture (default config, or the config that a vitfer
    checkpoint's metadata ``base`` records) to ``model`` (img_size, in_chans, num_classes).

    Returns:
        ``(state_dict, head_keys_left_to_init)``: the model keys that keep their fresh init.
    """
    from vitfer.models.families import first_conv_names, import_family, model_spec

    spec = model_spec(model_name)
    module = import_family(spec.family)
    sd = dict(sd)

    # 1. position embeddings (and any other family-specific adaptation), from the checkpoint's grid
    filter_fn = getattr(module, "checkpoint_filter_fn", None) if module is not None else None
    if filter_fn is not None:
        grids = checkpoint_grid_sizes(spec.name, base)
        kwargs = {"grid_sizes": grids} if grids and "grid_sizes" in inspect.signature(filter_fn).parameters else {}
        try:
            sd = dict(filter_fn(sd, model, **kwargs))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{source}: {spec.family}.checkpoint_filter_fn failed for {spec.name}: {e}") from e

    expected = model.state_dict()
    # 2. input channels
    pcfg = getattr(model, "pretrained_cfg", None) or spec.pretrained_cfg.to_dict()
    for conv in first_conv_names(pcfg) or first_conv_names(spec.pretrained_cfg):
        key = f"{conv}.weight"
        if key in sd and key in expected and sd[key].ndim == 4 and sd[key].shape[1] != expected[key].shape[1]:
            old = sd[key].shape[1]
            sd[key] = adapt_input_conv(expected[key].shape[1], sd[key])
            _logger.info("%s: adapted %s from %d to %d input channels", spec.name, key, old, expected[key].shape[1])

    # 3. classifier
    fresh: list[str] = []
    heads = _classifiers(model, spec)
    def under_head(k: str) -> bool:
        return any(k.startswith(c + ".") for c in heads)

    # A head is every key under a classifier prefix: one Linear (``fc.weight``) or an MLP
    # (``fc.0.weight`` ... ``fc.6.bias``, ResNet's ``head_hidden``).
    ckpt_keys = [k for k in sd if under_head(k)]
    model_head = [k for k in expected if under_head(k)]
    num_classes = int(getattr(model, "num_classes", 0))
    if ckpt_keys:
        ckpt_classes = next((int(sd[f"{c}.weight"].shape[0]) for c in heads if f"{c}.weight" in sd), None)
        same = set(ckpt_keys) == set(model_head) and all(sd[k].shape == expected[k].shape for k in ckpt_keys)
        if not same:
            for k in ckpt_keys:
                sd.pop(k)
            fresh = model_head
            if model_head:
                what = f"{ckpt_classes} classes" if ckpt_classes is not None else "another layout"
                _logger.info(
                    "%s: the checkpoint's classifier (%s) does not fit the model's (%d classes): re-initialised %s",
                    spec.name, what, num_classes, ", ".join(model_head),
                )
            else:
                _logger.info("%s: model has no classifier (num_classes=0); dropped the checkpoint's", spec.name)
    elif model_head:
        fresh = model_head
        _logger.info("%s: the checkpoint has no classifier; %s keep their fresh init", spec.name, ", ".join(model_head))
    return sd, fresh


def load_pretrained(
    model: nn.Module, model_name: str, source: Union[bool, str, os.PathLike] = True
) -> nn.Module:
    """Load pretrained weights into ``model`` (built as ``model_name`` with any overrides).

    Args:
        source: ``True`` for the default weights (``pretrained_cfg.hf_hub_id``: hub download,
            conversion, cache under ``$VITFER_HOME``), ``"hf-hub:<repo>[@<revision>]"``, or a local
            file (``.safetensors``, ``.pth``/``.bin`` read with ``weights_only=True``, Google ``.npz``).

    Raises:
        CheckpointError: the weights cannot be found (offline, cold cache: the message says how to
            place them), read, converted, or do not fit the model (every key / shape named).
    """
    from .hub import fetch_state_dict

    res = fetch_state_dict(model_name, source)
    sd, fresh = adapt_state_dict(model, res.state_dict, model_name, res.source, res.base)
    load_state_dict_strict(model, sd, res.source, allow_missing=fresh)
    model.pretrained_source = res.source
    if not fresh and res.info.get("class_names"):
        model.class_names = list(res.info["class_names"])
    _logger.info("loaded pretrained weights of %s from %s (%s layout)", model_name, res.source, res.layout)
    return model
