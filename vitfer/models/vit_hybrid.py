"""ViT-R50 hybrid (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, section 3.1).

A ResNetV2 backbone (non-pre-activation bottlenecks, group norm, weight-standardised convolutions
with TF SAME padding, three stages of 3/4/9 blocks, stride 16) turns the image into a 1024-channel
feature map; a 1x1 convolution projects each cell to a token of a ViT-B. Parameter names follow
timm's ``vit_base_r50_s16_*`` (``patch_embed.backbone.*``, ``patch_embed.proj.*``, then the ViT's
``cls_token``, ``pos_embed``, ``blocks.*``, ``norm.*``, ``head.*``), so timm checkpoints load
unchanged.

The transformer is vitfer's :class:`~vitfer.models.vit.VisionTransformer`; only the patch
embedding differs.

Speed on the CPU: the backbone runs in channels-last memory format (``channels_last=True``, the
default), where oneDNN's convolutions and pooling skip per-call layout conversions, and the
weight-standardised kernels are cached while no gradient flows into them (see
:class:`~vitfer.layers.std_conv.StdConv2dSame`). Channels-last sums in another order than timm's
NCHW run; with random weights the tokens then differ from timm's by about 1e-4 relative (timm
against itself, NCHW against channels-last input, differs by as much) and the logits by about
1e-5. ``channels_last=False`` reproduces timm's backbone arithmetic exactly.
"""

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvStem, PatchEmbed
from ..layers.padding import MaxPool2dSame
from ..layers.std_conv import StdConv2dSame
from .registry import INCEPTION_MEAN, INCEPTION_STD, PretrainedCfg, create_model, register_alias, register_family
from .vit import ViTConfig, VisionTransformer, checkpoint_filter_fn

__all__ = [
    "HYBRID_VARIANTS",
    "GroupNormAct",
    "HybridEmbed",
    "HybridViTConfig",
    "HybridVisionTransformer",
    "ResNetDStages",
    "ResNetV2Backbone",
    "ResNetV2Bottleneck",
    "checkpoint_filter_fn",
    "vit_base_r50_s16_224",
    "vit_base_r50_s16_384",
    "vit_base_resnet50_384",
    "vit_small_cs_48",
    "vit_tiny_cs_48",
    "vit_tiny_r18d_48",
]

_STD_CONV_EPS = 1e-8  # timm's _resnetv2: partial(StdConv2dSame, eps=1e-8)


@dataclass
class HybridViTConfig(ViTConfig):
    """ViT settings plus the backbone's. ``patch_size`` is the projection's kernel on the
    backbone's stride-16 feature map (1 for the R50 hybrids)."""

    patch_size: int = 1
    backbone: str = "resnetv2"  # "resnetv2" (the R50 hybrids) | "resnetd" (ResNet-D stages) | "convstem"
    backbone_layers: tuple[int, ...] = (3, 4, 9)
    channels_last: bool = True  # run the backbone in channels-last memory format (see the module docstring)
    # backbone "convstem": the stem's convolutions (the last one a plain conv: the token projection
    # when embed_proj is False, so its width is embed_dim)
    stem_channels: tuple[int, ...] = (32, 64, 128, 192)
    stem_kernel_size: tuple[int, ...] = (3, 3, 3, 1)
    stem_stride: tuple[int, ...] = (2, 2, 2, 1)
    embed_proj: bool = True  # a patch_size convolution from the backbone's features to the tokens
    # backbone "resnetd": the deep stem and the first len(resnet_layers) stages of a ResNet-D
    resnet_block: str = "basic"  # "basic" | "bottleneck"
    resnet_layers: tuple[int, ...] = (2, 2)  # blocks per stage used (resnet18d: 2, 2, 2, 2)

    def __post_init__(self) -> None:
        if self.backbone not in ("resnetv2", "resnetd", "convstem"):
            raise ValueError(f"backbone must be 'resnetv2', 'resnetd' or 'convstem', got {self.backbone!r}")
        if self.backbone == "resnetd" and not 1 <= len(self.resnet_layers) <= 4:
            raise ValueError(f"resnet_layers must give 1 to 4 stages, got {self.resnet_layers}")
        if not self.embed_proj and self.backbone == "convstem" and self.stem_channels[-1] != self.embed_dim:
            raise ValueError(
                f"without embed_proj the stem's last width is the token width: stem_channels[-1] "
                f"{self.stem_channels[-1]} != embed_dim {self.embed_dim}"
            )


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5) followed by ReLU unless ``apply_act=False``.

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, apply_act: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps=eps)
        self.apply_act = apply_act

    def forward(self, x: Tensor) -> Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu_(x) if self.apply_act else x


