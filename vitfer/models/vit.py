"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

Parameter names, initialisation and numerics follow timm's ``VisionTransformer`` so that timm
checkpoints load unchanged. Variants are rows of ``VIT_VARIANTS``.
"""

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..layers import Block, LayerNorm6, PatchEmbed, check_input, resample_abs_pos_embed, to_2tuple
from .base import ClassTokenModel, check_distillation_keys, check_global_pool, check_output_fmt, checkpoint_seq
from .features import feature_take_indices
from .registry import (
    IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, PretrainedCfg, create_model, register_family,
)

__all__ = [
    "VIT_VARIANTS",
    "ViTConfig",
    "VisionTransformer",
    "checkpoint_filter_fn",
    "deit_base_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "init_weights_vit",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
]


@dataclass
class ViTConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    global_pool: str = "token"  # "token" | "avg"
    drop_rate: float = 0.0  # dropout before the head
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    attn_impl: str = "auto"
    distilled: bool = False  # DeiT: a distillation token and head (timm's VisionTransformerDistilled)


def init_weights_vit(module: nn.Module) -> None:
    """timm's default ViT init: truncated normal (std 0.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VisionTransformer(ClassTokenModel):
    """ViT: patch embedding, class token, absolute position embedding, pre-norm blocks.

    x: (B, C, H, W) -> ``forward_features`` (B, 1 + N, D) -> logits (B, num_classes).

    With ``distilled=True`` this is DeiT's distilled ViT (timm's ``VisionTransformerDistilled``,
    same parameter names): the tokens are (cls, dist, patches), ``forward_features`` gives
    (B, 2 + N, D), ``pos_embed`` (1, 2 + N, D) covers both prefix tokens, and the logits are
    ``(head(cls) + head_dist(dist)) / 2``, or the pair in distilled training (see
    :class:`~vitfer.models.base.DistillationMixin`).
    """

    def __init__(self, cfg: ViTConfig, name: str = "") -> None:
        super().__init__()
        self.model_name = name
        check_global_pool(cfg.global_pool)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = self.embed_dim = cfg.embed_dim
        self.in_chans = cfg.in_chans
        self.global_pool = cfg.global_pool

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + (2 if cfg.distilled else 1), cfg.embed_dim))
        self._init_dist_token(cfg.distilled, cfg.embed_dim)  # num_prefix_tokens: 1, or 2 with dist_token
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(
                    cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                    proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=dpr[i],
                    attn_impl=cfg.attn_impl,
                )
                for i in range(cfg.depth)
            ]
        )
        self.norm = LayerNorm6(cfg.embed_dim)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_head_dist(cfg.embed_dim, cfg.num_classes)
        self.set_feature_info()
        self.init_weights()

    def set_feature_info(self) -> None:
        """``feature_info``: one tap per block (``blocks.i``), at the patch embedding's stride."""
        pe = self.patch_embed
        self._token_feature_info(getattr(pe, "feature_ratio", 1) * pe.patch_size[0])

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)  # timm's VisionTransformerDistilled
        self.apply(init_weights_vit)

    # -- API ---------------------------------------------------------------------------------
    @torch.no_grad()
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Change the input size, resampling the position embeddings (bicubic, as timm)."""
        img_size = to_2tuple(img_size)
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size)
        new = resample_abs_pos_embed(self.pos_embed.data, self.patch_embed.grid_size, old_grid, self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(new, requires_grad=self.pos_embed.requires_grad)
        if self.pretrained_cfg:
            self.pretrained_cfg["input_size"] = (self.in_chans, *img_size)

    # -- forward -----------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.patch_embed.img_size, (self.model_name if len(self.model_name) > 0 else "ViT"))
        x = self.patch_embed(x)
        if self.dist_token is None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        else:  # DeiT: (cls, dist, patches), then the position embedding of all of them (timm)
            prefix = [self.cls_token.expand(x.shape[0], -1, -1), self.dist_token.expand(x.shape[0], -1, -1)]
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> normed tokens (B, P + N, D), P = ``num_prefix_tokens`` (2 if distilled)."""
        x = self._embed(x)
        if not torch.jit.is_scripting() and self._checkpointing():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
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
        """Block outputs as timm's ``VisionTransformer.forward_intermediates``.

        Args:
            x: (B, C, H, W).
            indices: the last n blocks (int), all (None) or those listed (negative from the end).
            norm: apply the final norm to the intermediates.
            stop_early: run only up to the last block taken (the final features are then of that block).
            output_fmt: ``"NCHW"``: (B, D, h, w) patch-token maps; ``"NLC"``: (B, N, D) patch tokens.
            intermediates_only: return only the list.

        Returns:
            ``(forward_features(x), intermediates)`` or ``intermediates`` (prefix tokens removed).
        """
        check_output_fmt(output_fmt)
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        ckpt = self._checkpointing()
        ys = []
        for i, blk in enumerate(blocks):
            x = checkpoint_seq([blk], x) if ckpt else blk(x)
            if i in take:
                ys.append((self.norm(x) if norm else x)[:, self.num_prefix_tokens :])
        ys = self._tokens_to_maps(ys, output_fmt)
        if intermediates_only:
            return ys
        return self.norm(x), ys

    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Attention weights of every block, each (B, H, P + N, P + N) (hand-written path; P =
        ``num_prefix_tokens``: the class token, and the distillation token second if distilled)."""
        x = self._embed(x)
        maps = []
        for blk in self.blocks:
            x, w = blk(x, return_attention=True)
            maps.append(w)
        return maps


def checkpoint_filter_fn(
    state_dict: dict[str, Tensor],
    model: VisionTransformer,
    grid_sizes: dict[str, tuple[int, int]] | None = None,
) -> dict[str, Tensor]:
    """Adapt a timm-layout ViT state dict to ``model``: resample ``pos_embed`` to its grid (its
    first ``model.num_prefix_tokens`` rows, the class and distillation tokens', kept as they are).
    A distilled model needs a distilled checkpoint (DeiT's ``dist_token``) and the other way round.

    ``grid_sizes["pos_embed"]`` is the checkpoint's own (H, W) patch grid (a vitfer checkpoint's
    metadata gives it, non-square included); without it the grid is inferred (square, or the
    model's aspect) by :func:`~vitfer.layers.pos_embed.infer_grid_size`.
    """
    from ..layers.pos_embed import infer_grid_size

    check_distillation_keys(state_dict, model, ("dist_token",))
    out = dict(state_dict)
    pe = out.get("pos_embed")
    if pe is not None and pe.shape != model.pos_embed.shape:
        n_old = pe.shape[1] - model.num_prefix_tokens
        old = infer_grid_size(n_old, (grid_sizes or {}).get("pos_embed"), model.patch_embed.grid_size)
        out["pos_embed"] = resample_abs_pos_embed(pe, model.patch_embed.grid_size, old, model.num_prefix_tokens)
    return out


VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    # DeiT distilled (Touvron et al. 2021): ViT-Ti/S/B with a distillation token and head
    "deit_tiny_distilled_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, distilled=True),
    "deit_small_distilled_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, distilled=True),
    "deit_base_distilled_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, distilled=True),
}

_VIT_CFGS = {
    "vit_tiny_patch16_224": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_small_patch16_224": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_224": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
}


_PRETRAINED = {
    name: PretrainedCfg(
        hf_hub_id=hub, input_size=(3, 224, 224), crop_pct=0.9, interpolation="bicubic",
        mean=INCEPTION_MEAN, std=INCEPTION_STD, license="apache-2.0",
    )
    for name, hub in _VIT_CFGS.items()
}
# timm's DeiT cfgs (timm/models/deit.py): facebookresearch/deit ImageNet-1k weights, ImageNet mean/std,
# crop_pct 0.9 (timm's value; the DeiT repository evaluates at 224/256 = 0.875), both heads classifiers
_PRETRAINED.update({
    name: PretrainedCfg(
        hf_hub_id=f"timm/{name}.fb_in1k", input_size=(3, 224, 224), crop_pct=0.9, interpolation="bicubic",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier=("head", "head_dist"), license="apache-2.0",
        notes="facebookresearch/deit ImageNet-1k weights (distilled from a RegNetY-16GF teacher), re-hosted by timm",
    )
    for name in ("deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224")
})

register_family("vit", VIT_VARIANTS, ViTConfig, VisionTransformer, _PRETRAINED)


def vit_tiny_patch16_224(pretrained: bool | str = False, **overrides: Any) -> VisionTransformer:
    """ViT-Ti/16 (D 192, 12 blocks, 3 heads), 5.7M parameters."""
    return create_model("vit_tiny_patch16_224", pretrained=pretrained, **overrides)


def vit_small_patch16_224(pretrained: bool | str = False, **overrides: Any) -> VisionTransformer:
    """ViT-S/16 (D 384, 12 blocks, 6 heads), 22.1M parameters."""
    return create_model("vit_small_patch16_224", pretrained=pretrained, **overrides)


def vit_base_patch16_224(pretrained: bool | str = False, **overrides: Any) -> VisionTransformer:
    """ViT-B/16 (D 768, 12 blocks, 12 heads), 86.6M parameters."""
    return create_model("vit_base_patch16_224", pretrained=pretrained, **overrides)


def deit_tiny_distilled_patch16_224(pretrained: bool | str = False, **overrides: Any) -> VisionTransformer:
    """DeiT-Ti/16 distilled (D 192, 12 blocks, 3 heads, distillation token), 5.9M parameters."""
    return create_model("deit_tiny_distilled_patch16_224", pretrained=pretrained, **overrides)


def deit_small_distilled_patch16_224(pretrained: bool | str = False, **overrides: Any) -> VisionTransformer:
    """DeiT-S/16 distilled (D 384, 12 blocks, 6 heads, distillation token), 22.4M parameters."""
    return create_model("deit_small_distilled_patch16_224", pretrained=pretrained, **overrides)


def deit_base_distilled_patch16_224(pretrained: bool | str = False, **overrides: Any) -> VisionTransformer:
    """DeiT-B/16 distilled (D 768, 12 blocks, 12 heads, distillation token), 87.3M parameters."""
    return create_model("deit_base_distilled_patch16_224", pretrained=pretrained, **overrides)
