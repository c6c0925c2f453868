"""Pretrained weights: fetch (Hugging Face hub), convert (timm and the original releases), cache,
load, and self-describing checkpoints.

    model = vitfer.create_model("convit_tiny", pretrained=True, num_classes=7)   # hub + cache
    vitfer.save(model, "convit_ck48.safetensors", class_names=[...])
    model = vitfer.load("convit_ck48.safetensors")                                 # from the file alone

Importing this package does not import huggingface_hub (that happens on the first download).
"""
from .checkpoint import RUN_CHECKPOINT, load, model_metadata, read_metadata, resolve_checkpoint, save
from .convert import (
    FAMILIES,
    ORIGINAL_RELEASES,
    convert_checkpoint,
    convert_convit_original,
    convert_crossvit_ibm,
    convert_timm,
    convert_vgg_torchvision,
    convert_vit_hybrid_npz,
    convert_vit_npz,
    import_all_families,
    validate_state_dict,
)
from .errors import CheckpointError
from .hub import converted_cache_path, download_hub_checkpoint, fetch_state_dict, pretrained_tag, vitfer_home
from .io import atomic_save_safetensors, read_checkpoint, sniff_format
from .pretrained import adapt_input_conv, load_pretrained, load_state_dict_strict

__all__ = [
    "FAMILIES",
    "ORIGINAL_RELEASES",
    "CheckpointError",
    "RUN_CHECKPOINT",
    "resolve_checkpoint",
    "adapt_input_conv",
    "atomic_save_safetensors",
    "convert_checkpoint",
    "convert_convit_original",
    "convert_crossvit_ibm",
    "convert_timm",
    "convert_vgg_torchvision",
    "convert_vit_hybrid_npz",
    "convert_vit_npz",
    "converted_cache_path",
    "download_hub_checkpoint",
    "fetch_state_dict",
    "import_all_families",
    "load",
    "load_pretrained",
    "load_state_dict_strict",
    "model_metadata",
    "pretrained_tag",
    "read_checkpoint",
    "read_metadata",
    "save",
    "sniff_format",
    "validate_state_dict",
    "vitfer_home",
]