class DownsampleConv(nn.Module):
    """Shortcut projection: strided 1x1 StdConv then GroupNorm (no activation)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_chs, out_chs, 1, stride=stride, eps=_STD_CONV_EPS)
        self.norm = GroupNormAct(out_chs, apply_act=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class ResNetV2Bottleneck(nn.Module):
    """Non-pre-activation bottleneck: 1x1 -> 3x3 (stride) -> 1x1, GN+ReLU between, ReLU after the sum.

    x: (B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        mid = out_chs // 4
        self.downsample = DownsampleConv(in_chs, out_chs, stride) if downsample else None
        self.conv1 = StdConv2dSame(in_chs, mid, 1, eps=_STD_CONV_EPS)
        self.norm1 = GroupNormAct(mid)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride, eps=_STD_CONV_EPS)
        self.norm2 = GroupNormAct(mid)
        self.conv3 = StdConv2dSame(mid, out_chs, 1, eps=_STD_CONV_EPS)
        self.norm3 = GroupNormAct(out_chs, apply_act=False)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        x = self.norm3(self.conv3(x))
        return F.relu_(x.add_(shortcut))


class ResNetV2Stage(nn.Module):
    """``depth`` bottlenecks; the first carries the stride and the shortcut projection."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                ResNetV2Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, downsample=i == 0)
                for i in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ResNetV2Backbone(nn.Module):
    """timm's ``ResNetV2(preact=False, stem_type='same', conv_layer=StdConv2dSame(eps=1e-8))``
    without its head: a 7x7/2 stem conv, GN+ReLU, a SAME 3x3/2 max-pool, then one stage per entry
    of ``layers`` with widths 256, 512, 1024, 2048 (stride 1 for the first, 2 after).

    x: (B, in_chans, H, W) -> (B, num_features, ceil(H / r), ceil(W / r)), r = ``reduction``
    (16 for three stages).
    """

    def __init__(
        self, layers: tuple[int, ...] = (3, 4, 9), in_chans: int = 3, stem_chs: int = 64, channels_last: bool = True
    ) -> None:
        super().__init__()
        channels = (256, 512, 1024, 2048)
        if not 1 <= len(layers) <= len(channels):
            raise ValueError(f"ResNetV2 backbone takes 1 to {len(channels)} stages, got layers={layers}")
        self.channels_last = channels_last
        self.stem = nn.Sequential(
            OrderedDict(
                conv=StdConv2dSame(in_chans, stem_chs, 7, stride=2, eps=_STD_CONV_EPS),
                norm=GroupNormAct(stem_chs),
                pool=MaxPool2dSame(3, 2),
            )
        )
        self.stages = nn.Sequential()
        prev = stem_chs
        for i, (depth, chs) in enumerate(zip(layers, channels)):
            self.stages.add_module(str(i), ResNetV2Stage(prev, chs, 1 if i == 0 else 2, depth))
            prev = chs
        self.num_features = prev
        self.reduction = 4 * 2 ** (len(layers) - 1)
        self.init_weights()

    def init_weights(self) -> None:
        """timm's init as the hybrid applies it: Kaiming-normal convs, GN (1, 0), last GN of each
        residual branch zero."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResNetV2Bottleneck):
                nn.init.zeros_(m.norm3.weight)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x))


