"""Loading pretrained weights into a model built with the user's overrides.

``vitfer.models.create_model(name, pretrained=...)`` calls :func:`load_pretrained`, which

1. gets a validated state dict for the *architecture's* default config
   (:func:`vitfer.weights.hub.fetch_state_dict`: hub + converted cache, or a local file);
2. adapts it to this model: the family's ``checkpoint_filter_fn(state_dict, model)`` (resamples
   position embeddings for another ``img_size``), the first conv for another ``in_chans``
   (:func:`adapt_input_conv`, as timm), and the classifier: a checkpoint head whose class count
   differs from the model's (or a checkpoint without head) leaves the model's freshly initialised
   head in place (logged);
3. loads strictly (:func:`load_state_dict_strict`): every other key must be present with its shape.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterable, Mapping, Union

from torch import Tensor, nn

from .errors import CheckpointError

__all__ = ["adapt_input_conv", "adapt_state_dict", "load_pretrained", "load_state_dict_strict"]

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


def adapt_state_dict(
    model: nn.Module, sd: dict[str, Tensor], model_name: str, source: str
) -> tuple[dict[str, Tensor], list[str]]:
    """Adapt an architecture-default state dict to ``model`` (img_size, in_chans, num_classes).

    Returns:
        ``(state_dict, head_keys_left_to_init)``: the model keys that keep their fresh init.
    """
    from .convert import _spec, first_conv_names, import_family

    spec = _spec(model_name)
    module = import_family(spec.family)
    sd = dict(sd)

    # 1. position embeddings (and any other family-specific adaptation)
    filter_fn = getattr(module, "checkpoint_filter_fn", None) if module is not None else None
    if filter_fn is not None:
        try:
            sd = dict(filter_fn(sd, model))
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
    ckpt_head = [c for c in heads if f"{c}.weight" in sd]
    model_head = [k for c in heads for k in (f"{c}.weight", f"{c}.bias") if k in expected]
    num_classes = int(getattr(model, "num_classes", 0))
    if ckpt_head:
        ckpt_classes = int(sd[f"{ckpt_head[0]}.weight"].shape[0])
        if ckpt_classes != num_classes or not model_head:
            for c in heads:
                sd.pop(f"{c}.weight", None)
                sd.pop(f"{c}.bias", None)
            fresh = model_head
            if model_head:
                _logger.info(
                    "%s: the checkpoint's classifier has %d classes, the model %d: re-initialised %s",
                    spec.name, ckpt_classes, num_classes, ", ".join(model_head),
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
    sd, fresh = adapt_state_dict(model, res.state_dict, model_name, res.source)
    load_state_dict_strict(model, sd, res.source, allow_missing=fresh)
    model.pretrained_source = res.source
    if not fresh and res.info.get("class_names"):
        model.class_names = list(res.info["class_names"])
    _logger.info("loaded pretrained weights of %s from %s (%s layout)", model_name, res.source, res.layout)
    return model
