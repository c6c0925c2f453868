"""VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015), in timm's layout.

``features`` keeps torchvision's Sequential indices (3x3 conv + ReLU, 2x2 max-pools); the two
4096-wide fully connected layers are timm's ``ConvMlp`` (``pre_logits.fc1``, a 7x7 convolution,
and ``pre_logits.fc2``, a 1x1 one) and the classifier is ``head.fc``. Parameter names and shapes
follow timm's ``vgg16`` / ``vgg19``, so timm checkpoints load unchanged.
``forward_head(x, pre_logits=True)`` gives the 4096-d features after ``fc2`` + ReLU (the study's
SVM features).
"""

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import check_input
from ..layers.tracing import is_tracing
from .base import VitferModel, check_output_fmt
from .features import feature_take_indices
from .resnet import check_cnn_pool
from .registry import PretrainedCfg, create_model, register_family

__all__ = ["VGG_VARIANTS", "ConvMlp", "VGG", "VGGConfig", "vgg16", "vgg19"]

MIN_INPUT_SIZE = 32  # five 2x2 max-pools: anything smaller leaves an empty feature map


@dataclass
class VGGConfig:
    layers: tuple[Union[int, str], ...] = ()  # conv widths, "M" for a max-pool
    num_classes: int = 1000
    in_chans: int = 3
    mlp_ratio: float = 1.0  # width of fc1 relative to 4096
    drop_rate: float = 0.0  # dropout after fc1 and before the classifier
    channels_last: bool = True  # run the convolutions in channels-last memory format (faster with oneDNN)
    global_pool: str = "avg"  # "avg", or "" (no pooling: only with num_classes=0, as timm)


def conv_mlp(
    x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], kernel: int, drop_p: float = 0.0
) -> Tensor:
    """``relu(conv(drop(relu(conv(x, w1, b1))), w2, b2))`` of :class:`ConvMlp` (x pooled up to
    ``kernel`` first when smaller; matrix products on exactly kernel-sized maps). One node under
    torch.fx: the path depends on the input size."""
    k = kernel
    h, w = x.shape[-2:]
    if h < k or w < k:
        x = F.adaptive_avg_pool2d(x, (max(k, h), max(k, w)))
    if x.shape[-2] == k and x.shape[-1] == k:
        b = x.shape[0]
        x = F.relu_(F.linear(x.reshape(b, -1), w1.reshape(w1.shape[0], -1), b1))
        x = F.dropout(x, drop_p, training=drop_p > 0.0)
        x = F.relu_(F.linear(x, w2.reshape(w2.shape[0], -1), b2))
        return x.reshape(b, -1, 1, 1)
    x = F.dropout(F.relu_(F.conv2d(x, w1, b1)), drop_p, training=drop_p > 0.0)
    return F.relu_(F.conv2d(x, w2, b2))


torch.fx.wrap("conv_mlp")