class ResNetDStages(nn.Module):
    """The deep stem and the first stages of a ResNet-D (vitfer's :class:`~vitfer.models.resnet.ResNet`),
    with its parameter names (``conv1.*``, ``bn1.*``, ``layer1.*`` ...): timm's
    ``create_model("resnet18d", features_only=True, out_indices=(len(layers),))``.

    x: (B, C, H, W) -> (B, num_features, ceil(H / r), ceil(W / r)), r = ``reduction`` = 4 * 2^(stages - 1).
    """

    def __init__(self, block: str, layers: tuple[int, ...], in_chans: int, channels_last: bool = True) -> None:
        super().__init__()
        from .resnet import ResNet, ResNetConfig

        full = ResNet(ResNetConfig(block=block, layers=tuple(layers) + (0,) * (4 - len(layers)), in_chans=in_chans,
                                   num_classes=0))
        self.conv1, self.bn1, self.maxpool = full.conv1, full.bn1, full.maxpool
        for i in range(len(layers)):
            self.add_module(f"layer{i + 1}", getattr(full, f"layer{i + 1}"))
        self.num_stages = len(layers)
        expansion = 4 if block == "bottleneck" else 1
        self.num_features = (64, 128, 256, 512)[len(layers) - 1] * expansion
        self.reduction = 4 * 2 ** (len(layers) - 1)
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(F.relu_(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        if hasattr(self, "layer2"):  # static in TorchScript
            x = self.layer2(x)
        if hasattr(self, "layer3"):
            x = self.layer3(x)
        if hasattr(self, "layer4"):
            x = self.layer4(x)
        return x


class HybridEmbed(PatchEmbed):
    __jit_unused_properties__ = ["grid_size", "num_patches"]

    """CNN feature map -> tokens: ``backbone``, then a ``patch_size`` convolution to ``embed_dim``
    (``proj``, a :class:`PatchEmbed` over the feature map).

    x: (B, C, H, W) -> (B, N, D), N = number of ``patch_size`` cells of the backbone's
    (ceil(H / r), ceil(W / r)) feature map, r = the backbone's reduction. ``img_size`` is the
    image size; the exact input size is checked by the model.
    """

    def __init__(
        self, backbone: nn.Module, img_size: int | tuple[int, int], patch_size: int, embed_dim: int, proj: bool = True
    ) -> None:
        self.feature_ratio = backbone.reduction  # a plain int, needed by the size check in __init__
        self._feature_size = getattr(backbone, "feature_size", None)
        super().__init__(img_size, patch_size, backbone.num_features, embed_dim)
        self.backbone = backbone
        if not proj:  # the backbone's last layer makes the tokens (timm's HybridEmbed(proj=False))
            if patch_size != 1 or backbone.num_features != embed_dim:
                raise ValueError(
                    f"a hybrid embedding without projection needs patch_size 1 and a backbone of embed_dim "
                    f"({embed_dim}) features, got patch_size {patch_size} and {backbone.num_features}"
                )
            self.proj = nn.Identity()

    def feature_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the backbone's output for an (H, W) image: each SAME stride-2 step gives ceil(n / 2)."""
        if self._feature_size is not None:
            return self._feature_size(img_size)
        return math.ceil(img_size[0] / self.feature_ratio), math.ceil(img_size[1] / self.feature_ratio)

    def _check_divisible(self, img_size: tuple[int, int]) -> None:
        feat = self.feature_size(img_size)
        if feat[0] % self.patch_size[0] or feat[1] % self.patch_size[1]:
            raise ValueError(
                f"image size {img_size} gives a {feat} backbone feature map, not divisible by the "
                f"patch size {self.patch_size}"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        feat = self.feature_size(self.img_size)
        return feat[0] // self.patch_size[0], feat[1] // self.patch_size[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)


class HybridVisionTransformer(VisionTransformer):
    """ViT whose patch embedding is a ResNetV2 backbone plus a 1x1 projection.

    x: (B, C, H, W) with (H, W) = ``img_size`` exactly -> ``forward_features`` (B, 1 + N, D)
    -> logits (B, num_classes). All of :class:`VisionTransformer`'s API applies
    (``set_input_size`` resamples the position embeddings to the new feature grid).
    """

    def __init__(self, cfg: HybridViTConfig, name: str = "") -> None:
        if cfg.backbone == "convstem":
            backbone: nn.Module = ConvStem(cfg.in_chans, cfg.stem_channels, cfg.stem_kernel_size, cfg.stem_stride)
        elif cfg.backbone == "resnetd":
            backbone = ResNetDStages(cfg.resnet_block, cfg.resnet_layers, cfg.in_chans, cfg.channels_last)
        else:
            backbone = ResNetV2Backbone(cfg.backbone_layers, cfg.in_chans, channels_last=cfg.channels_last)
        embed = HybridEmbed(backbone, cfg.img_size, cfg.patch_size, cfg.embed_dim, proj=cfg.embed_proj)
        # VisionTransformer sizes cls/pos embeddings from its own patch embedding: build it on a
        # stand-in "image" the size of the token grid with 1x1 patches (a 3 -> D 1x1 conv), then
        # put the hybrid embedding in its place.
        super().__init__(replace(cfg, img_size=embed.grid_size, patch_size=1), name)
        self.patch_embed = embed
        self.cfg = cfg
        self.set_feature_info()


HYBRID_VARIANTS: dict[str, dict[str, Any]] = {
    # timm builds the 224 model without a head: its only checkpoint (in21k) has none.
    "vit_base_r50_s16_224": dict(img_size=224, embed_dim=768, depth=12, num_heads=12, num_classes=0),
    "vit_base_r50_s16_384": dict(img_size=384, embed_dim=768, depth=12, num_heads=12),
    # ViTs with a convolutional stem (Xiao et al. 2021) for small face crops trained from scratch:
    # three stride-2 steps of two 3x3 conv + BN + ReLU, a 1x1 conv to the tokens, 6x6 = 36 tokens
    # at 48 px.
    "vit_tiny_cs_48": dict(
        img_size=48, embed_dim=192, depth=4, num_heads=3, backbone="convstem",
        stem_channels=(32, 32, 64, 64, 128, 128, 192), stem_kernel_size=(3, 3, 3, 3, 3, 3, 1),
        stem_stride=(2, 1, 2, 1, 2, 1, 1), embed_proj=False, num_classes=7,
    ),
    # ViT-Ti blocks on the deep stem and first two stages of a ResNet-18-D (stride 8): 6x6 = 36
    # tokens at 48 px. The scratch recipe's transformer: it learns the synthetic faces and CK+48 from
    # scratch about as fast as resnet18d does (see README).
    "vit_tiny_r18d_48": dict(
        img_size=48, embed_dim=192, depth=4, num_heads=3, backbone="resnetd", resnet_block="basic",
        resnet_layers=(2, 2), num_classes=7,
    ),
    "vit_small_cs_48": dict(
        img_size=48, embed_dim=384, depth=6, num_heads=6, backbone="convstem",
        stem_channels=(48, 48, 96, 96, 192, 192, 384), stem_kernel_size=(3, 3, 3, 3, 3, 3, 1),
        stem_stride=(2, 1, 2, 1, 2, 1, 1), embed_proj=False, num_classes=7,
    ),
}

def _cfg(hf_hub_id: str, **kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(
        hf_hub_id=hf_hub_id, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD,
        fixed_input_size=True, first_conv="patch_embed.backbone.stem.conv", classifier="head",
        license="apache-2.0", **kwargs,
    )


def _scratch_cfg(first_conv: str) -> PretrainedCfg:
    """The input settings of a 48-px model without pretrained weights (7 expression classes)."""
    return PretrainedCfg(
        hf_hub_id=None, input_size=(3, 48, 48), crop_pct=1.0, interpolation="bilinear", mean=INCEPTION_MEAN,
        std=INCEPTION_STD, num_classes=7, fixed_input_size=True, first_conv=first_conv, classifier="head",
        license="apache-2.0",
    )


_PRETRAINED = {
    "vit_base_r50_s16_224": _cfg(
        "timm/vit_base_r50_s16_224.orig_in21k", input_size=(3, 224, 224), crop_pct=0.9, num_classes=0
    ),
    "vit_base_r50_s16_384": _cfg(
        "timm/vit_base_r50_s16_384.orig_in21k_ft_in1k", input_size=(3, 384, 384), crop_pct=1.0
    ),
    # no pretrained weights: built for training from scratch (the ``scratch`` recipe)
    "vit_tiny_cs_48": _scratch_cfg("patch_embed.backbone.0.conv"),
    "vit_small_cs_48": _scratch_cfg("patch_embed.backbone.0.conv"),
    "vit_tiny_r18d_48": _scratch_cfg("patch_embed.backbone.conv1.0"),
}


register_family("vit_hybrid", HYBRID_VARIANTS, HybridViTConfig, HybridVisionTransformer, _PRETRAINED)
register_alias("vit_base_resnet50_384", "vit_base_r50_s16_384")


def vit_base_r50_s16_224(pretrained: bool | str = False, **overrides: Any) -> HybridVisionTransformer:
    """R50+ViT-B/16 at 224 (ResNetV2 3/4/9 stages + ViT-B), 98M parameters; no head by default."""
    return create_model("vit_base_r50_s16_224", pretrained=pretrained, **overrides)


def vit_base_r50_s16_384(pretrained: bool | str = False, **overrides: Any) -> HybridVisionTransformer:
    """R50+ViT-B/16 at 384 (ResNetV2 3/4/9 stages + ViT-B), 99M parameters, ImageNet-1k head."""
    return create_model("vit_base_r50_s16_384", pretrained=pretrained, **overrides)


def vit_tiny_cs_48(pretrained: bool | str = False, **overrides: Any) -> HybridVisionTransformer:
    """ViT-Ti width (192, 3 heads, 4 blocks) on a convolutional stem, 48 px, 36 tokens, 2.1M
    parameters; no pretrained weights (the ``scratch`` recipe's transformer)."""
    return create_model("vit_tiny_cs_48", pretrained=pretrained, **overrides)


def vit_tiny_r18d_48(pretrained: bool | str = False, **overrides: Any) -> HybridVisionTransformer:
    """ViT-Ti width (192, 3 heads, 4 blocks) on ResNet-18-D's stem and first two stages (stride 8),
    48 px, 36 tokens, 2.5M parameters; no pretrained weights (the ``scratch`` recipe's model)."""
    return create_model("vit_tiny_r18d_48", pretrained=pretrained, **overrides)


def vit_small_cs_48(pretrained: bool | str = False, **overrides: Any) -> HybridVisionTransformer:
    """ViT-S width (384, 6 heads, 6 blocks) on a convolutional stem, 48 px, 36 tokens, 11.4M
    parameters; no pretrained weights."""
    return create_model("vit_small_cs_48", pretrained=pretrained, **overrides)


def vit_base_resnet50_384(pretrained: bool | str = False, **overrides: Any) -> HybridVisionTransformer:
    """The study's name (timm's deprecated alias) of :func:`vit_base_r50_s16_384`."""
    return create_model("vit_base_resnet50_384", pretrained=pretrained, **overrides)
