"""ConViT (d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional
Inductive Biases", ICML 2021).

A ViT whose first ``local_up_to_layer`` blocks use gated positional self-attention
(:class:`vitfer.layers.gpsa.GPSA`); the class token joins the patch tokens just before the first
ordinary self-attention block. Parameter names, initialisation and numerics follow timm's
``ConVit`` (and therefore the original facebookresearch/convit checkpoints), so their state dicts
load unchanged. Variants are rows of ``CONVIT_VARIANTS``; the width is ``head_dim * num_heads``
(48 per head)::

    from vitfer.models import convit_base
    model = convit_base(num_classes=7)
    model.gating_values()            # (10, 16): how positional each GPSA head still is
    model.attention_distances(x)     # (12, 16): mean attention distance per layer and head
"""

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..layers import Block, LayerNorm6, PatchEmbed, check_input, resample_abs_pos_embed, to_2tuple
from ..layers.gpsa import GPSA, GPSABlock, attention_distance, grid_distances
from .base import ClassTokenModel, check_distillation_keys, check_global_pool, check_output_fmt, checkpoint_seq
from .features import feature_take_indices
from .registry import IMAGENET_MEAN, IMAGENET_STD, PretrainedCfg, create_model, register_family

__all__ = [
    "CONVIT_VARIANTS",
    "ConViT",
    "ConViTConfig",
    "checkpoint_filter_fn",
    "convit_base",
    "convit_small",
    "convit_tiny",
]


@dataclass
class ConViTConfig:
    """ConViT hyper-parameters (timm's ``ConVit`` arguments; ``head_dim`` is timm's ``embed_dim``,
    the width per head)."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "token"  # "token" | "avg"
    head_dim: int = 48  # width = head_dim * num_heads
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop_rate: float = 0.0  # dropout before the head
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    local_up_to_layer: int = 10  # blocks [0, local_up_to_layer) use GPSA
    locality_strength: float = 1.0
    use_pos_embed: bool = True
    attn_impl: str = "auto"
    distilled: bool = False  # DeiT distillation token + head (joins with the class token)


def _init_weights(module: nn.Module) -> None:
    """timm's ConViT init: truncated normal (std 0.02) Linear weights, zero biases, LN 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _square_grid(grid: tuple[int, int], img_size: tuple[int, int], patch_size: tuple[int, int], name: str) -> None:
    if grid[0] != grid[1]:
        raise ValueError(
            f"{name or 'ConViT'} needs a square patch grid (GPSA's relative positions assume N = S*S): "
            f"img_size {img_size} with patch size {patch_size} gives {grid[0]}x{grid[1]} patches"
        )


