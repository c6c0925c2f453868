"""vitfer models: every family registers its variants on import.

    from vitfer.models import create_model, list_models, convit_base
"""
from .base import VitferModel
from .convit import ConViT, convit_base, convit_small, convit_tiny
from .crossvit import (
    CrossViT,
    crossvit_9_240,
    crossvit_9_dagger_240,
    crossvit_15_240,
    crossvit_15_dagger_240,
    crossvit_15_dagger_408,
    crossvit_18_240,
    crossvit_18_dagger_240,
    crossvit_18_dagger_408,
    crossvit_base_240,
    crossvit_small_240,
    crossvit_tiny_240,
)
from .registry import (
    ModelSpec,
    PretrainedCfg,
    create_model,
    get_model_spec,
    get_pretrained_cfg,
    is_model,
    list_models,
)
from .resnet import ResNet, resnet18d, resnet34d, resnet50d, resnet101d
from .vgg import VGG, vgg16, vgg19
from .vit import (
    VisionTransformer,
    deit_base_distilled_patch16_224,
    deit_small_distilled_patch16_224,
    deit_tiny_distilled_patch16_224,
    vit_base_patch16_224,
    vit_small_patch16_224,
    vit_tiny_patch16_224,
)
from .vit_hybrid import (
    HybridVisionTransformer,
    vit_base_r50_s16_224,
    vit_base_r50_s16_384,
    vit_base_resnet50_384,
    vit_small_cs_48,
    vit_tiny_cs_48,
    vit_tiny_r18d_48,
)

__all__ = [
    "ConViT",
    "CrossViT",
    "HybridVisionTransformer",
    "ModelSpec",
    "PretrainedCfg",
    "ResNet",
    "VGG",
    "VisionTransformer",
    "VitferModel",
    "convit_base",
    "convit_small",
    "convit_tiny",
    "create_model",
    "deit_base_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "crossvit_9_240",
    "crossvit_9_dagger_240",
    "crossvit_15_240",
    "crossvit_15_dagger_240",
    "crossvit_15_dagger_408",
    "crossvit_18_240",
    "crossvit_18_dagger_240",
    "crossvit_18_dagger_408",
    "crossvit_base_240",
    "crossvit_small_240",
    "crossvit_tiny_240",
    "get_model_spec",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "resnet18d",
    "resnet34d",
    "resnet50d",
    "resnet101d",
    "vgg16",
    "vgg19",
    "vit_base_patch16_224",
    "vit_base_r50_s16_224",
    "vit_base_r50_s16_384",
    "vit_small_cs_48",
    "vit_tiny_cs_48",
    "vit_tiny_r18d_48",
    "vit_base_resnet50_384",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
]
