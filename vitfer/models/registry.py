"""Model registry: names -> builders, pretrained configs, factories.

Every family module registers its variants here when ``vitfer.models`` is imported::

    from vitfer.models import create_model, list_models
    model = create_model("convit_base", num_classes=7)

A timm-style ``"arch.tag"`` name (``"resnet18d.a1_in1k"``) builds ``arch`` and selects the hub
weights ``timm/arch.tag`` for ``pretrained=True`` (:func:`pretrained_tag`, :func:`pretrained_hub_id`);
the tag is kept in ``model.pretrained_cfg`` (``hf_hub_id``, ``tag``). An unknown name raises a
``KeyError`` that suggests the closest registered names and ``vitfer models`` / ``list_models()``.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "ModelSpec",
    "PretrainedCfg",
    "create_model",
    "get_model_spec",
    "get_pretrained_cfg",
    "is_model",
    "list_aliases",
    "list_models",
    "pretrained_hub_id",
    "pretrained_tag",
    "register_alias",
    "register_family",
    "register_model",
    "split_model_name",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a model's default pretrained weights come from and how their inputs look.

    ``hf_hub_id`` is the timm repository on the Hugging Face hub (``timm/<arch>.<tag>``).
    ``input_size`` is (C, H, W); the eval transform resizes to ``floor(H / crop_pct)`` and
    centre-crops to (H, W) with ``interpolation``, then normalises with ``mean``/``std``.
    """

    hf_hub_id: Optional[str]
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    fixed_input_size: bool = True
    first_conv: Union[str, tuple[str, ...]] = "patch_embed.proj"
    classifier: Union[str, tuple[str, ...]] = "head"
    license: Optional[str] = None
    notes: str = ""
    pool_size: Optional[tuple[int, int]] = None  # (h, w) of forward_features at input_size (CNNs; timm's field)

    @property
    def tag(self) -> Optional[str]:
        if self.hf_hub_id and "." in self.hf_hub_id.split("/")[-1]:
            return self.hf_hub_id.split("/")[-1].split(".", 1)[1]
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model name."""

    name: str
    family: str
    builder: Callable[..., nn.Module] = field(repr=False)
    pretrained_cfg: PretrainedCfg


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, family: str, builder: Callable[..., nn.Module], pretrained_cfg: PretrainedCfg) -> None:
    """Register ``builder(**overrides) -> nn.Module`` under ``name``."""
    if name in _REGISTRY or name in _ALIASES:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, family, builder, pretrained_cfg)


def list_aliases() -> dict[str, str]:
    """Registered aliases and the model names they stand for (e.g. the study's
    ``vit_base_resnet50_384``)."""
    return dict(_ALIASES)


def register_alias(alias: str, name: str) -> None:
    """Make ``alias`` another name of the registered model ``name`` (e.g. a study's spelling)."""
    if name not in _REGISTRY:
        raise KeyError(f"cannot alias {alias!r}: {name!r} is not registered")
    if alias in _REGISTRY or alias in _ALIASES:
        raise ValueError(f"model name {alias!r} is already registered")
    _ALIASES[alias] = name


_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")


def _unknown(name: str) -> KeyError:
    known = sorted(_REGISTRY) + sorted(_ALIASES)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return KeyError(
        f"unknown model {name!r}{hint} (all {len(known)} names: `vitfer models` on the command line, "
        f"vitfer.models.list_models() in Python)"
    )


def split_model_name(name: str) -> tuple[str, Optional[str]]:
    """``"arch.tag"`` -> ``(registered name of arch, "tag")``; a registered name or alias ->
    ``(registered name, None)``.

    Raises:
        KeyError: ``arch`` is not registered (the closest names are suggested) or the tag is not a
            valid timm tag (letters, digits, ``_``, ``-``, ``.``).
    """
    if name in _REGISTRY:
        return name, None
    if name in _ALIASES:
        return _ALIASES[name], None
    base, dot, tag = name.partition(".")
    if dot and (base in _REGISTRY or base in _ALIASES):
        if not _TAG_RE.match(tag):
            raise KeyError(
                f"invalid pretrained tag {tag!r} in model name {name!r} (expected 'arch.tag', e.g. 'resnet18d.a1_in1k')"
            )
        return split_model_name(base)[0], tag
    raise _unknown(base if dot else name)


def _resolve(name: str) -> str:
    return split_model_name(name)[0]


def is_model(name: str) -> bool:
    """True for a registered name, an alias, or ``"arch.tag"`` of one."""
    try:
        _resolve(name)
    except KeyError:
        return False
    return True


def pretrained_tag(name: str) -> Optional[str]:
    """The timm pretrained tag in ``name`` (``"a1_in1k"`` for ``"resnet18d.a1_in1k"``), ``None``
    for a plain registered name or alias."""
    return split_model_name(name)[1]


def pretrained_hub_id(name: str) -> Optional[str]:
    """The hub repository whose weights ``create_model(name, pretrained=True)`` loads: the
    architecture's default (``pretrained_cfg.hf_hub_id``) for a plain name, ``timm/<arch>.<tag>``
    for ``"arch.tag"``. Never another tag than the one asked for.

    Raises:
        KeyError: unknown model name.
        ValueError: the name has a tag but the architecture has no timm hub weights to select from.
    """
    arch, tag = split_model_name(name)
    cfg = _REGISTRY[arch].pretrained_cfg
    hub = cfg.hf_hub_id
    if tag is None or tag == cfg.tag:
        return hub
    if not hub or not hub.startswith("timm/"):
        raise ValueError(
            f"{name!r} asks for the pretrained tag {tag!r}, but {arch} has no timm hub weights to choose a tag "
            f"from (its default source is {hub!r}); pass pretrained='hf-hub:<repo>' or a file instead"
        )
    return f"timm/{hub.split('/', 1)[1].split('.', 1)[0]}.{tag}"


def get_model_spec(name: str) -> ModelSpec:
    return _REGISTRY[_resolve(name)]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    return get_model_spec(name).pretrained_cfg


def list_models(pattern: Optional[str] = None, *, family: Optional[str] = None, include_aliases: bool = False) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell-style ``pattern`` and ``family``."""
    names = [n for n, s in _REGISTRY.items() if family is None or s.family == family]
    if include_aliases:
        names += [a for a, n in _ALIASES.items() if family is None or _REGISTRY[n].family == family]
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names)


def register_family(
    family: str,
    variants: dict[str, dict[str, Any]],
    config_cls: type,
    model_cls: Callable[..., nn.Module],
    pretrained: dict[str, PretrainedCfg],
) -> None:
    """Register every variant of a model family.

    ``variants`` maps each name to its config fields; the builder of a name makes
    ``model_cls(build_config(config_cls, variant, overrides, name), name)`` and sets its
    ``pretrained_cfg`` from ``pretrained[name]`` (input size from the model's ``img_size`` where
    it has a fixed one).
    """
    for name, variant in variants.items():
        register_model(name, family, _family_builder(name, variant, config_cls, model_cls, pretrained[name]), pretrained[name])


def _family_builder(name: str, variant: dict[str, Any], config_cls: type, model_cls: Callable[..., nn.Module], cfg: PretrainedCfg):
    from .base import build_config

    def build(**overrides: Any) -> nn.Module:
        model = model_cls(build_config(config_cls, variant, overrides, name), name)
        model.set_pretrained_cfg(cfg, getattr(model, "img_size", None))
        return model

    return build


def create_model(name: str, *, pretrained: Union[bool, str] = False, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered name (``list_models()``), an alias, or ``"arch.tag"``: the tag selects
            the hub weights ``timm/arch.tag`` for ``pretrained=True`` and is kept in
            ``model.pretrained_cfg`` (``hf_hub_id``, ``tag``); ``model.model_name`` is ``arch``.
        pretrained: ``False``; ``True`` for the default pretrained weights (``pretrained_cfg``);
            a local checkpoint path; or ``"hf-hub:<repo>[@<revision>]"``.
        **overrides: the family's config fields, e.g. ``num_classes=7``, ``img_size=160``,
            ``drop_path_rate=0.1``, ``global_pool=""``. An unknown field is a ``TypeError`` that
            lists the valid ones. ``features_only=True`` (with optional ``out_indices``,
            ``feature_cls`` ``"getter"``/``"list"``/``"dict"`` and ``output_fmt``) returns the
            model as a feature extractor (:class:`vitfer.models.features.FeatureGetterNet`, timm's
            contract: ``net.feature_info.channels()``, ``net(x)`` -> list of maps).

    ``model.pretrained_cfg["num_classes"]`` is the model's own class count, and
    ``model.pretrained_source`` what its weights were loaded from (``None``: from scratch).
    """
    features_only = bool(overrides.pop("features_only", False))
    feat_kw = {k: overrides.pop(k) for k in ("out_indices", "feature_cls", "output_fmt") if k in overrides}
    if feat_kw and not features_only:
        raise TypeError(f"{name}: {sorted(feat_kw)} only apply with features_only=True")
    spec = get_model_spec(name)
    tag = pretrained_tag(name)
    hub_id = pretrained_hub_id(name) if tag is not None else None
    model = spec.builder(**overrides)
    model.model_name = spec.name
    pcfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pcfg, dict) and pcfg:
        if isinstance(getattr(model, "num_classes", None), int):
            pcfg["num_classes"] = int(model.num_classes)
        if tag is not None:
            pcfg["hf_hub_id"], pcfg["tag"] = hub_id, tag
    model.pretrained_source = None
    if pretrained:
        from vitfer import weights  # imported lazily: it pulls in huggingface_hub

        if isinstance(pretrained, bool):
            pretrained = True
        weights.load_pretrained(model, name, source=pretrained)
    if features_only:
        from .features import features_only_model

        model = features_only_model(
            model, feat_kw.get("out_indices"), feat_kw.get("feature_cls"), getattr(model, "default_out_indices", 3),
            output_fmt=feat_kw.get("output_fmt", "NCHW"),
        )
    return model
