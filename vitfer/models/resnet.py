"""ResNet-D (He et al., "Bag of Tricks for Image Classification with CNNs", CVPR 2019).

The "D" tweaks of ResNet: a deep stem of three 3x3 convolutions (32, 32, 64 channels) instead of
one 7x7, the stride on the bottleneck's 3x3 convolution, and a 2x2 average pool before the 1x1
shortcut projection instead of a strided projection. Parameter names follow timm's ``ResNet``
(``conv1.{0,1,3,4,6}``, ``bn1``, ``layer{1-4}.{j}.conv{1,2,3}`` / ``bn{1,2,3}``,
``downsample.{1,2}``, ``fc``), so timm checkpoints load unchanged. Depths are rows of
``RESNET_VARIANTS``.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import DropPath, check_input
from ..layers.classifier import classifier_head
from ..layers.tracing import is_tracing
from .base import VitferModel, check_output_fmt, checkpoint_seq
from .features import feature_take_indices
from .registry import PretrainedCfg, create_model, register_family

__all__ = [
    "RESNET_VARIANTS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNetConfig",
    "resnet18d",
    "resnet34d",
    "resnet50d",
    "resnet101d",
]


@dataclass
class ResNetConfig:
    block: str = "bottleneck"  # "basic" | "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    stem_width: int = 32
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0  # dropout before the classifier
    head_hidden: tuple[int, ...] = ()  # hidden widths of an MLP classifier (() = one Linear, as timm)
    drop_path_rate: float = 0.0  # stochastic depth, linear in the block index
    zero_init_last: bool = True  # zero the last BN of each residual branch at init
    channels_last: bool = True  # run in channels-last memory format (faster with oneDNN on CPU)
    global_pool: str = "avg"  # "avg", or "" (no pooling: only with num_classes=0, as timm)


def check_cnn_pool(global_pool: str, num_classes: int, name: str) -> str:
    """The CNNs' ``global_pool``: ``"avg"``, or ``""`` (forward returns the unpooled map), which
    needs ``num_classes=0`` (timm: no pooling only without a Linear classifier)."""
    if global_pool not in ("avg", ""):
        raise ValueError(f"{name}: global_pool must be 'avg' or '', got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ValueError(f"{name}: global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
    return global_pool


class _ResidualBlock(nn.Module):
    """``relu(drop_path(branch(x)) + shortcut(x))``; subclasses build the branch and name its last BN."""

    last_bn: str

    def _set_shortcut(self, downsample: Optional[nn.Module], drop_path: float) -> None:
        # registered after the branch, as in timm (same state-dict order)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def branch(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_init_last(self) -> None:
        nn.init.zeros_(getattr(self, self.last_bn).weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(self.drop_path(self.branch(x)).add_(shortcut))


class BasicBlock(_ResidualBlock):
    """3x3 (stride) -> 3x3, BN+ReLU between, ReLU after the residual sum. Expansion 1.

    x: (B, inplanes, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 1
    last_bn = "bn2"

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self._set_shortcut(downsample, drop_path)

    def branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu_(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BN+ReLU between, ReLU after the residual sum.

    x: (B, inplanes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 4
    last_bn = "bn3"

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self._set_shortcut(downsample, drop_path)

    def branch(self, x: Tensor) -> Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def downsample_avg(inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
    """ResNet-D shortcut: 2x2 average pool (ceil mode, padding excluded) when strided, 1x1 conv, BN."""
    pool: nn.Module = (
        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    )
    return nn.Sequential(pool, nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(VitferModel):
    """ResNet-D: deep stem, four stages of residual blocks, global average pool, ``fc``.

    x: (B, C, H, W), any size -> ``forward_features`` (B, num_features, ceil(H / 32), ceil(W / 32))
    -> logits (B, num_classes).
    """

    def __init__(self, cfg: ResNetConfig, name: str = "") -> None:
        super().__init__()
        self.model_name = name
        if cfg.block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {cfg.block!r}")
        if len(cfg.layers) != 4:
            raise ValueError(f"layers must give the number of blocks of 4 stages, got {cfg.layers}")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.channels_last = cfg.channels_last
        block = _BLOCKS[cfg.block]
        sw = cfg.stem_width
        inplanes = 2 * sw
        self.conv1 = nn.Sequential(
            nn.Conv2d(cfg.in_chans, sw, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(sw),
            nn.ReLU(inplace=True),
            nn.Conv2d(sw, sw, 3, padding=1, bias=False),
            nn.BatchNorm2d(sw),
            nn.ReLU(inplace=True),
            nn.Conv2d(sw, inplanes, 3, padding=1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=inplanes, reduction=2, module="act1")]

        total, idx = sum(cfg.layers), 0
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), cfg.layers)):
            stride = 1 if i == 0 else 2
            outplanes = planes * block.expansion
            blocks = []
            for j in range(n):
                down = downsample_avg(inplanes, outplanes, stride) if j == 0 and (
                    stride != 1 or inplanes != outplanes
                ) else None
                dpr = cfg.drop_path_rate * idx / max(total - 1, 1)
                blocks.append(block(inplanes, planes, stride if j == 0 else 1, down, dpr))
                inplanes = outplanes
                idx += 1
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=outplanes, reduction=4 * 2**i, module=f"layer{i + 1}"))
        self.num_features = inplanes
        self.global_pool = check_cnn_pool(cfg.global_pool, cfg.num_classes, name or "ResNet")
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head_hidden = tuple(cfg.head_hidden)
        self.fc = classifier_head(self.num_features, cfg.num_classes, self.head_hidden, cfg.drop_rate)
        self.default_out_indices = (0, 1, 2, 3, 4)  # features_only default (timm)
        self.init_weights(cfg.zero_init_last)

    def init_weights(self, zero_init_last: bool = True) -> None:
        """timm's init: Kaiming-normal (fan-out) convolutions, optionally zero last BN per branch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, _ResidualBlock):
                    m.zero_init_last()

    # -- API ---------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace ``fc`` by a fresh Linear(num_features, num_classes) (or the MLP of
        ``head_hidden``; Identity for 0); ``global_pool`` ``"avg"`` or ``""`` (no pooling, with 0
        classes only)."""
        if global_pool is not None:
            self.global_pool = check_cnn_pool(global_pool, num_classes, (self.model_name if len(self.model_name) > 0 else "ResNet"))
        elif self.global_pool == "" and num_classes > 0:
            self.global_pool = "avg"
        self.num_classes = num_classes
        device = self.bn1.weight.device
        self.fc = classifier_head(self.num_features, num_classes, self.head_hidden, self.head_drop.p, device=device)

    def feature_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of ``forward_features`` for an (H, W) input (five halvings, rounded up)."""
        return math.ceil(img_size[0] / 32), math.ceil(img_size[1] / 32)

    def _check_input(self, x: Tensor) -> None:
        name = (self.model_name if len(self.model_name) > 0 else "ResNet")
        check_input(x, self.in_chans, None, name)
        if torch.jit.is_scripting() or is_tracing():
            return
        h, w = x.shape[-2:]
        if h < 1 or w < 1:
            raise ValueError(f"{name} needs an input of at least 1x1, got {h}x{w}")
        fh, fw = self.feature_size((h, w))
        if self.training and x.shape[0] * fh * fw < 2:
            raise ValueError(
                f"{name} in training mode needs more than one value per channel for batch norm, but a "
                f"batch of {x.shape[0]} at {h}x{w} gives a {fh}x{fw} last feature map; use a batch of 2 "
                f"or more, or an input larger than 32x32"
            )

    # -- forward -----------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> feature map (B, num_features, ceil(H / 32), ceil(W / 32))."""
        self._check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        if not torch.jit.is_scripting() and self._checkpointing():
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = checkpoint_seq(layer, x)
            return x
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[Tensor], tuple[Tensor, list[Tensor]]]:
        """Stage outputs as timm's ``ResNet.forward_intermediates``: index 0 is the stem (after
        ``act1``, stride 2), 1-4 the outputs of ``layer1``-``layer4`` (strides 4-32). ``norm`` has
        no effect (no final norm); ``output_fmt`` must be ``"NCHW"``. Returns
        ``(forward_features(x), maps)`` or only the maps."""
        check_output_fmt(output_fmt, ("NCHW",))
        take, max_index = feature_take_indices(5, indices)
        self._check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.act1(self.bn1(self.conv1(x)))
        ys = [x] if 0 in take else []
        x = self.maxpool(x)
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        if stop_early:
            layers = layers[:max_index]
        ckpt = self._checkpointing()
        for i, layer in enumerate(layers):
            x = checkpoint_seq(layer, x) if ckpt else layer(x)
            if i + 1 in take:
                ys.append(x)
        if intermediates_only:
            return ys
        return x, ys

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Empty the stages after the last tap of ``indices`` (timm's semantics); the head goes
        with ``prune_head`` or when the features no longer end at ``layer4``."""
        take, max_index = feature_take_indices(5, indices)
        for n in ("layer1", "layer2", "layer3", "layer4")[max_index:]:
            setattr(self, n, nn.Sequential())
        if max_index == 0:
            self.maxpool = nn.Identity()
        if max_index < 4:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < 4:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """feature map (B, C, h, w) -> logits (B, num_classes), or pooled features (B, C)
        (``global_pool=""``: the map itself)."""
        if self.global_pool == "":
            return self.head_drop(x)
        x = self.head_drop(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x if pre_logits else self.fc(x)


RESNET_VARIANTS: dict[str, dict[str, Any]] = {
    "resnet18d": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet34d": dict(block="basic", layers=(3, 4, 6, 3)),
    "resnet50d": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101d": dict(block="bottleneck", layers=(3, 4, 23, 3)),
}


def _cfg(
    name: str, input_size: int = 224, crop_pct: float = 0.875, test: tuple[int, float] = (288, 0.95)
) -> PretrainedCfg:
    return PretrainedCfg(
        hf_hub_id=f"timm/{name}.ra2_in1k", input_size=(3, input_size, input_size), crop_pct=crop_pct,
        interpolation="bicubic", fixed_input_size=False, first_conv="conv1.0", classifier="fc",
        pool_size=(math.ceil(input_size / 32), math.ceil(input_size / 32)), license="apache-2.0", notes=f"timm evaluates it at {test[0]}x{test[0]}, crop_pct {test[1]}",
    )


_PRETRAINED = {
    "resnet18d": _cfg("resnet18d"),
    "resnet34d": _cfg("resnet34d"),
    "resnet50d": _cfg("resnet50d"),
    "resnet101d": _cfg("resnet101d", 256, 0.95, (320, 1.0)),
}


register_family("resnet", RESNET_VARIANTS, ResNetConfig, ResNet, _PRETRAINED)


def resnet18d(pretrained: bool | str = False, **overrides: Any) -> ResNet:
    """ResNet-18-D (basic blocks 2/2/2/2), 11.7M parameters."""
    return create_model("resnet18d", pretrained=pretrained, **overrides)


def resnet34d(pretrained: bool | str = False, **overrides: Any) -> ResNet:
    """ResNet-34-D (basic blocks 3/4/6/3), 21.8M parameters."""
    return create_model("resnet34d", pretrained=pretrained, **overrides)


def resnet50d(pretrained: bool | str = False, **overrides: Any) -> ResNet:
    """ResNet-50-D (bottlenecks 3/4/6/3), 25.6M parameters."""
    return create_model("resnet50d", pretrained=pretrained, **overrides)


def resnet101d(pretrained: bool | str = False, **overrides: Any) -> ResNet:
    """ResNet-101-D (bottlenecks 3/4/23/3), 44.6M parameters."""
    return create_model("resnet101d", pretrained=pretrained, **overrides)
