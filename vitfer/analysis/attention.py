"""Where the models look: attention rollout, GPSA gating, attention distances, CrossViT's
class-token cross-attention, Grad-CAM.

Every function runs the model in eval mode under ``torch.no_grad`` (Grad-CAM: with gradients)
and returns tensors; nothing here changes the model's numbers. The attention weights come from
the models' ``attention_maps`` methods, which run the hand-written attention path (the fused
CUDA kernel does not return weights) through the same layers as the ordinary forward.

    from vitfer.analysis import attention_rollout, rollout_map, gpsa_gating
    R = attention_rollout(model, x)       # (B, T, T), rows sum to one
    heat = rollout_map(model, x)          # (B, h, w): the class token's rollout over the patches
    g = gpsa_gating(model)                # ConViT: (GPSA layers, heads), sigmoid gates in [0, 1]
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "model_kind", "attention_rollout", "rollout_map", "gpsa_gating", "attention_distances",
    "crossvit_cls_attention", "grad_cam", "attention_heatmaps",
]

_logger = logging.getLogger(__name__)


def model_kind(model: nn.Module) -> str:
    """``vit`` (ViT and the hybrid), ``convit``, ``crossvit`` or ``cnn`` (ResNet, VGG)."""
    from vitfer.models.convit import ConViT
    from vitfer.models.crossvit import CrossViT
    from vitfer.models.vit import VisionTransformer

    if isinstance(model, ConViT):
        return "convit"
    if isinstance(model, CrossViT):
        return "crossvit"
    if isinstance(model, VisionTransformer):
        return "vit"
    return "cnn"


class _Eval:
    """Eval mode for the duration of a ``with`` block (the previous mode restored after)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was)


def _grid(n: int, what: str) -> tuple[int, int]:
    s = int(round(math.sqrt(n)))
    if s * s != n:
        raise ValueError(f"{what}: {n} patch tokens do not form a square grid")
    return s, s


