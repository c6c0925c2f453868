"""The uniform model API shared by every vitfer model."""

import copy
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .registry import PretrainedCfg

__all__ = [
    "VitferModel", "ClassTokenModel", "DistillationMixin", "GLOBAL_POOLS", "build_config", "check_distillation_keys",
    "check_global_pool", "check_output_fmt", "checkpoint_seq", "distilled_classifier",
]


def checkpoint_seq(blocks: Any, x: Tensor) -> Tensor:
    """``x`` through each module of ``blocks`` in turn, each under activation checkpointing
    (``torch.utils.checkpoint``, non-reentrant): its activations are recomputed in the backward
    instead of being kept, trading about one extra forward for memory."""
    from torch.utils.checkpoint import checkpoint

    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False)
    return x


def build_config(config_cls: type, variant: dict[str, Any], overrides: dict[str, Any], model_name: str):
    """``config_cls(**variant, **overrides)`` with an error naming unknown override fields."""
    valid = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(
            f"{model_name}: unknown override(s) {unknown}; valid fields are {sorted(valid)}"
        )
    return config_cls(**{**variant, **overrides})


def structural_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree of modules that shares its parameters and buffers."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = {k: None if m is None else structural_copy(m) for k, m in module._modules.items()}
    return new


class VitferModel(nn.Module):
    """Base class: ``forward = forward_head(forward_features(x))``.

    Subclasses set ``num_classes``, ``num_features`` (channels of ``forward_features``; ``head_hidden_size``
    is the width of ``forward_head(pre_logits=True)``, the same but for VGG),
    ``in_chans`` and implement ``forward_features``, ``forward_head``, ``reset_classifier`` and
    ``get_classifier``. ``pretrained_cfg`` is a dict (hub id, input size, mean/std, crop_pct,
    interpolation) whose ``input_size`` and ``num_classes`` are the model's own (a 7-class model
    built from scratch says 7, not the 1000 of the ImageNet checkpoint); ``hf_hub_id`` / ``tag``
    name the pretrained weights of the architecture (what ``pretrained=True`` would load), and
    ``pretrained_source`` what was actually loaded (``None`` for a model built from scratch).
    """

    model_name: str = ""
    num_features: int
    in_chans: int
    # Python-side properties TorchScript must not compile
    __jit_unused_properties__ = ["num_classes", "head_hidden_size", "default_cfg", "img_size"]

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_cfg: dict[str, Any] = {}
        self.feature_info: list[dict[str, Any]] = []
        self.grad_checkpointing = False

    def __prepare_scriptable__(self) -> "VitferModel":
        """``torch.jit.script(model)``: TorchScript swaps the transformer layers for their
        scriptable forms (:mod:`vitfer.layers.scriptable`) in the module tree it compiles; this
        gives it a copy of the tree (sharing parameters and buffers) so that ``model`` itself
        keeps its fast eager layers."""
        return structural_copy(self)

    @property
    def head_hidden_size(self) -> int:
        """Width of ``forward_head(x, pre_logits=True)`` (timm's name); ``num_features`` is the
        width of ``forward_features``. They differ only for VGG (512 and 4096)."""
        return self.__dict__.get("_head_hidden_size", self.num_features)

    @head_hidden_size.setter
    def head_hidden_size(self, value: int) -> None:
        self.__dict__["_head_hidden_size"] = int(value)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them
        (``torch.utils.checkpoint``, non-reentrant): less memory in training, about one more
        forward of time. Outputs and gradients are unchanged; eval and ``torch.no_grad`` forwards
        are not affected (nothing is checkpointed without autograd)."""
        self.grad_checkpointing = bool(enable)

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    @property
    def num_classes(self) -> int:
        """Output classes of the head (0: no head). Setting it (``__init__``, ``reset_classifier``)
        keeps ``pretrained_cfg["num_classes"]`` equal to it."""
        try:
            return self.__dict__["_num_classes"]
        except KeyError:
            raise AttributeError(f"{type(self).__name__}.num_classes is not set yet") from None

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self.__dict__["_num_classes"] = value
        pcfg = self.__dict__.get("pretrained_cfg")
        if pcfg and isinstance(value, int):
            pcfg["num_classes"] = int(value)

    def set_pretrained_cfg(self, cfg: Optional[PretrainedCfg], input_size: Optional[tuple[int, int]] = None) -> None:
        """``pretrained_cfg`` from the architecture's ``cfg``, with this model's input size and
        class count."""
        d = cfg.to_dict() if cfg is not None else {}
        if cfg is not None:
            d["tag"] = cfg.tag
            if isinstance(self.__dict__.get("_num_classes"), int):
                d["num_classes"] = int(self.num_classes)
        if input_size is not None:
            d["input_size"] = (self.in_chans, int(input_size[0]), int(input_size[1]))
        if d.get("classifier") and self.__dict__.get("distilled", False):
            d["classifier"] = distilled_classifier(d["classifier"])  # both heads are classifiers
        self.pretrained_cfg = d

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:  # pragma: no cover - abstract
        """``(forward_features(x), [feature maps at indices])``, or only the list with
        ``intermediates_only``: timm's contract (``model.feature_info`` lists the taps)."""
        raise NotImplementedError

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:  # pragma: no cover - abstract
        """Drop the layers after the last tap of ``indices`` (and the head / final norm); returns
        the absolute indices kept."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> logits (B, num_classes) (features (B, num_features) if num_classes=0)."""
        return self.forward_head(self.forward_features(x))

    def set_attn_impl(self, impl: str) -> None:
        """Force every attention layer to ``"auto"``, ``"manual"`` or ``"sdpa"``."""
        from vitfer.layers.attention import ATTENTION_IMPLS

        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for m in self.modules():
            if m is not self and hasattr(m, "impl") and isinstance(getattr(m, "impl"), str):
                m.impl = impl

    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimisers should not decay (embeddings, tokens)."""
        return set()

    @torch.no_grad()
    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"name={self.model_name!r}, num_classes={self.num_classes}" if self.model_name else ""

    def copy(self) -> "VitferModel":
        return copy.deepcopy(self)


GLOBAL_POOLS = ("token", "avg", "")


def check_global_pool(global_pool: str, allowed: tuple[str, ...] = GLOBAL_POOLS) -> str:
    """``global_pool`` of the token models: ``"token"`` (class token), ``"avg"`` (mean of the
    patch tokens) or ``""`` (no pooling: the head sees every token, as timm)."""
    if global_pool not in allowed:
        raise ValueError(f"global_pool must be one of {allowed}, got {global_pool!r}")
    return global_pool


def distilled_classifier(classifier: Union[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The classifier names of a distilled model's pretrained config: every ``head...`` name of
    ``classifier`` and its ``head_dist...`` twin, e.g. ``"head"`` -> ``("head", "head_dist")``,
    ``("head.0", "head.1")`` -> ``("head.0", "head.1", "head_dist.0", "head_dist.1")`` (timm's
    DeiT cfgs: ``classifier=("head", "head_dist")``)."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    twins = tuple("head_dist" + n[len("head"):] for n in names if n.startswith("head") and not n.startswith("head_dist"))
    return names + tuple(t for t in twins if t not in names)


def check_distillation_keys(state_dict: dict[str, Tensor], model: nn.Module, tokens: tuple[str, ...]) -> None:
    """A checkpoint filter's check that ``state_dict`` has a distillation token (``tokens``, e.g.
    ``("dist_token",)``) exactly when ``model`` is distilled.

    Raises:
        ValueError: one side has distillation tokens and the other has not (the message says which).
    """
    name = getattr(model, "model_name", "") or type(model).__name__
    has = [k for k in tokens if k in state_dict]
    if getattr(model, "distilled", False) and not has and any("cls_token" in k for k in state_dict):
        raise ValueError(
            f"the checkpoint has no distillation token ({', '.join(tokens)}) but {name} is built with distilled=True: "
            f"load a distilled checkpoint (e.g. deit_*_distilled_patch16_224, or a vitfer checkpoint saved from a "
            f"distilled model), or build the model with distilled=False"
        )
    if has and not getattr(model, "distilled", False):
        raise ValueError(
            f"the checkpoint has a distillation token ({', '.join(has)}) but {name} is built without one: "
            f"build it with distilled=True"
        )


class DistillationMixin:
    """DeiT distillation (Touvron et al. 2021, timm's ``VisionTransformerDistilled``): a second
    prefix token, ``dist_token``, with its own classifier ``head_dist``, trained against a teacher's
    labels.

    ``model.distilled`` says whether the model has them (the config field ``distilled``);
    ``set_distilled_training(True)`` makes ``forward`` in train mode return the pair
    ``(cls_logits, dist_logits)`` for the distillation loss; otherwise (eval, or
    ``distilled_training`` off) the logits are their mean ``(cls_logits + dist_logits) / 2``, and
    ``forward_head(x, pre_logits=True)`` gives the mean of the two (dropped-out) tokens.
    ``get_classifier()`` is ``(head, head_dist)`` and ``reset_classifier`` replaces both.
    """

    distilled: bool
    distilled_training: bool

    def set_distilled_training(self, enable: bool = True) -> None:
        """Train-mode ``forward`` returns ``(cls_logits, dist_logits)`` (timm's flag); eval-mode
        ``forward`` always returns their mean.

        Raises:
            ValueError: ``enable`` on a model built without a distillation token (``distilled=False``).
        """
        if enable and not self.distilled:
            name = getattr(self, "model_name", "") or type(self).__name__
            raise ValueError(f"{name} has no distillation token: build it with distilled=True")
        self.distilled_training = bool(enable)

    def _check_distilled_pool(self, global_pool: Optional[str], building: bool = False) -> None:
        """A distilled model is built with ``global_pool="token"``; ``reset_classifier`` also takes
        None and ``""`` (timm), which keep token pooling."""
        if global_pool not in (("token",) if building else (None, "", "token")):
            name = getattr(self, "model_name", "") or type(self).__name__
            raise ValueError(
                f"{name} is distilled: its heads read the class and distillation tokens, so global_pool must be "
                f"'token', got {global_pool!r}"
            )


def _fresh_linear(dim: int, num_classes: int, device: Optional[torch.device]) -> nn.Module:
    """Linear(dim, num_classes) initialised as timm (truncated normal std 0.02, zero bias); Identity for 0."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(dim, num_classes, device=device)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


class ClassTokenModel(DistillationMixin, VitferModel):
    """The API shared by the single-stream class-token transformers (ViT, the ViT-R50 hybrid,
    ConViT): ``forward_features`` gives (B, num_prefix_tokens + N, D) tokens, the class token
    first; the head is a Linear on the class token (``global_pool="token"``) or on the mean of the
    patch tokens (``"avg"``), after ``head_drop``.

    Distilled models (``distilled=True``, :class:`DistillationMixin`): the tokens are
    (cls, dist, patches), ``num_prefix_tokens == 2``, and ``forward_head`` reads token 0 with
    ``head`` and token 1 with ``head_dist`` (``global_pool`` is always ``"token"``).

    Subclasses own ``patch_embed`` (with ``img_size``), ``cls_token``, ``pos_embed``, ``head``,
    ``head_drop``, ``embed_dim``, ``global_pool`` and ``num_prefix_tokens`` (set by
    :meth:`_init_dist_token`, called right after ``pos_embed`` is made; :meth:`_init_head_dist`
    right after ``head``: timm's state-dict order).
    """

    num_prefix_tokens: int = 1
    global_pool: str
    embed_dim: int

    def _init_dist_token(self, distilled: bool, dim: int) -> None:
        """``dist_token`` (1, 1, dim) (zeros: ``init_weights`` draws it) or None; sets ``distilled``,
        ``distilled_training`` and ``num_prefix_tokens``."""
        self.distilled = bool(distilled)
        self.distilled_training = False
        if distilled:
            self._check_distilled_pool(self.global_pool, building=True)
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        else:
            self.dist_token = None  # a plain attribute: no state-dict entry, a static branch for TorchScript
        self.num_prefix_tokens = 2 if distilled else 1

    def _init_head_dist(self, dim: int, num_classes: int) -> None:
        """``head_dist`` (Linear(dim, num_classes), Identity for 0) on distilled models, else None."""
        if self.distilled:
            self.head_dist = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        else:
            self.head_dist = None

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"} if self.distilled else {"pos_embed", "cls_token"}

    def get_classifier(self) -> Union[nn.Module, tuple[nn.Module, nn.Module]]:
        """``head``; ``(head, head_dist)`` on a distilled model (timm)."""
        if self.distilled:
            return self.head, self.head_dist
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head by a freshly initialised Linear(D, num_classes) (truncated normal, std
        0.02, zero bias, as timm); Identity for 0. A distilled model replaces ``head_dist`` too and
        keeps token pooling (``global_pool`` None, ``""`` or ``"token"``, as timm; else ValueError)."""
        if self.distilled:
            self._check_distilled_pool(global_pool)
        elif global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        device = self.norm_device()
        self.head = _fresh_linear(self.embed_dim, num_classes, device)
        if self.distilled:
            self.head_dist = _fresh_linear(self.embed_dim, num_classes, device)

    def _forward_head_distilled(self, x: Tensor, pre_logits: bool) -> Tensor:
        """tokens (B, 2 + N, D) -> ``(head(cls) + head_dist(dist)) / 2`` (B, num_classes), or the
        pair ``(head(cls), head_dist(dist))`` in distilled training (train mode, eager: TorchScript
        always gets the mean, as timm); ``pre_logits``: the mean of the two tokens (B, D)."""
        x_cls, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (x_cls + x_dist) / 2
        x_cls, x_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x_cls, x_dist  # the distillation loss needs both (timm)
        return (x_cls + x_dist) / 2

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """tokens (B, 1 + N, D) -> logits (B, num_classes), or pooled features (B, D)
        (``global_pool=""``: every token, (B, 1 + N, num_classes) or (B, 1 + N, D)). Distilled
        models: see :meth:`_forward_head_distilled`."""
        if self.head_dist is not None:
            return self._forward_head_distilled(x, pre_logits)
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def norm_device(self) -> torch.device:
        return next(self.parameters()).device

    def _token_feature_info(self, reduction: int) -> None:
        self.feature_info = [
            dict(num_chs=self.embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(len(self.blocks))
        ]

    def _tokens_to_maps(self, ys: list[Tensor], output_fmt: str) -> list[Tensor]:
        """Patch tokens (B, N, D) -> (B, D, h, w) maps on the patch grid (``"NCHW"``), or as they are (``"NLC"``)."""
        if output_fmt == "NLC":
            return ys
        h, w = self.patch_embed.grid_size
        return [y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for y in ys]

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the blocks up to the last of ``indices`` (timm's semantics); ``prune_norm`` replaces
        the final norm by Identity, ``prune_head`` resets the classifier to none."""
        from .features import feature_take_indices

        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def check_output_fmt(output_fmt: str, allowed: tuple[str, ...] = ("NCHW", "NLC")) -> None:
    if output_fmt not in allowed:
        raise ValueError(f"output_fmt must be one of {allowed}, got {output_fmt!r}")
