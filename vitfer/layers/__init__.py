"""Building blocks of the vitfer models, one concept a file."""
from .attention import ATTENTION_IMPLS, Attention, resolve_impl, scaled_dot_product_attention
from .block import Block, LayerNorm6
from .conv_stem import ConvNormAct, ConvStem
from .cross_attention import CrossAttention, CrossAttentionBlock
from .drop_path import DropPath, drop_path
from .gemm import gemm_backend, set_gemm_backend
from .gpsa import GPSA, GPSABlock, attention_distance, grid_distances, rel_indices
from .mlp import Mlp
from .padding import MaxPool2dSame, pad_same
from .patch_embed import PatchEmbed, check_input, to_2tuple
from .pos_embed import resample_abs_pos_embed
from .std_conv import StdConv2dSame, standardize_weight

__all__ = [
    "ATTENTION_IMPLS",
    "Attention",
    "Block",
    "ConvNormAct",
    "ConvStem",
    "CrossAttention",
    "CrossAttentionBlock",
    "DropPath",
    "GPSA",
    "GPSABlock",
    "LayerNorm6",
    "MaxPool2dSame",
    "Mlp",
    "PatchEmbed",
    "StdConv2dSame",
    "attention_distance",
    "check_input",
    "drop_path",
    "gemm_backend",
    "grid_distances",
    "pad_same",
    "rel_indices",
    "resample_abs_pos_embed",
    "resolve_impl",
    "scaled_dot_product_attention",
    "set_gemm_backend",
    "standardize_weight",
    "to_2tuple",
]