def attention_rollout(model: nn.Module, x: Tensor, head_fusion: str = "mean", residual: float = 0.5) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through every block of a ViT, the hybrid or ConViT.

    Each block's attention, fused over the heads (``mean``, ``max`` or ``min``), is mixed with the
    identity for the residual path, ``A = residual * I + (1 - residual) * W``, rows renormalised,
    and the blocks' matrices multiplied from the first to the last. ConViT's GPSA blocks attend
    among the patches only; the class token, which joins after them, is carried by the identity
    there.

    Args:
        x: (B, C, H, W) images, normalised as the model expects.

    Returns:
        (B, T, T) with T = 1 + N tokens (class token first); every row sums to one. Row 0 says
        how much each token contributed to the class token that the head reads.
    """
    kind = model_kind(model)
    if kind not in ("vit", "convit"):
        raise ValueError(f"attention rollout needs a ViT, the ViT-ResNet hybrid or ConViT, not {type(model).__name__}")
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion must be mean, max or min, got {head_fusion!r}")
    if not 0.0 <= residual < 1.0:
        raise ValueError(f"residual must be in [0, 1), got {residual}")
    with _Eval(model), torch.no_grad():
        maps = model.attention_maps(x)
    B = x.shape[0]
    T = maps[-1].shape[-1]
    eye = torch.eye(T, dtype=torch.float32, device=x.device).expand(B, T, T)
    R = eye.clone()
    for w in maps:
        w = w.float()
        a = {"mean": w.mean(1), "max": w.amax(1), "min": w.amin(1)}[head_fusion]
        if a.shape[-1] != T:  # GPSA: patches only; embed with the class token untouched
            full = eye.clone()
            full[:, 1:, 1:] = a
            a = full
        a = residual * eye + (1.0 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        R = torch.bmm(a, R)
    return R


def rollout_map(model: nn.Module, x: Tensor, **kwargs: Any) -> Tensor:
    """The class token's row of :func:`attention_rollout` over the patches, as a (B, h, w) grid
    scaled to [0, 1] per image."""
    R = attention_rollout(model, x, **kwargs)
    m = R[:, 0, 1:]
    h, w = _grid(m.shape[-1], "rollout")
    return _unit(m.reshape(-1, h, w))


def _unit(m: Tensor) -> Tensor:
    """Scale each map of (B, h, w) to [0, 1] (a constant map becomes zeros)."""
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(m)


def gpsa_gating(model: nn.Module) -> Tensor:
    """ConViT: sigmoid of every GPSA head's gating parameter, (GPSA layers, heads), in [0, 1];
    1 = the head attends by position only (convolution-like), 0 = by content only."""
    if model_kind(model) != "convit":
        raise ValueError(f"GPSA gating needs a ConViT model, not {type(model).__name__}")
    with torch.no_grad():
        return model.gating_values().detach().float().cpu()


def attention_distances(model: nn.Module, x: Tensor) -> Tensor:
    """Mean attention distance (in patches) per block and head, (depth, heads), averaged over
    the images ``x`` (B, C, H, W): small for local, convolution-like heads. ViT (and the hybrid):
    the patch-to-patch part of every block; ConViT: :meth:`ConViT.attention_distances`."""
    from vitfer.layers.gpsa import attention_distance, grid_distances

    kind = model_kind(model)
    with _Eval(model), torch.no_grad():
        if kind == "convit":
            return model.attention_distances(x).float().cpu()
        if kind != "vit":
            raise ValueError(f"attention distances need a ViT, the hybrid or ConViT, not {type(model).__name__}")
        maps = model.attention_maps(x)
        n = maps[0].shape[-1] - model.num_prefix_tokens
        dist = grid_distances(n, torch.float32, x.device)
        out = [attention_distance(w[:, :, 1:, 1:].float(), dist) for w in maps]
    return torch.stack(out).cpu()


def crossvit_cls_attention(model: nn.Module, x: Tensor, block: int = -1) -> list[Tensor]:
    """CrossViT: in each branch's fusion, the class token's cross-attention over the other
    branch's patches.

    Returns a list with, for branch d (0: small patches, 1: large patches), a (B, h_o, w_o) map
    (mean over heads, at multi-scale block ``block``) over the patch grid of the other branch o,
    scaled to [0, 1] per image.
    """
    if model_kind(model) != "crossvit":
        raise ValueError(f"cross-attention maps need a CrossViT model, not {type(model).__name__}")
    with _Eval(model), torch.no_grad():
        maps = model.attention_maps(x)
    out = []
    for d, m in enumerate(maps):
        w = m["cross"][block].float().mean(1)[:, 0, 1:]  # (B, N_o): itself (token 0) left out
        h, ww = _grid(w.shape[-1], f"CrossViT branch {d} cross-attention")
        out.append(_unit(w.reshape(-1, h, ww)))
    return out


def _cam_layer(model: nn.Module) -> nn.Module:
    """The default Grad-CAM layer: ResNet's last stage; VGG's last ReLU before its last max-pool
    (at small inputs the map after that pool is 1x1)."""
    if hasattr(model, "layer4"):
        return model.layer4
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential):
        mods = list(feats)
        pools = [i for i, m in enumerate(mods) if isinstance(m, nn.MaxPool2d)]
        end = pools[-1] if pools else len(mods)
        relus = [m for m in mods[:end] if isinstance(m, (nn.ReLU, nn.Conv2d))]
        if relus:
            return relus[-1]
    raise ValueError(f"no default Grad-CAM layer for {type(model).__name__}: pass layer=")


def grad_cam(model: nn.Module, x: Tensor, target: Optional[Tensor] = None, layer: Optional[nn.Module] = None) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017) of a CNN: the ReLU of the layer's activation maps
    weighted by the spatial mean of the gradient of the target class's logit.

    Args:
        x: (B, C, H, W) images.
        target: (B,) class indices; default the predicted classes.
        layer: the convolutional layer (default :func:`_cam_layer`: ResNet ``layer4``, VGG's last
            ReLU before its last max-pool).

    Returns:
        (B, h, w) maps at the layer's resolution, scaled to [0, 1] per image.
    """
    layer = layer if layer is not None else _cam_layer(model)
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> None:
        store["act"] = out

    handle = layer.register_forward_hook(hook)
    try:
        with _Eval(model), torch.enable_grad():
            xg = x.detach().requires_grad_(True)  # a graph even where the weights are frozen
            logits = model(xg)
            if target is None:
                target = logits.argmax(-1)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            act = store["act"]
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    weights = grad.float().mean((2, 3), keepdim=True)
    cam = F.relu((weights * act.detach().float()).sum(1))
    return _unit(cam)


def attention_heatmaps(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The per-image maps the report draws for this model's family, each (B, h, w) in [0, 1]:
    ``rollout`` (ViT, hybrid, ConViT), ``cross-attention, branch 0/1`` (CrossViT) or
    ``Grad-CAM`` (CNNs)."""
    kind = model_kind(model)
    if kind in ("vit", "convit"):
        return {"attention rollout": rollout_map(model, x)}
    if kind == "crossvit":
        small, large = crossvit_cls_attention(model, x)
        return {"branch 0 (small patches): CLS -> large-patch tokens": small,
                "branch 1 (large patches): CLS -> small-patch tokens": large}
    return {"Grad-CAM": grad_cam(model, x)}
