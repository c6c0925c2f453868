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
    for h in heatmaps(model, x):          # what the report and the demo draw, with where it comes from
        h.title, h.maps, h.flat           # "Grad-CAM, layer2 (6x6)", (B, h, w) in [0, 1], (B,) bool

Resolution: a map drawn over a face must have cells to show. Grad-CAM is taken by default at the
deepest layer whose map is at least :data:`MIN_MAP_SIDE` cells a side for the input at hand (at
48 px: ResNet-D's ``layer2``, 6x6; at 224 px: ``layer4``, 7x7), and the ViT-ResNet hybrid, whose
token grid is 3x3 at 48 px, gets Grad-CAM of its CNN backbone instead of the rollout. A map that
is constant over a face (its range below :data:`FLAT_RTOL` of its magnitude) is flagged
(:attr:`Heatmap.flat`): the figures say so rather than drawing it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "model_kind", "attention_rollout", "rollout_map", "gpsa_gating", "attention_distances",
    "crossvit_cls_attention", "grad_cam", "attention_heatmaps", "cam_layers", "choose_cam_layer", "heatmaps",
    "Heatmap", "MIN_MAP_SIDE", "FLAT_RTOL", "map_contrast",
]

#: The coarsest map worth drawing over a face, in cells a side: Grad-CAM's default layer is the
#: deepest whose map is at least this fine.
MIN_MAP_SIDE = 6
#: A map whose range (max - min) is below this fraction of its largest magnitude is constant over
#: the face: a defect that the figures report instead of drawing.
FLAT_RTOL = 1e-3

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
        (B, T, T) with T = P + N tokens, P = ``model.num_prefix_tokens`` (the class token first,
        then a distilled model's distillation token); every row sums to one. Row 0 says how much
        each token contributed to the class token that the head reads.
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
        if a.shape[-1] != T:  # GPSA: patches only; embed with the prefix tokens untouched
            p = T - a.shape[-1]
            full = eye.clone()
            full[:, p:, p:] = a
            a = full
        a = residual * eye + (1.0 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        R = torch.bmm(a, R)
    return R


def rollout_map(model: nn.Module, x: Tensor, **kwargs: Any) -> Tensor:
    """The class token's row of :func:`attention_rollout` over the patches (the prefix tokens left
    out), as a (B, h, w) grid scaled to [0, 1] per image."""
    R = attention_rollout(model, x, **kwargs)
    m = R[:, 0, _num_prefix(model) :]
    h, w = _token_grid(model, m.shape[-1])
    return _unit(m.reshape(-1, h, w))


def _num_prefix(model: nn.Module) -> int:
    """The tokens before the patches: the class token, and a distilled model's distillation token."""
    return int(getattr(model, "num_prefix_tokens", 1))


def _token_grid(model: nn.Module, n: int) -> tuple[int, int]:
    """(h, w) of ``n`` patch tokens: the patch embedding's grid where it has one, else square."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and int(grid[0]) * int(grid[1]) == n:
        return int(grid[0]), int(grid[1])
    return _grid(n, "rollout")


def _unit(m: Tensor) -> Tensor:
    """Scale each map of (B, h, w) to [0, 1] (a constant map becomes zeros)."""
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(m)


def map_contrast(m: Tensor) -> Tensor:
    """(max - min) / max(|max|, |min|) of each map of (B, h, w): 0 for a constant map (all zeros
    included), up to 1 (2 for maps of both signs); a non-finite map gives 0."""
    flat = m.detach().float().flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    c = (hi - lo) / torch.maximum(hi.abs(), lo.abs()).clamp_min(1e-30)
    return torch.where(torch.isfinite(c) & torch.isfinite(flat).all(1), c, torch.zeros_like(c))


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
        p = model.num_prefix_tokens
        out = [attention_distance(w[:, :, p:, p:].float(), dist) for w in maps]
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


def _cnn_root(model: nn.Module) -> tuple[nn.Module, str]:
    """The convolutional part of a model and its name prefix: the model itself (ResNet, VGG) or
    the hybrid's backbone (``patch_embed.backbone``)."""
    backbone = getattr(getattr(model, "patch_embed", None), "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone, "patch_embed.backbone."
    return model, ""


def cam_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Grad-CAM's candidate layers of a CNN or of the hybrid's backbone, shallow to deep, with
    their names in ``model.named_modules()``: ResNet's ``layer1``...``layer4``; VGG's ReLUs;
    the ResNetV2 backbone's ``stem`` and ``stages.K``; a convolutional stem's layers."""
    root, prefix = _cnn_root(model)
    if model_kind(model) != "cnn" and not prefix:
        raise ValueError(f"Grad-CAM needs a CNN or the ViT-ResNet hybrid, not {type(model).__name__}")
    out: list[tuple[str, nn.Module]] = []
    if hasattr(root, "layer1"):
        out = [(f"layer{i}", getattr(root, f"layer{i}")) for i in range(1, 5)
               if isinstance(getattr(root, f"layer{i}", None), nn.Module) and len(getattr(root, f"layer{i}"))]
    elif isinstance(getattr(root, "stages", None), nn.Sequential):
        out = [("stem", root.stem)] if isinstance(getattr(root, "stem", None), nn.Module) else []
        out += [(f"stages.{i}", m) for i, m in enumerate(root.stages)]
    else:
        seq = root.features if isinstance(getattr(root, "features", None), nn.Sequential) else root
        if isinstance(seq, nn.Sequential):
            base = "features." if seq is not root else ""
            mods = list(seq.named_children())
            relus = [(f"{base}{n}", m) for n, m in mods if isinstance(m, nn.ReLU)]
            out = relus or [(f"{base}{n}", m) for n, m in mods]
    if not out:
        raise ValueError(f"no Grad-CAM layers known for {type(model).__name__}: pass layer= (a module or its name)")
    return [(prefix + n, m) for n, m in out]


def _resolve_layer(model: nn.Module, layer: Union[str, nn.Module]) -> tuple[str, nn.Module]:
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n][:12]
            raise ValueError(f"layer={layer!r}: {type(model).__name__} has no such module (its modules: "
                             f"{', '.join(names)}, ...)") from None
    for n, m in model.named_modules():
        if m is layer:
            return n or type(m).__name__, m
    raise ValueError(f"layer= {type(layer).__name__} is not a module of {type(model).__name__}")


def _pick(shapes: list[tuple[int, int]], min_side: int) -> int:
    """Index of the deepest map at least ``min_side`` a side; else the finest (deepest of ties)."""
    fine = [i for i, (h, w) in enumerate(shapes) if min(h, w) >= min_side]
    if fine:
        return fine[-1]
    best = max(min(s) for s in shapes)
    return max(i for i, s in enumerate(shapes) if min(s) == best)


def choose_cam_layer(
    model: nn.Module, x: Tensor, min_side: int = MIN_MAP_SIDE
) -> tuple[str, nn.Module, tuple[int, int]]:
    """Grad-CAM's default layer for input ``x`` (B, C, H, W): the deepest of :func:`cam_layers`
    whose map is at least ``min_side`` cells a side (else the finest there is). Returns
    ``(name, module, (h, w))``; one forward pass (no gradients) measures the maps."""
    cands = cam_layers(model)
    shapes: dict[int, tuple[int, int]] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, k=k: shapes.__setitem__(k, tuple(o.shape[-2:])))
               for k, (_, m) in enumerate(cands)]
    try:
        with _Eval(model), torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    k = _pick([shapes[i] for i in range(len(cands))], min_side)
    return cands[k][0], cands[k][1], shapes[k]


def _grad_cam(model: nn.Module, x: Tensor, target: Optional[Tensor], layer: Union[str, nn.Module, None],
              min_side: int = MIN_MAP_SIDE) -> tuple[Tensor, str]:
    """Raw Grad-CAM (B, h, w) (not rescaled) and the layer's name. With ``layer=None`` every
    candidate layer is hooked in the same forward pass and the deepest at least ``min_side`` a
    side taken."""
    cands = cam_layers(model) if layer is None else [_resolve_layer(model, layer)]
    store: dict[int, Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, k=k: store.__setitem__(k, o))
               for k, (_, m) in enumerate(cands)]
    try:
        with _Eval(model), torch.enable_grad():
            xg = x.detach().requires_grad_(True)  # a graph even where the weights are frozen
            logits = model(xg)
            if target is None:
                target = logits.argmax(-1)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            missing = [cands[k][0] for k in range(len(cands)) if k not in store]
            if missing:
                raise ValueError(f"Grad-CAM layer {missing[0]} did not run in {type(model).__name__}'s forward pass")
            k = _pick([tuple(store[i].shape[-2:]) for i in range(len(cands))], min_side) if layer is None else 0
            act = store[k]
            if act.ndim != 4:
                raise ValueError(f"Grad-CAM layer {cands[k][0]} gives shape {tuple(act.shape)}, not a (B, C, h, w) map")
            (grad,) = torch.autograd.grad(score, act)
    finally:
        for h in handles:
            h.remove()
    weights = grad.float().mean((2, 3), keepdim=True)
    return F.relu((weights * act.detach().float()).sum(1)), cands[k][0]


def grad_cam(model: nn.Module, x: Tensor, target: Optional[Tensor] = None,
             layer: Union[str, nn.Module, None] = None) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017) of a CNN (or the hybrid's backbone): the ReLU of the
    layer's activation maps weighted by the spatial mean of the gradient of the target class's logit.

    Args:
        x: (B, C, H, W) images.
        target: (B,) class indices; default the predicted classes.
        layer: a module of ``model`` or its name (``"layer3"``, ``"features.22"``); default
            :func:`choose_cam_layer`: the deepest layer whose map is at least
            :data:`MIN_MAP_SIDE` cells a side for this input (ResNet-D at 48 px: ``layer2``, 6x6).

    Returns:
        (B, h, w) maps at the layer's resolution, scaled to [0, 1] per image (a constant map,
        e.g. all zero, gives zeros).
    """
    return _unit(_grad_cam(model, x, target, layer)[0])


@dataclass
class Heatmap:
    """One kind of map over the faces of a batch, as the report and the demo draw it.

    ``name`` says what it is ("attention rollout", "Grad-CAM", ...), ``source`` where it is taken
    ("layer2", "4 blocks", "last fusion"), ``raw`` (B, h, w) the map as computed and ``maps`` the
    same scaled to [0, 1] per image; ``contrast`` (B,) is :func:`map_contrast` of ``raw`` and
    ``flat`` (B,) marks the maps constant over the face (contrast below :data:`FLAT_RTOL`) or not
    finite (``finite`` (B,) False: NaN or inf somewhere), which are not drawn. ``note`` explains a
    choice (e.g. Grad-CAM instead of a too coarse rollout).
    """

    name: str
    source: str
    raw: Tensor
    note: str = ""
    maps: Tensor = field(init=False)
    contrast: Tensor = field(init=False)
    flat: Tensor = field(init=False)
    finite: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.raw = self.raw.detach().float().cpu()
        self.finite = torch.isfinite(self.raw).flatten(1).all(1)
        self.maps = torch.where(self.finite[:, None, None], _unit(torch.nan_to_num(self.raw)), 0.0)
        self.contrast = map_contrast(self.raw)
        self.flat = self.contrast < FLAT_RTOL

    def subset(self, index: Any) -> "Heatmap":
        """The same heat map for some of the faces (``index``: an int, slice or index list)."""
        raw = self.raw[index]
        return Heatmap(self.name, self.source, raw[None] if raw.ndim == 2 else raw, note=self.note)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.raw.shape[-2]), int(self.raw.shape[-1])

    @property
    def title(self) -> str:
        """``name, source (h x w)``: what a figure labels the row with."""
        h, w = self.grid
        return f"{self.name}, {self.source} ({h}x{w})"


def heatmaps(model: nn.Module, x: Tensor, layer: Union[str, nn.Module, None] = None) -> list[Heatmap]:
    """The maps the report and the demo draw for ``model``'s family over the faces ``x``
    (B, C, H, W): attention rollout (ViT, the hybrids, ConViT; the hybrid's backbone Grad-CAM
    when its token grid is under :data:`MIN_MAP_SIDE` a side), each CrossViT branch's class-token
    cross-attention (last fusion), Grad-CAM for CNNs (at ``layer``, default
    :func:`choose_cam_layer`)."""
    kind = model_kind(model)
    if kind in ("vit", "convit"):
        R = attention_rollout(model, x)
        m = R[:, 0, _num_prefix(model) :]
        h, w = _token_grid(model, m.shape[-1])
        depth = len(getattr(model, "blocks", []))
        name = "attention rollout" if kind == "vit" else "attention rollout (GPSA + SA)"
        roll = Heatmap(name, f"{depth} blocks", m.reshape(-1, h, w))
        if (layer is not None or min(h, w) < MIN_MAP_SIDE) and _cnn_root(model)[1]:
            raw, lname = _grad_cam(model, x, None, layer)
            note = (f"the {h}x{w} token grid is too coarse for the rollout: Grad-CAM of the CNN backbone instead"
                    if layer is None else "")
            return [Heatmap("Grad-CAM", lname, raw, note=note)]
        if min(h, w) < MIN_MAP_SIDE:
            roll.note = f"the token grid is only {h}x{w}: a coarse map"
        return [roll]
    if kind == "crossvit":
        with _Eval(model), torch.no_grad():
            maps = model.attention_maps(x)
        out = []
        for d, mm in enumerate(maps):
            a = mm["cross"][-1].float().mean(1)[:, 0, 1:]
            gh, gw = _grid(a.shape[-1], f"CrossViT branch {d} cross-attention")
            other = "large" if d == 0 else "small"
            note = f"the {gh}x{gw} grid of the {other} patches is coarse" if min(gh, gw) < MIN_MAP_SIDE else ""
            out.append(Heatmap(f"branch {d} CLS -> {other} patches", "last fusion", a.reshape(-1, gh, gw), note))
        return out
    raw, lname = _grad_cam(model, x, None, layer)
    return [Heatmap("Grad-CAM", lname, raw)]


def attention_heatmaps(model: nn.Module, x: Tensor, layer: Union[str, nn.Module, None] = None) -> dict[str, Tensor]:
    """:func:`heatmaps` as ``{title: (B, h, w) in [0, 1]}`` (titles like ``"Grad-CAM, layer2 (6x6)"``)."""
    return {h.title: h.maps for h in heatmaps(model, x, layer=layer)}
