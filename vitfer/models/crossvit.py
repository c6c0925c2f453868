"""CrossViT (Chen, Fan and Panda, "CrossViT: Cross-Attention Multi-Scale Vision Transformer for
Image Classification", ICCV 2021).

Two ViT branches see the image at two scales: branch 0 cuts the (240, 240) input into 12-pixel
patches (20 x 20 tokens), branch 1 sees it bicubic-resized to (224, 224) and cuts 16-pixel patches
(14 x 14 tokens). Each multi-scale block runs the branches' own transformer blocks, then lets the
class token of each branch, projected to the other branch's width, attend to the other branch's
tokens (cross-attention fusion), and projects it back. The logits are the mean of the two
branches' heads.

Parameter names, shapes, initialisation and numerics follow timm's ``CrossVit`` (itself a port of
IBM/CrossViT, whose names ``*_224``/``*_384`` timm changed to the real input sizes ``*_240``/``*_408``),
so timm checkpoints load unchanged and IBM ones through :func:`checkpoint_filter_fn`. Variants are
rows of ``CROSSVIT_VARIANTS``.

Input size. As in timm, ``forward`` accepts any spatial size: each branch whose expected size
(``img_size_scaled[i]``, e.g. (240, 240) and (224, 224)) differs from the input's gets the input
resized by ``F.interpolate(mode="bicubic", align_corners=False)`` (no antialiasing), or centre-cropped
when ``crop_scale=True`` and the input is large enough. Building a model with ``img_size=S`` (or
calling :meth:`CrossViT.set_input_size`) changes the branch sizes to ``int(S * img_scale[i])`` and
the position embeddings' grids (``set_input_size`` and :func:`checkpoint_filter_fn` resample them).
"""

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Block, LayerNorm6, check_input, resample_abs_pos_embed, to_2tuple
from ..layers.cross_attention import CrossAttentionBlock
from ..layers.tracing import is_tracing
from .base import DistillationMixin, VitferModel, check_distillation_keys, check_global_pool, check_output_fmt
from .features import feature_take_indices
from .registry import PretrainedCfg, create_model, register_family

__all__ = [
    "CROSSVIT_VARIANTS",
    "CrossViT",
    "CrossViTConfig",
    "CrossViTPatchEmbed",
    "MultiScaleBlock",
    "checkpoint_filter_fn",
    "scale_image",
    "crossvit_tiny_240",
    "crossvit_small_240",
    "crossvit_base_240",
    "crossvit_9_240",
    "crossvit_15_240",
    "crossvit_18_240",
    "crossvit_9_dagger_240",
    "crossvit_15_dagger_240",
    "crossvit_18_dagger_240",
    "crossvit_15_dagger_408",
    "crossvit_18_dagger_408",
]


@dataclass
class CrossViTConfig:
    """CrossViT hyper-parameters (timm's ``CrossVit`` arguments; two branches)."""

    img_size: int | tuple[int, int] = 240
    img_scale: tuple[float, float] = (1.0, 224 / 240)
    patch_size: tuple[int, int] = (12, 16)
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: tuple[int, int] = (192, 384)
    # per multi-scale block: (blocks of branch 0, blocks of branch 1, fusion depth)
    depth: tuple[tuple[int, int, int], ...] = ((1, 4, 0), (1, 4, 0), (1, 4, 0))
    num_heads: tuple[int, int] = (6, 6)
    mlp_ratio: tuple[float, ...] = (4.0, 4.0, 1.0)  # branch 0, branch 1, (unused by the fusion)
    multi_conv: bool = False  # the "dagger" three-conv patch stem
    crop_scale: bool = False  # centre-crop instead of resize where a branch's size is smaller
    qkv_bias: bool = True
    global_pool: str = "token"  # "token" | "avg"
    drop_rate: float = 0.0  # dropout before the heads
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    attn_impl: str = "auto"
    distilled: bool = False  # DeiT distillation token + head in each branch