class ConvMlp(nn.Module):
    """timm's VGG ``pre_logits``: ``relu(fc2(drop(relu(fc1(x)))))`` with convolutional fc layers.

    x: (B, 512, h, w) -> (B, 4096, max(h, 7) - 6, max(w, 7) - 6). Maps smaller than 7x7 are first
    average-pooled up to 7x7 (as timm); larger maps run the MLP at every 7x7 window (the head then
    averages, as timm, unlike torchvision which pools to 7x7 first).

    On exactly 7x7 maps (224x224 inputs) fc1 and fc2 are computed as the matrix products they
    are (``F.linear`` on the flattened map and the reshaped kernels): the same sums, without
    oneDNN re-laying-out fc1's 411 MB kernel on every call.
    """

    def __init__(
        self, in_features: int = 512, out_features: int = 4096, kernel_size: int = 7, mlp_ratio: float = 1.0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_kernel_size = kernel_size
        mid = int(out_features * mlp_ratio)
        self.fc1 = nn.Conv2d(in_features, mid, kernel_size)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Conv2d(mid, out_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        p = self.drop.p if self.training else 0.0
        return conv_mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.input_kernel_size, p)


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> ``fc``. x: (B, C, h, w) -> (B, num_classes) or (B, C);
    ``global_pool=""`` (no classes): dropout only, the map stays (B, C, h, w)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__()
        self.in_features = in_features
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "":
            return self.drop(x)
        x = self.drop(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x if pre_logits else self.fc(x)


class VGG(VitferModel):
    """VGG: ``features`` -> ``pre_logits`` (ConvMlp) -> ``head``.

    x: (B, C, H, W), H and W >= 32 -> ``forward_features`` (B, 512, H // 32, W // 32)
    -> logits (B, num_classes); ``forward_head(pre_logits=True)`` gives (B, 4096).
    """

    def __init__(self, cfg: VGGConfig, name: str = "") -> None:
        super().__init__()
        self.model_name = name
        if not cfg.layers:
            raise ValueError("VGGConfig.layers is empty: give conv widths and 'M' for max-pools")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.channels_last = cfg.channels_last
        layers: list[nn.Module] = []
        prev = cfg.in_chans
        # a tap at the end of each conv group (before its max-pool) and after the last max-pool (timm)
        self.feature_info: list[dict[str, Any]] = []
        self.feature_ends: list[int] = []
        stride = 1
        for v in cfg.layers:
            if v == "M":
                self.feature_info.append(dict(num_chs=prev, reduction=stride, module=f"features.{len(layers) - 1}"))
                self.feature_ends.append(len(layers) - 1)
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                stride *= 2
            else:
                layers += [nn.Conv2d(prev, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                prev = int(v)
        self.feature_info.append(dict(num_chs=prev, reduction=stride, module=f"features.{len(layers) - 1}"))
        self.feature_ends.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.feature_channels = self.num_features = prev  # channels of forward_features (timm: 512)
        self.head_hidden_size = 4096  # width of forward_head(pre_logits=True), after ConvMlp
        self.global_pool = check_cnn_pool(cfg.global_pool, cfg.num_classes, name or "VGG")
        self.pre_logits: nn.Module = ConvMlp(prev, 4096, 7, mlp_ratio=cfg.mlp_ratio, drop_rate=cfg.drop_rate)
        self.head = ClassifierHead(4096, cfg.num_classes, cfg.drop_rate, self.global_pool)
        self.default_out_indices = (0, 1, 2, 3, 4, 5)  # features_only default (timm)
        self.init_weights()

    def init_weights(self) -> None:
        """timm's init: Kaiming-normal (fan-out) convolutions, N(0, 0.01) Linear, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # -- API ---------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace ``head.fc`` by a fresh Linear(head_hidden_size, num_classes) (Identity for 0);
        ``global_pool`` ``"avg"`` or ``""`` (no pooling, with 0 classes only)."""
        if global_pool is not None:
            self.global_pool = check_cnn_pool(global_pool, num_classes, (self.model_name if len(self.model_name) > 0 else "VGG"))
        elif self.global_pool == "" and num_classes > 0:
            self.global_pool = "avg"
        self.head.global_pool = self.global_pool
        self.num_classes = num_classes
        device = self.features[0].weight.device
        fc: nn.Module = nn.Identity()
        if num_classes > 0:
            fc = nn.Linear(self.head_hidden_size, num_classes, device=device)
            nn.init.normal_(fc.weight, 0, 0.01)
            nn.init.zeros_(fc.bias)
        self.head.fc = fc

    # -- forward -----------------------------------------------------------------------------
    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[Tensor], tuple[Tensor, list[Tensor]]]:
        """Taps as timm's ``VGG.forward_intermediates``: indices 0-4 are the conv groups' outputs
        (after the ReLU, before each max-pool; strides 1-16), 5 the last max-pool's output (the
        ``forward_features`` map, stride 32). ``norm`` has no effect; ``output_fmt`` must be
        ``"NCHW"``. Returns ``(forward_features(x), maps)`` or only the maps."""
        check_output_fmt(output_fmt, ("NCHW",))
        take, max_index = feature_take_indices(len(self.feature_ends), indices)
        self._check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        end = self.feature_ends[max_index] + 1 if stop_early else len(self.features)
        taps = {self.feature_ends[i]: i for i in take}
        ys = []
        for i, layer in enumerate(self.features[:end]):
            x = layer(x)
            if i in taps:
                ys.append(x)
        if intermediates_only:
            return ys
        return x, ys

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Cut ``features`` after the last tap of ``indices``; with ``prune_head`` (or a cut before
        the end) ``pre_logits`` and the classifier go (timm's semantics)."""
        take, max_index = feature_take_indices(len(self.feature_ends), indices)
        self.features = self.features[: self.feature_ends[max_index] + 1]
        cut = max_index < len(self.feature_ends) - 1
        if cut:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or cut:
            self.pre_logits = nn.Identity()
            self.head_hidden_size = self.num_features
            self.global_pool = ""
            self.head = ClassifierHead(self.num_features, 0, self.head.drop.p, "")
            self.num_classes = 0
        return take

    def _check_input(self, x: Tensor) -> None:
        name = (self.model_name if len(self.model_name) > 0 else "VGG")
        check_input(x, self.in_chans, None, name)
        if torch.jit.is_scripting() or is_tracing():
            torch._assert(
                (x.shape[-2] >= 32) & (x.shape[-1] >= 32),  # MIN_INPUT_SIZE
                f"{name} needs an input of at least 32x32",
            )
        elif x.shape[-2] < MIN_INPUT_SIZE or x.shape[-1] < MIN_INPUT_SIZE:
            raise ValueError(
                f"{name} needs an input of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (five 2x2 max-pools), "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> feature map (B, 512, H // 32, W // 32)."""
        self._check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not torch.jit.is_scripting() and self._checkpointing():
            start = 0  # one checkpointed segment per conv group and its max-pool
            for end in self.feature_ends[:-1] + [len(self.features) - 2]:
                if end + 2 > start:
                    x = checkpoint(self.features[start : end + 2], x, use_reentrant=False)
                start = end + 2
            return x
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """feature map (B, 512, h, w) -> logits (B, num_classes), or the 4096-d features (B, 4096)."""
        return self.head(self.pre_logits(x), pre_logits=pre_logits)


_M = "M"
VGG_VARIANTS: dict[str, dict[str, Any]] = {
    "vgg16": dict(layers=(64, 64, _M, 128, 128, _M, 256, 256, 256, _M, 512, 512, 512, _M, 512, 512, 512, _M)),
    "vgg19": dict(
        layers=(64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M, 512, 512, 512, 512, _M, 512, 512, 512, 512, _M)
    ),
}

_PRETRAINED = {
    name: PretrainedCfg(
        hf_hub_id=f"timm/{name}.tv_in1k", input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear",
        fixed_input_size=False, first_conv="features.0", classifier="head.fc", pool_size=(7, 7), license="bsd-3-clause",
    )
    for name in VGG_VARIANTS
}


register_family("vgg", VGG_VARIANTS, VGGConfig, VGG, _PRETRAINED)


def vgg16(pretrained: bool | str = False, **overrides: Any) -> VGG:
    """VGG-16 (13 convolutions + ConvMlp), 138.4M parameters."""
    return create_model("vgg16", pretrained=pretrained, **overrides)


def vgg19(pretrained: bool | str = False, **overrides: Any) -> VGG:
    """VGG-19 (16 convolutions + ConvMlp), 143.7M parameters."""
    return create_model("vgg19", pretrained=pretrained, **overrides)
