"""Feature extraction with timm's contract: ``feature_info``, ``forward_intermediates`` indices and
``create_model(..., features_only=True)``.

Every vitfer model lists its feature taps in ``model.feature_info`` (a list of dicts with
``num_chs``, ``reduction`` and ``module``, as timm) and implements
``forward_intermediates(x, indices=, norm=, stop_early=, output_fmt=, intermediates_only=)``.
``create_model(name, features_only=True, out_indices=...)`` wraps the model in
:class:`FeatureGetterNet`, which prunes what the taps do not need and returns the list of
feature maps (NCHW)::

    net = create_model("resnet50d", features_only=True, out_indices=(1, 2, 3, 4))
    net.feature_info.channels()      # [256, 512, 1024, 2048]
    feats = net(x)                   # 4 maps, strides 4, 8, 16, 32
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["FEATURE_CLASSES", "FeatureGetterNet", "FeatureInfo", "feature_take_indices", "out_indices_as_tuple"]

FEATURE_CLASSES = ("getter", "list", "dict")


def feature_take_indices(num_features: int, indices: Optional[Union[int, List[int]]] = None) -> Tuple[List[int], int]:
    """Absolute indices of the features to take, and the largest of them (timm's semantics).

    ``None``: all ``num_features``; an int ``n``: the last ``n``; a sequence: those indices
    (negative ones count from the end). An index out of range raises (``torch._assert``, so the
    check also holds in TorchScript).
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        torch._assert(0 < indices <= num_features, f"last-n ({indices}) is out of range (1 to {num_features})")
        take_indices = [num_features - indices + i for i in range(indices)]
    else:
        take_indices: List[int] = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            torch._assert(0 <= idx < num_features, f"feature index {idx} is out of range (0 to {num_features - 1})")
            take_indices.append(idx)
    return take_indices, max(take_indices)


def out_indices_as_tuple(x: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    """``n`` -> the last n indices ``(-n, ..., -1)``; a sequence -> a tuple of it."""
    if isinstance(x, int):
        return tuple(range(-x, 0))
    return tuple(int(i) for i in x)


class FeatureInfo:
    """The taps a feature extractor returns: ``channels()``, ``reduction()``, ``module_name()``
    (each a list over ``out_indices``), as timm's ``FeatureInfo``."""

    def __init__(self, feature_info: List[Dict[str, Any]], out_indices: Union[int, Sequence[int]]) -> None:
        prev = 1
        for i, fi in enumerate(feature_info):
            if not (fi.get("num_chs", 0) > 0 and fi.get("reduction", 0) >= prev and "module" in fi):
                raise ValueError(f"feature_info[{i}] = {fi} needs num_chs > 0, a non-decreasing reduction and module")
            prev = fi["reduction"]
            fi.setdefault("index", i)
        self.info = feature_info
        self.out_indices = out_indices_as_tuple(out_indices)

    def get(self, key: str, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Optional[List[str]] = None, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        sel = self.out_indices if idx is None else idx
        if isinstance(sel, int):
            return self.info[sel] if keys is None else {k: self.info[sel][k] for k in keys}
        return [self.info[i] if keys is None else {k: self.info[i][k] for k in keys} for i in sel]

    def channels(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, item: int) -> Dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, info={self.info})"


class FeatureGetterNet(nn.Module):
    """A model reduced to the feature maps at ``out_indices`` (timm's ``FeatureGetterNet``).

    The wrapped model is pruned (``prune_intermediate_layers``: later blocks, the head and, unless
    ``norm``, the final norm go), then ``forward(x)`` is ``model.forward_intermediates(x,
    indices=out_indices, norm=norm, output_fmt=output_fmt, intermediates_only=True)``: a list of
    (B, C_i, H_i, W_i) maps (``"NLC"``: (B, N_i, C_i) tokens for the transformers), or with
    ``return_dict`` a dict keyed by the taps' module names. Parameter names keep the ``model.``
    prefix.
    """

    def __init__(
        self,
        model: nn.Module,
        out_indices: Union[int, Sequence[int]] = 4,
        return_dict: bool = False,
        output_fmt: str = "NCHW",
        norm: bool = False,
    ) -> None:
        super().__init__()
        n = len(model.feature_info)
        take, _ = feature_take_indices(n, out_indices if isinstance(out_indices, int) else list(out_indices))
        take = model.prune_intermediate_layers(take, prune_norm=not norm, prune_head=True)
        self.feature_info = FeatureInfo(model.feature_info, take)
        self.model = model
        self.out_indices: List[int] = list(take)
        self.return_dict = return_dict
        self.output_fmt = output_fmt
        self.norm = norm
        self.default_cfg = self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def forward(self, x: Tensor) -> Any:
        feats = self.model.forward_intermediates(
            x, indices=self.out_indices, norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True
        )
        if self.return_dict:
            names = self.feature_info.module_name()
            return {f"{name}" if names.count(name) == 1 else f"{name}.{i}": f for i, (name, f) in enumerate(zip(names, feats))}
        return feats


def features_only_model(
    model: nn.Module, out_indices: Optional[Union[int, Sequence[int]]], feature_cls: Optional[str], default_out: Any,
    output_fmt: str = "NCHW", norm: bool = False,
) -> FeatureGetterNet:
    """``create_model(..., features_only=True)``: ``model`` wrapped in :class:`FeatureGetterNet`.

    ``feature_cls``: ``None`` / ``"getter"`` / ``"list"`` return a list of maps, ``"dict"`` a dict
    keyed by module name (timm's hook and FX extractors are not implemented: every vitfer model has
    ``forward_intermediates``).
    """
    cls = (feature_cls or "getter").lower()
    if cls not in FEATURE_CLASSES:
        raise ValueError(
            f"feature_cls={feature_cls!r} is not supported for {getattr(model, 'model_name', type(model).__name__)}; "
            f"use one of {FEATURE_CLASSES} (all use forward_intermediates)"
        )
    if not hasattr(model, "forward_intermediates"):
        raise TypeError(f"{type(model).__name__} has no forward_intermediates: features_only is not available")
    out = default_out if out_indices is None else out_indices
    return FeatureGetterNet(model, out, return_dict=cls == "dict", output_fmt=output_fmt, norm=norm)
