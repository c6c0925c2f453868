"""vitfer models: every family registers its variants on import.

    from vitfer.models import create_model, list_models, convit_base
"""
from .base import VitferModel
from .registry import (
    ModelSpec,
    PretrainedCfg,
    create_model,
    get_model_spec,
    get_pretrained_cfg,
    is_model,
    list_models,
)
from .vit import VisionTransformer, vit_base_patch16_224, vit_small_patch16_224, vit_tiny_patch16_224

__all__ = [
    "ModelSpec",
    "PretrainedCfg",
    "VisionTransformer",
    "VitferModel",
    "create_model",
    "get_model_spec",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
]