def _init_weights(module: nn.Module) -> None:
    """timm's CrossViT init: truncated normal (std 0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_POOLS = ("token", "avg")


def scale_image(x: Tensor, size: tuple[int, int], crop_scale: bool = False) -> Tensor:
    """Bring x (B, C, H, W) to ``size`` as timm's CrossViT does.

    Unchanged when (H, W) == size; else centre-cropped if ``crop_scale`` and the input is at least
    ``size``, else ``F.interpolate(mode="bicubic", align_corners=False)`` without antialiasing.
    """
    H, W = x.shape[-2:]
    if H == size[0] and W == size[1]:
        return x
    if crop_scale and size[0] <= H and size[1] <= W:
        top, left = int(round((H - size[0]) / 2.0)), int(round((W - size[1]) / 2.0))
        return x[:, :, top : top + size[0], left : left + size[1]]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


torch.fx.wrap("scale_image")  # one graph node under torch.fx: it branches on the input size


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


# (kernel, stride, padding) of the three convolutions of the "dagger" stems, by patch size.
_MULTI_CONV = {
    12: ((7, 4, 3), (3, 3, 0), (3, 1, 1)),
    16: ((7, 4, 3), (3, 2, 1), (3, 2, 1)),
}


class CrossViTPatchEmbed(nn.Module):
    """Image -> patch tokens for one branch: one strided conv, or the dagger three-conv stem.

    ``proj`` is ``Conv2d(C, D, p, stride=p)``, or with ``multi_conv`` the Sequential
    ``Conv(C, D/4, 7, s4, p3), ReLU, Conv(D/4, D/2, 3, s3|s2), ReLU, Conv(D/2, D, 3)`` (timm's keys
    ``proj.0``, ``proj.2``, ``proj.4``). x: (B, C, H, W) with (H, W) == ``img_size`` -> (B, N, D),
    N = (H // p) * (W // p).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int = 3,
        embed_dim: int = 768,
        multi_conv: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.multi_conv = multi_conv
        if multi_conv:
            if self.patch_size[0] != self.patch_size[1] or self.patch_size[0] not in _MULTI_CONV:
                raise ValueError(
                    f"the multi-conv (dagger) patch stem exists for patch sizes {sorted(_MULTI_CONV)}, "
                    f"got {self.patch_size}"
                )
            (k1, s1, p1), (k2, s2, p2), (k3, s3, p3) = _MULTI_CONV[self.patch_size[0]]
            self.proj = nn.Sequential(
                nn.Conv2d(in_chans, embed_dim // 4, kernel_size=k1, stride=s1, padding=p1),
                nn.ReLU(inplace=True),
                nn.Conv2d(embed_dim // 4, embed_dim // 2, kernel_size=k2, stride=s2, padding=p2),
                nn.ReLU(inplace=True),
                nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=k3, stride=s3, padding=p3),
            )
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.img_size = (0, 0)
        self.set_input_size(img_size)

    def _stem_grid(self, img_size: tuple[int, int]) -> tuple[int, int]:
        if not self.multi_conv:
            return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]
        out = []
        for n in img_size:
            for k, s, p in _MULTI_CONV[self.patch_size[0]]:
                n = _conv_out(n, k, s, p)
            out.append(n)
        return out[0], out[1]

    def check_input_size(self, img_size: int | tuple[int, int]) -> tuple[int, int]:
        """Validate a branch input size: the stem's grid must be (H // p, W // p), at least 1x1."""
        img_size = to_2tuple(img_size)
        grid = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        if min(grid) < 1:
            raise ValueError(f"branch input size {img_size} is smaller than the patch size {self.patch_size}")
        if self._stem_grid(img_size) != grid:
            raise ValueError(
                f"the multi-conv patch stem maps {img_size[0]}x{img_size[1]} to a "
                f"{self._stem_grid(img_size)} grid, not {grid} = size // patch {self.patch_size}; "
                f"choose an img_size whose branch sizes are multiples of the patch sizes"
            )
        return img_size

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Set the (H, W) this embedding expects (validated by :meth:`check_input_size`)."""
        self.img_size = self.check_input_size(img_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        g = self.grid_size
        return g[0] * g[1]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, N, D)."""
        if torch.jit.is_scripting() or is_tracing():
            torch._assert(
                (x.shape[-2] == self.img_size[0]) & (x.shape[-1] == self.img_size[1]),
                f"patch embedding expects {self.img_size[0]}x{self.img_size[1]} inputs",
            )
        elif tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"patch embedding expects {self.img_size[0]}x{self.img_size[1]} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class MultiScaleBlock(nn.Module):
    """One CrossViT stage: per-branch transformer blocks, then cross-attention fusion of the class tokens.

    For branch d and the other branch o = 1 - d (timm's key names):

    1. ``blocks[d]``: a Sequential of ViT ``Block`` s on branch d's tokens;
    2. ``projs[d]`` (LayerNorm, GELU, Linear D_d -> D_o) maps branch d's class token to width D_o;
    3. ``fusion[d]``: a :class:`CrossAttentionBlock` (width D_o, heads of branch o) on
       ``[projected class token; patch tokens of branch o]`` returns the new class token;
    4. ``revert_projs[d]`` (LayerNorm, GELU, Linear D_o -> D_d) maps it back, and branch d's output
       is ``[reverted class token; branch d's patch tokens after step 1]``.

    ``forward(xs)``: [(B, P + N_0, D_0), (B, P + N_1, D_1)] -> the same shapes, P =
    ``num_prefix_tokens``. With P = 2 (distilled CrossViT: class token, distillation token,
    patches) the distillation tokens take part in step 1 only: the fusion exchanges the class
    tokens alone (step 3 reads the other branch's patch tokens, without its distillation token)
    and step 4 keeps branch d's own distillation token and patches.
    """

    def __init__(
        self,
        dim: tuple[int, int],
        depth: tuple[int, int, int],
        num_heads: tuple[int, int],
        mlp_ratio: tuple[float, ...],
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Optional[list[float]] = None,
        attn_impl: str = "auto",
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        nb = len(dim)
        self.num_prefix_tokens = int(num_prefix_tokens)
        if nb != 2 or len(depth) != 3 or len(num_heads) != 2:
            raise ValueError(f"CrossViT has two branches: got dim {dim}, depth {depth}, num_heads {num_heads}")
        if min(depth[:2]) < 1:
            raise ValueError(f"every branch needs at least one block per multi-scale block, got depth {depth}")
        drop_path = drop_path if drop_path is not None else [0.0] * (max(depth[:2]) + depth[2])
        self.num_branches = nb
        self.blocks = nn.ModuleList(
            nn.Sequential(
                *[
                    Block(
                        dim[d], num_heads[d], mlp_ratio[d], qkv_bias=qkv_bias, proj_drop=proj_drop,
                        attn_drop=attn_drop, drop_path=drop_path[i], attn_impl=attn_impl,
                    )
                    for i in range(depth[d])
                ]
            )
            for d in range(nb)
        )
        self.projs = nn.ModuleList(
            nn.Sequential(LayerNorm6(dim[d]), nn.GELU(), nn.Linear(dim[d], dim[(d + 1) % nb])) for d in range(nb)
        )

        def fusion_block(d: int) -> CrossAttentionBlock:
            o = (d + 1) % nb
            return CrossAttentionBlock(
                dim[o], num_heads[o], qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                drop_path=drop_path[-1], attn_impl=attn_impl,
            )

        # timm: a bare block when the fusion depth is 0 (all released models), else a Sequential
        self.fusion = nn.ModuleList(
            fusion_block(d) if depth[-1] == 0 else nn.Sequential(*[fusion_block(d) for _ in range(depth[-1])])
            for d in range(nb)
        )
        self.revert_projs = nn.ModuleList(
            nn.Sequential(LayerNorm6(dim[(d + 1) % nb]), nn.GELU(), nn.Linear(dim[(d + 1) % nb], dim[d]))
            for d in range(nb)
        )

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from ..layers.scriptable import ScriptMultiScaleBlock

        return ScriptMultiScaleBlock(self)

    def forward(
        self, xs: list[Tensor], return_attention: bool = False
    ) -> list[Tensor] | tuple[list[Tensor], list[list[Tensor]], list[list[Tensor]]]:
        """xs: per-branch tokens -> per-branch tokens.

        With ``return_attention`` also returns ``(self_maps, cross_maps)``: ``self_maps[d]`` lists
        the (B, H_d, P + N_d, P + N_d) weights of branch d's blocks, ``cross_maps[d]`` the
        (B, H_o, 1, 1 + N_o) weights of ``fusion[d]`` (branch d's class token over itself and branch
        o's patch tokens), one per fusion block.
        """
        self_maps: list[list[Tensor]] = [[] for _ in range(self.num_branches)]
        cross_maps: list[list[Tensor]] = [[] for _ in range(self.num_branches)]
        outs_b = []
        for d, blocks in enumerate(self.blocks):
            x = xs[d]
            if return_attention:
                for blk in blocks:
                    x, w = blk(x, return_attention=True)
                    self_maps[d].append(w)
            else:
                x = blocks(x)
            outs_b.append(x)
        outs = []
        for d in range(self.num_branches):
            o = (d + 1) % self.num_branches
            cls = self.projs[d](outs_b[d][:, :1])
            tmp = torch.cat([cls, outs_b[o][:, self.num_prefix_tokens :]], dim=1)
            fusion = self.fusion[d]
            for blk in fusion if isinstance(fusion, nn.Sequential) else (fusion,):
                if return_attention:
                    tmp, w = blk(tmp, return_attention=True)
                    cross_maps[d].append(w)
                else:
                    tmp = blk(tmp)
            cls = self.revert_projs[d](tmp[:, :1])
            outs.append(torch.cat([cls, outs_b[d][:, 1:]], dim=1))
        if return_attention:
            return outs, self_maps, cross_maps
        return outs


class CrossViT(DistillationMixin, VitferModel):
    """CrossViT: two patch scales, class-token cross-attention between them, averaged heads.

    x: (B, C, H, W), any H, W (resized per branch, see the module docstring)
    -> ``forward_features``: [normed tokens (B, 1 + N_0, D_0), (B, 1 + N_1, D_1)]
    -> ``forward_head``: logits (B, num_classes), the mean of the two heads' logits, or with
    ``pre_logits=True`` the concatenated pooled tokens (B, D_0 + D_1).

    ``distilled=True`` adds DeiT's distillation (a vitfer choice; timm has no distilled CrossViT):
    each branch i gets its own ``dist_token_i`` (1, 1, D_i), placed after its class token
    ((cls, dist, patches), ``num_prefix_tokens == 2``, ``pos_embed_i`` (1, 2 + N_i, D_i) covering
    both, as DeiT's ViT), and its own ``head_dist[i]`` (a ModuleList, like ``head``). The
    distillation tokens take part in their branch's self-attention blocks; the cross-attention
    fusion exchanges the class tokens only, as without distillation (see :class:`MultiScaleBlock`).
    The class logits are the mean of ``head[i](cls_i)`` over the branches, the distillation logits
    the mean of ``head_dist[i](dist_i)``; ``forward`` gives ``(cls_logits + dist_logits) / 2``, or
    the pair in distilled training (:class:`~vitfer.models.base.DistillationMixin`), and
    ``pre_logits`` the per-branch means ``(cls_i + dist_i) / 2`` concatenated (B, D_0 + D_1).
    """

    def __init__(self, cfg: CrossViTConfig, name: str = "") -> None:
        super().__init__()
        self.model_name = name
        check_global_pool(cfg.global_pool, _POOLS)
        if not isinstance(cfg.patch_size, (tuple, list)):
            raise ValueError(
                f"CrossViT's patch_size is a pair (branch 0, branch 1), e.g. (12, 16) or (6, 8); got {cfg.patch_size!r}"
            )
        if not (len(cfg.patch_size) == len(cfg.embed_dim) == len(cfg.num_heads) == len(cfg.img_scale) == 2):
            raise ValueError(
                f"CrossViT has two branches: patch_size {cfg.patch_size}, embed_dim {cfg.embed_dim}, "
                f"num_heads {cfg.num_heads}, img_scale {cfg.img_scale} must all have two entries"
            )
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.global_pool = cfg.global_pool
        self.num_branches = 2
        self.embed_dim = tuple(int(d) for d in cfg.embed_dim)
        self.num_features = sum(self.embed_dim)
        self.img_scale = tuple(float(s) for s in cfg.img_scale)
        self.crop_scale = cfg.crop_scale
        self.img_size = to_2tuple(cfg.img_size)
        self.img_size_scaled = self._scaled_sizes(self.img_size)
        self.distilled = bool(cfg.distilled)
        self.distilled_training = False
        if self.distilled:
            self._check_distilled_pool(cfg.global_pool, building=True)
        self.num_prefix_tokens = P = 2 if self.distilled else 1

        self.patch_embed = nn.ModuleList(
            CrossViTPatchEmbed(s, p, cfg.in_chans, d, cfg.multi_conv)
            for s, p, d in zip(self.img_size_scaled, cfg.patch_size, self.embed_dim)
        )
        n0, n1 = (pe.num_patches for pe in self.patch_embed)
        self.pos_embed_0 = nn.Parameter(torch.zeros(1, P + n0, self.embed_dim[0]))
        self.cls_token_0 = nn.Parameter(torch.zeros(1, 1, self.embed_dim[0]))
        self.pos_embed_1 = nn.Parameter(torch.zeros(1, P + n1, self.embed_dim[1]))
        self.cls_token_1 = nn.Parameter(torch.zeros(1, 1, self.embed_dim[1]))
        if self.distilled:
            self.dist_token_0 = nn.Parameter(torch.zeros(1, 1, self.embed_dim[0]))
            self.dist_token_1 = nn.Parameter(torch.zeros(1, 1, self.embed_dim[1]))
        else:  # plain attributes: no state-dict entries, a static branch for TorchScript
            self.dist_token_0 = None
            self.dist_token_1 = None
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)

        # stochastic depth: linear over sum(branch-1 depth + fusion depth), sliced per stage (timm)
        total = sum(sum(c[-2:]) for c in cfg.depth)
        dpr = torch.linspace(0, cfg.drop_path_rate, total, device="cpu").tolist() if total else []
        blocks, ptr = [], 0
        for c in cfg.depth:
            cur = max(c[:-1]) + c[-1]
            blocks.append(
                MultiScaleBlock(
                    self.embed_dim, tuple(c), tuple(cfg.num_heads), tuple(cfg.mlp_ratio), qkv_bias=cfg.qkv_bias,
                    proj_drop=cfg.proj_drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=dpr[ptr : ptr + cur],
                    attn_impl=cfg.attn_impl, num_prefix_tokens=P,
                )
            )
            ptr += cur
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.ModuleList(LayerNorm6(d) for d in self.embed_dim)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = self._make_heads(cfg.num_classes)
        self.head_dist = self._make_heads(cfg.num_classes) if self.distilled else None
        # one tap per branch and multi-scale block, branch-major (timm): index b * depth + i is
        # branch b's patch tokens after block i
        self.num_feature_blocks = len(self.blocks)
        self.feature_info = [
            dict(num_chs=self.embed_dim[b], reduction=round(cfg.patch_size[b] / self.img_scale[b]), module=f"blocks.{i}")
            for b in range(self.num_branches)
            for i in range(self.num_feature_blocks)
        ]
        self.default_out_indices = (self.num_feature_blocks - 1, 2 * self.num_feature_blocks - 1)  # features_only (timm)
        self.init_weights()

    def _scaled_sizes(self, img_size: tuple[int, int]) -> list[tuple[int, int]]:
        # exactly timm's expression (int() of the float product), e.g. 240 * (224 / 240) -> 224
        return [tuple(int(s * scale) for s in img_size) for scale in self.img_scale]

    def _make_heads(self, num_classes: int, device: Optional[torch.device] = None) -> nn.ModuleList:
        return nn.ModuleList(
            nn.Linear(d, num_classes, device=device) if num_classes > 0 else nn.Identity() for d in self.embed_dim
        )

    def init_weights(self) -> None:
        for p in (self.pos_embed_0, self.cls_token_0, self.pos_embed_1, self.cls_token_1):
            nn.init.trunc_normal_(p, std=0.02)
        for p in (self.dist_token_0, self.dist_token_1):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.apply(_init_weights)

    # -- API ---------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        out = {"cls_token_0", "cls_token_1", "pos_embed_0", "pos_embed_1"}
        return out | {"dist_token_0", "dist_token_1"} if self.distilled else out

    def get_classifier(self) -> Union[nn.ModuleList, tuple[nn.ModuleList, nn.ModuleList]]:
        """The two heads (``head.0`` on branch 0, ``head.1`` on branch 1); distilled:
        ``(head, head_dist)``."""
        if self.distilled:
            return self.head, self.head_dist
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace both heads (and both ``head_dist`` if distilled) by freshly initialised
        Linear(D_i, num_classes) (Identity for 0)."""
        if self.distilled:
            if global_pool not in (None, "token"):
                raise ValueError(
                    f"{self.model_name or 'CrossViT'} is distilled: its heads read the class and distillation "
                    f"tokens, so global_pool must be 'token', got {global_pool!r}"
                )
        elif global_pool is not None:
            self.global_pool = check_global_pool(global_pool, _POOLS)
        self.num_classes = num_classes
        self.head = self._make_heads(num_classes, self.cls_token_0.device)
        self.head.apply(_init_weights)
        self.head.train(self.training)
        if self.distilled:
            self.head_dist = self._make_heads(num_classes, self.cls_token_0.device)
            self.head_dist.apply(_init_weights)
            self.head_dist.train(self.training)

    @torch.no_grad()
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Change ``img_size`` (branch sizes ``int(img_size * img_scale[i])``), resampling the
        position embeddings (bicubic with antialiasing, as timm's ``resample_abs_pos_embed``)."""
        img_size = to_2tuple(img_size)
        scaled = self._scaled_sizes(img_size)
        old = [pe.grid_size for pe in self.patch_embed]
        for pe, s in zip(self.patch_embed, scaled):  # validate both before changing anything
            pe.check_input_size(s)
        for i, (pe, s) in enumerate(zip(self.patch_embed, scaled)):
            pe.set_input_size(s)
            name = f"pos_embed_{i}"
            p = getattr(self, name)
            new = resample_abs_pos_embed(p.data, pe.grid_size, old[i], self.num_prefix_tokens)
            setattr(self, name, nn.Parameter(new, requires_grad=p.requires_grad))
        self.img_size = img_size
        self.img_size_scaled = scaled
        if self.pretrained_cfg:
            self.pretrained_cfg["input_size"] = (self.in_chans, *img_size)

    # -- forward -----------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, H, W) -> [(B, P + N_0, D_0), (B, P + N_1, D_1)] with class token (and
        distillation token), and positions."""
        check_input(x, self.in_chans, None, (self.model_name if len(self.model_name) > 0 else "CrossViT"))
        B = x.shape[0]
        xs = []
        for i, pe in enumerate(self.patch_embed):
            t = pe(scale_image(x, self.img_size_scaled[i], self.crop_scale))
            cls, pos = (self.cls_token_0, self.pos_embed_0) if i == 0 else (self.cls_token_1, self.pos_embed_1)
            dist = self.dist_token_0 if i == 0 else self.dist_token_1
            if dist is None:
                xs.append(self.pos_drop(torch.cat([cls.expand(B, -1, -1), t], dim=1) + pos))
            else:
                xs.append(self.pos_drop(torch.cat([cls.expand(B, -1, -1), dist.expand(B, -1, -1), t], dim=1) + pos))
        return xs

    def _run_blocks(self, xs: list[Tensor]) -> list[Tensor]:
        if not torch.jit.is_scripting() and self._checkpointing():
            for blk in self.blocks:
                xs = self._run_block(blk, xs)
            return xs
        for blk in self.blocks:
            xs = blk(xs)
        return xs

    @torch.jit.unused
    def _run_block(self, blk: nn.Module, xs: list[Tensor]) -> list[Tensor]:
        if self._checkpointing():
            from torch.utils.checkpoint import checkpoint

            return list(checkpoint(lambda *ts: tuple(blk(list(ts))), *xs, use_reentrant=False))
        return blk(xs)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, H, W) -> per-branch normed tokens [(B, P + N_0, D_0), (B, P + N_1, D_1)]."""
        xs = self._run_blocks(self._embed(x))
        out: list[Tensor] = []
        for i, norm in enumerate(self.norm):
            out.append(norm(xs[i]))
        return out

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[Tensor], tuple[list[Tensor], list[Tensor]]]:
        """Per-branch block outputs as timm's ``CrossVit.forward_intermediates``.

        With D multi-scale blocks, index i < D is branch 0's (small patches) patch tokens after
        block i and index D + i branch 1's; ``norm`` applies the branch's final norm. Returns
        ``(forward_features(x), intermediates)`` (the first a list of the two branches' tokens) or
        only the intermediates, (B, D_b, h_b, w_b) maps (``"NCHW"``) or (B, N_b, D_b) (``"NLC"``).
        """
        check_output_fmt(output_fmt)
        nb = self.num_feature_blocks
        take, _ = feature_take_indices(self.num_branches * nb, indices)
        max_block = max(i % nb for i in take)
        xs = self._embed(x)
        blocks = self.blocks[: max_block + 1] if stop_early else self.blocks
        per_branch: list[list[Tensor]] = [[] for _ in range(self.num_branches)]
        for i, blk in enumerate(blocks):
            xs = self._run_block(blk, xs)
            for b, norm_layer in enumerate(self.norm):
                if b * nb + i in take:
                    per_branch[b].append((norm_layer(xs[b]) if norm else xs[b])[:, self.num_prefix_tokens :])
        ys: list[Tensor] = []
        for pe, feats in zip(self.patch_embed, per_branch):
            if output_fmt == "NCHW":
                h, w = pe.grid_size
                feats = [y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for y in feats]
            ys.extend(feats)
        if intermediates_only:
            return ys
        return [norm_layer(t) for norm_layer, t in zip(self.norm, xs)], ys

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the multi-scale blocks up to the last one any index of either branch needs (timm:
        the other branch's fusion in that block stays, unused)."""
        nb = self.num_feature_blocks
        take, _ = feature_take_indices(self.num_branches * nb, indices)
        self.blocks = self.blocks[: max(i % nb for i in take) + 1]
        if prune_norm:
            self.norm = nn.ModuleList(nn.Identity() for _ in range(self.num_branches))
        if prune_head:
            self.reset_classifier(0)
        return take

    def _forward_head_distilled(self, xs: list[Tensor], pre_logits: bool) -> Tensor:
        """per-branch tokens -> ``(cls_logits + dist_logits) / 2``, each the mean over the branches
        (the pair in distilled training); ``pre_logits`` (or no classes): the per-branch means of
        the class and distillation tokens, concatenated (B, D_0 + D_1)."""
        cls: list[Tensor] = []
        dist: list[Tensor] = []
        for t in xs:
            cls.append(self.head_drop(t[:, 0]))
            dist.append(self.head_drop(t[:, 1]))
        if pre_logits or isinstance(self.head[0], nn.Identity):
            pooled: list[Tensor] = []
            for i in range(len(cls)):
                pooled.append((cls[i] + dist[i]) / 2)
            return torch.cat(pooled, dim=1)
        logits: list[Tensor] = []
        for i, head in enumerate(self.head):
            logits.append(head(cls[i]))
        logits_dist: list[Tensor] = []
        for i, head in enumerate(self.head_dist):
            logits_dist.append(head(dist[i]))
        x_cls, x_dist = torch.stack(logits, dim=0).mean(dim=0), torch.stack(logits_dist, dim=0).mean(dim=0)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x_cls, x_dist
        return (x_cls + x_dist) / 2

    def forward_head(self, xs: list[Tensor], pre_logits: bool = False) -> Tensor:
        """per-branch tokens -> mean of the two heads' logits (B, num_classes), or with
        ``pre_logits`` (or no classes) the pooled tokens concatenated (B, D_0 + D_1).
        Distilled: see :meth:`_forward_head_distilled`."""
        if self.head_dist is not None:
            return self._forward_head_distilled(xs, pre_logits)
        pooled: list[Tensor] = []
        for t in xs:
            pooled.append(self.head_drop(t[:, 1:].mean(dim=1) if self.global_pool == "avg" else t[:, 0]))
        if pre_logits or isinstance(self.head[0], nn.Identity):
            return torch.cat(pooled, dim=1)
        logits: list[Tensor] = []
        for i, head in enumerate(self.head):
            logits.append(head(pooled[i]))
        return torch.stack(logits, dim=0).mean(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> logits (B, num_classes) (features (B, D_0 + D_1) if num_classes=0).

        Same result as ``forward_head(forward_features(x))``; with token pooling only the class
        tokens (and distillation tokens) go through the final norms (LayerNorm acts on each token
        separately).
        """
        if self.global_pool != "token":
            return self.forward_head(self.forward_features(x))
        xs = self._run_blocks(self._embed(x))
        cls: list[Tensor] = []
        for i, norm in enumerate(self.norm):
            cls.append(norm(xs[i][:, : self.num_prefix_tokens]))
        return self.forward_head(cls)

    def attention_maps(self, x: Tensor) -> list[dict[str, list[Tensor]]]:
        """Attention weights of every layer, per branch (hand-written attention path).

        Returns ``maps`` with ``maps[d]`` for branch d (0: small patches, 1: large patches):

        * ``maps[d]["self"]``: the (B, H_d, P + N_d, P + N_d) self-attention weights of each of
          branch d's transformer blocks, in order (all multi-scale blocks, e.g. 3 for branch 0
          and 12 for branch 1 of crossvit_base_240);
        * ``maps[d]["cross"]``: per multi-scale block, the (B, H_o, 1, 1 + N_o) weights with which
          branch d's class token (projected) attends to the other branch o's tokens
          ``[itself; patches of o]`` in ``fusion[d]`` (never a distillation token).
        """
        xs = self._embed(x)
        maps: list[dict[str, list[Tensor]]] = [{"self": [], "cross": []} for _ in range(self.num_branches)]
        for blk in self.blocks:
            xs, self_maps, cross_maps = blk(xs, return_attention=True)
            for d in range(self.num_branches):
                maps[d]["self"].extend(self_maps[d])
                maps[d]["cross"].extend(cross_maps[d])
        return maps


def checkpoint_filter_fn(
    state_dict: dict[str, Tensor], model: CrossViT, grid_sizes: dict[str, tuple[int, int]] | None = None
) -> dict[str, Tensor]:
    """Adapt a timm- or IBM-layout CrossViT state dict to ``model``.

    IBM's ``pos_embed.0`` / ``cls_token.0`` (an ``nn.ParameterList``) become timm's ``pos_embed_0`` /
    ``cls_token_0`` (timm's own filter: '.' -> '_' in any key naming them); position embeddings
    whose grid differs from the model's are resampled (bicubic, antialiased; class token kept).
    ``grid_sizes["pos_embed_<i>"]`` is the checkpoint's own grid of branch ``i`` where its metadata
    records it (non-square included); else it is inferred (square, or the branch's aspect).
    """
    from ..layers.pos_embed import infer_grid_size

    check_distillation_keys(state_dict, model, ("dist_token_0", "dist_token_1"))
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if "pos_embed" in k or "cls_token" in k:
            k = k.replace(".", "_")
        out[k] = v
    for i, pe in enumerate(model.patch_embed):
        key = f"pos_embed_{i}"
        p = out.get(key)
        target = getattr(model, key)
        if p is None or p.shape == target.shape or p.ndim != 3 or p.shape[-1] != target.shape[-1]:
            continue
        try:
            old = infer_grid_size(p.shape[1] - model.num_prefix_tokens, (grid_sizes or {}).get(key), pe.grid_size)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from e
        out[key] = resample_abs_pos_embed(p, pe.grid_size, old, model.num_prefix_tokens)
    return out


_240 = dict(img_size=240, img_scale=(1.0, 224 / 240), patch_size=(12, 16))
_408 = dict(img_size=408, img_scale=(1.0, 384 / 408), patch_size=(12, 16))


def _row(sizes: dict, dim: tuple[int, int], depth1: int, heads: int, mlp: float, dagger: bool = False) -> dict:
    return dict(
        sizes, embed_dim=dim, depth=((1, depth1, 0),) * 3, num_heads=(heads, heads), mlp_ratio=(mlp, mlp, 1.0),
        multi_conv=dagger,
    )


CROSSVIT_VARIANTS: dict[str, dict[str, Any]] = {
    #                               sizes  embed_dim   branch-1 depth, heads, mlp, dagger
    "crossvit_tiny_240": _row(_240, (96, 192), 4, 3, 4.0),
    "crossvit_small_240": _row(_240, (192, 384), 4, 6, 4.0),
    "crossvit_base_240": _row(_240, (384, 768), 4, 12, 4.0),
    "crossvit_9_240": _row(_240, (128, 256), 3, 4, 3.0),
    "crossvit_15_240": _row(_240, (192, 384), 5, 6, 3.0),
    "crossvit_18_240": _row(_240, (224, 448), 6, 7, 3.0),
    "crossvit_9_dagger_240": _row(_240, (128, 256), 3, 4, 3.0, dagger=True),
    "crossvit_15_dagger_240": _row(_240, (192, 384), 5, 6, 3.0, dagger=True),
    "crossvit_18_dagger_240": _row(_240, (224, 448), 6, 7, 3.0, dagger=True),
    "crossvit_15_dagger_408": _row(_408, (192, 384), 5, 6, 3.0, dagger=True),
    "crossvit_18_dagger_408": _row(_408, (224, 448), 6, 7, 3.0, dagger=True),
}


def _pretrained_cfg(name: str) -> PretrainedCfg:
    v = CROSSVIT_VARIANTS[name]
    size = v["img_size"]
    return PretrainedCfg(
        hf_hub_id=f"timm/{name}.in1k",
        input_size=(3, size, size),
        crop_pct=1.0 if size == 408 else 0.875,
        interpolation="bicubic",
        first_conv=("patch_embed.0.proj.0", "patch_embed.1.proj.0") if v["multi_conv"]
        else ("patch_embed.0.proj", "patch_embed.1.proj"),
        classifier=("head.0", "head.1"),
        license="apache-2.0",
    )


_PRETRAINED = {name: _pretrained_cfg(name) for name in CROSSVIT_VARIANTS}


register_family("crossvit", CROSSVIT_VARIANTS, CrossViTConfig, CrossViT, _PRETRAINED)


def crossvit_tiny_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-Ti (D 96/192, 3 heads), 7.0M parameters."""
    return create_model("crossvit_tiny_240", pretrained=pretrained, **overrides)


def crossvit_small_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-S (D 192/384, 6 heads), 26.9M parameters."""
    return create_model("crossvit_small_240", pretrained=pretrained, **overrides)


def crossvit_base_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-B (D 384/768, 12 heads), 105.0M parameters: the study's crossvit_base."""
    return create_model("crossvit_base_240", pretrained=pretrained, **overrides)


def crossvit_9_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-9 (D 128/256, 4 heads, MLP ratio 3), 8.6M parameters."""
    return create_model("crossvit_9_240", pretrained=pretrained, **overrides)


def crossvit_15_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-15 (D 192/384, 6 heads, MLP ratio 3), 27.5M parameters."""
    return create_model("crossvit_15_240", pretrained=pretrained, **overrides)


def crossvit_18_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-18 (D 224/448, 7 heads, MLP ratio 3), 43.3M parameters."""
    return create_model("crossvit_18_240", pretrained=pretrained, **overrides)


def crossvit_9_dagger_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-9 with the three-conv patch stem, 8.8M parameters."""
    return create_model("crossvit_9_dagger_240", pretrained=pretrained, **overrides)


def crossvit_15_dagger_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-15 with the three-conv patch stem, 28.2M parameters."""
    return create_model("crossvit_15_dagger_240", pretrained=pretrained, **overrides)


def crossvit_18_dagger_240(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-18 with the three-conv patch stem, 44.3M parameters."""
    return create_model("crossvit_18_dagger_240", pretrained=pretrained, **overrides)


def crossvit_15_dagger_408(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-15 with the three-conv stem at 408 (branches 408 and 384), 28.5M parameters."""
    return create_model("crossvit_15_dagger_408", pretrained=pretrained, **overrides)


def crossvit_18_dagger_408(pretrained: bool | str = False, **overrides: Any) -> CrossViT:
    """CrossViT-18 with the three-conv stem at 408 (branches 408 and 384), 44.6M parameters."""
    return create_model("crossvit_18_dagger_408", pretrained=pretrained, **overrides)