class ConViT(ClassTokenModel):
    __jit_unused_properties__ = ClassTokenModel.__jit_unused_properties__ + ["gpsa_layers"]

    """ConViT: patch embedding + position embedding, GPSA blocks, class token, MHSA blocks.

    x: (B, C, H, W) -> ``forward_features`` (B, 1 + N, D) -> logits (B, num_classes).

    ``distilled=True`` adds DeiT's distillation token and head (a vitfer choice; timm has no
    distilled ConViT): ``dist_token`` (1, 1, D) joins together with the class token, just before
    block ``local_up_to_layer``, as (cls, dist, patches), so the GPSA blocks still see the patches
    only and ``forward_features`` gives (B, 2 + N, D). Like the class token it gets no position
    embedding (ConViT's ``pos_embed`` covers the patches only), so a non-distilled ConViT
    checkpoint fits everything but ``dist_token`` and ``head_dist``. The logits are
    ``(head(cls) + head_dist(dist)) / 2``, or the pair in distilled training
    (:class:`~vitfer.models.base.DistillationMixin`).
    """

    def __init__(self, cfg: ConViTConfig, name: str = "") -> None:
        super().__init__()
        check_global_pool(cfg.global_pool)
        self.cfg = cfg
        self.model_name = name
        dim = cfg.head_dim * cfg.num_heads
        self.num_classes = cfg.num_classes
        self.num_features = self.embed_dim = dim
        self.in_chans = cfg.in_chans
        self.global_pool = cfg.global_pool
        self.local_up_to_layer = cfg.local_up_to_layer
        self.num_heads = cfg.num_heads

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, dim)
        grid = self.patch_embed.grid_size
        _square_grid(grid, self.patch_embed.img_size, self.patch_embed.patch_size, name)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self._init_dist_token(cfg.distilled, dim)  # num_prefix_tokens: 1, or 2 with dist_token
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        if cfg.use_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, dim))
        else:
            self.pos_embed = None
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        blocks: list[nn.Module] = []
        for i in range(cfg.depth):
            common = dict(
                mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_drop=cfg.proj_drop_rate,
                attn_drop=cfg.attn_drop_rate, drop_path=dpr[i], norm_layer=LayerNorm6, attn_impl=cfg.attn_impl,
            )
            if i < cfg.local_up_to_layer:
                blocks.append(GPSABlock(dim, cfg.num_heads, grid, locality_strength=cfg.locality_strength, **common))
            else:
                blocks.append(Block(dim, cfg.num_heads, **common))
        self.blocks = nn.ModuleList(blocks)
        self.norm = LayerNorm6(dim)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_head_dist(dim, cfg.num_classes)
        self._token_feature_info(self.patch_embed.patch_size[0])
        self.init_weights()

    def init_weights(self) -> None:
        """timm's init, then GPSA's convolutional ``local_init`` (for training from scratch)."""
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.apply(_init_weights)
        for m in self.modules():
            if isinstance(m, GPSA):
                m.local_init()

    # -- API ---------------------------------------------------------------------------------
    @property
    def gpsa_layers(self) -> list[GPSA]:
        """The GPSA modules of blocks [0, local_up_to_layer)."""
        out = []
        for b in self.blocks:
            if isinstance(b, GPSABlock):
                out.append(b.attn)
        return out

    @torch.no_grad()
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Change the input size: resample ``pos_embed`` (bicubic) and rebuild GPSA's relative indices."""
        img_size = to_2tuple(img_size)
        p = self.patch_embed.patch_size
        if img_size[0] % p[0] or img_size[1] % p[1]:
            raise ValueError(f"image size {img_size} is not divisible by the patch size {p}")
        new_grid = (img_size[0] // p[0], img_size[1] // p[1])
        _square_grid(new_grid, img_size, p, self.model_name)
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size)
        if self.pos_embed is not None:
            new = resample_abs_pos_embed(self.pos_embed.data, new_grid, old_grid, num_prefix_tokens=0)
            self.pos_embed = nn.Parameter(new, requires_grad=self.pos_embed.requires_grad)
        for m in self.gpsa_layers:
            m.set_grid_size(new_grid)
        if self.pretrained_cfg:
            self.pretrained_cfg["input_size"] = (self.in_chans, *img_size)

    # -- forward -----------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> patch tokens with position embedding (B, N, D)."""
        check_input(x, self.in_chans, self.patch_embed.img_size, (self.model_name if len(self.model_name) > 0 else "ConViT"))
        # Tokens in (B, N, D) memory order: the patch embedding's transposed view would carry its
        # (B, D, N) strides down every GPSA block's residual stream (each LayerNorm then copies it,
        # and the residual adds cannot be fused into the GEMMs).
        x = self.patch_embed(x).contiguous()
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def _add_cls(self, x: Tensor) -> Tensor:
        """patch tokens (B, N, D) -> (B, P + N, D): the class token (and the distillation token) first."""
        cls = self.cls_token
        if cls is None:  # pruned (prune_intermediate_layers)
            return x
        dist = self.dist_token
        if dist is None:
            return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        return torch.cat([cls.expand(x.shape[0], -1, -1), dist.expand(x.shape[0], -1, -1), x], dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> normed tokens (B, P + N, D) (class token first, then the distillation
        token if distilled; P = ``num_prefix_tokens``)."""
        x = self._embed(x)
        if not torch.jit.is_scripting() and self._checkpointing():
            for u, blk in enumerate(self.blocks):
                if u == self.local_up_to_layer:
                    x = self._add_cls(x)
                x = checkpoint_seq([blk], x)
            return self.norm(x)
        for u, blk in enumerate(self.blocks):
            if u == self.local_up_to_layer:
                x = self._add_cls(x)
            x = blk(x)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[Tensor], tuple[Tensor, list[Tensor]]]:
        """Block outputs as timm's ``ConVit.forward_intermediates``: index i is block i's output,
        patch tokens only (the class token, present from block ``local_up_to_layer`` on, is
        removed); see :meth:`VisionTransformer.forward_intermediates` for the arguments."""
        check_output_fmt(output_fmt)
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        ckpt = self._checkpointing()
        ys = []
        for i, blk in enumerate(blocks):
            if i == self.local_up_to_layer:
                x = self._add_cls(x)
            x = checkpoint_seq([blk], x) if ckpt else blk(x)
            if i in take:
                y = self.norm(x) if norm else x
                ys.append(y[:, self.num_prefix_tokens :] if i >= self.local_up_to_layer else y)
        ys = self._tokens_to_maps(ys, output_fmt)
        if intermediates_only:
            return ys
        return self.norm(x), ys

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """As :meth:`ClassTokenModel.prune_intermediate_layers`; when only GPSA blocks remain the
        class token would join after them, so a token-pooled head goes too (timm)."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        if max_index < self.local_up_to_layer:
            # the class token would join after the kept blocks: it goes, and a token-pooled head with it
            # (and the distillation token, which joins with it)
            self.cls_token = None
            if self.dist_token is not None:
                self.dist_token = None
            self.num_prefix_tokens = 0
            prune_head = prune_head or self.global_pool == "token"
        return super().prune_intermediate_layers(take, prune_norm, prune_head)

    # -- inspection --------------------------------------------------------------------------
    def gating_values(self) -> Tensor:
        """sigmoid(gating_param) of every GPSA layer: (local_up_to_layer, H).

        1 means a head attends purely by position (convolution-like), 0 purely by content.
        """
        layers = self.gpsa_layers
        if not layers:
            return self.cls_token.new_zeros(0, self.num_heads)
        return torch.stack([m.gating() for m in layers])

    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Attention weights of every block (hand-written path).

        GPSA blocks give the mixed weights (B, H, N, N) over the patches; the later blocks
        (B, H, P + N, P + N) with the class token first (and the distillation token second if distilled).
        """
        x = self._embed(x)
        maps = []
        for u, blk in enumerate(self.blocks):
            if u == self.local_up_to_layer:
                x = self._add_cls(x)
            x, w = blk(x, return_attention=True)
            maps.append(w)
        return maps

    def attention_distances(self, x: Tensor) -> Tensor:
        """Per-head mean attention distance (in patches) of every block: (depth, H).

        timm's ``get_attention_map``: ``sum_nm dist(n, m) * mean_b attn[b, h, n, m] / N``. For the
        blocks after the class token joins, the patch-to-patch part of the attention is used
        (the weights the patches give each other, without renormalisation).
        """
        dist = grid_distances(self.patch_embed.num_patches, torch.float32, self.cls_token.device)
        out = []
        for w in self.attention_maps(x):
            if w.shape[-1] != dist.shape[-1]:
                w = w[:, :, self.num_prefix_tokens :, self.num_prefix_tokens :]
            out.append(attention_distance(w, dist))
        return torch.stack(out)


def checkpoint_filter_fn(
    state_dict: dict[str, Tensor], model: ConViT, grid_sizes: dict[str, tuple[int, int]] | None = None
) -> dict[str, Tensor]:
    """Adapt a timm / facebookresearch ConViT state dict to ``model``.

    Unwraps ``{"model": ...}`` (the original repository's checkpoints), drops ``rel_indices``
    (derived, never part of the weights) and resamples ``pos_embed`` (no class slot) to the
    model's grid. timm itself has no filter for ConViT (its ``img_size=`` override cannot load
    224 weights); the resampling is the same bicubic one as ViT's. ``grid_sizes["pos_embed"]``
    is the checkpoint's own grid where its metadata records it (else square).
    """
    from ..layers.pos_embed import infer_grid_size

    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    check_distillation_keys(state_dict, model, ("dist_token",))
    out = {k: v for k, v in state_dict.items() if not k.endswith("rel_indices")}
    pe = out.get("pos_embed")
    if pe is not None and model.pos_embed is not None and pe.shape != model.pos_embed.shape:
        try:
            old = infer_grid_size(pe.shape[1], (grid_sizes or {}).get("pos_embed"))
        except ValueError as e:
            raise ValueError(f"pos_embed {tuple(pe.shape)}: {e}") from e
        out["pos_embed"] = resample_abs_pos_embed(pe, model.patch_embed.grid_size, old, num_prefix_tokens=0)
    return out


CONVIT_VARIANTS: dict[str, dict[str, Any]] = {
    "convit_tiny": dict(num_heads=4, local_up_to_layer=10, locality_strength=1.0),
    "convit_small": dict(num_heads=9, local_up_to_layer=10, locality_strength=1.0),
    "convit_base": dict(num_heads=16, local_up_to_layer=10, locality_strength=1.0),
}

_PRETRAINED = {
    name: PretrainedCfg(
        hf_hub_id=f"timm/{name}.fb_in1k", input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, license="apache-2.0",
        notes="facebookresearch/convit ImageNet-1k weights, re-hosted by timm",
    )
    for name in CONVIT_VARIANTS
}


register_family("convit", CONVIT_VARIANTS, ConViTConfig, ConViT, _PRETRAINED)


def convit_tiny(pretrained: bool | str = False, **overrides: Any) -> ConViT:
    """ConViT-Ti (D 192, 4 heads, 10 GPSA + 2 MHSA blocks), 5.7M parameters."""
    return create_model("convit_tiny", pretrained=pretrained, **overrides)


def convit_small(pretrained: bool | str = False, **overrides: Any) -> ConViT:
    """ConViT-S (D 432, 9 heads, 10 GPSA + 2 MHSA blocks), 27.8M parameters."""
    return create_model("convit_small", pretrained=pretrained, **overrides)


def convit_base(pretrained: bool | str = False, **overrides: Any) -> ConViT:
    """ConViT-B (D 768, 16 heads, 10 GPSA + 2 MHSA blocks), 86.5M parameters."""
    return create_model("convit_base", pretrained=pretrained, **overrides)
