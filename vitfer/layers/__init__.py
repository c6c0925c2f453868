"""Building blocks of the vitfer models, one concept a file."""
from .attention import ATTENTION_IMPLS, Attention, resolve_impl, scaled_dot_product_attention
from .block import Block, LayerNorm6
from .drop_path import DropPath, drop_path
from .mlp import Mlp
from .patch_embed import PatchEmbed, check_input, to_2tuple
from .pos_embed import resample_abs_pos_embed

__all__ = [
    "ATTENTION_IMPLS",
    "Attention",
    "Block",
    "DropPath",
    "LayerNorm6",
    "Mlp",
    "PatchEmbed",
    "check_input",
    "drop_path",
    "resample_abs_pos_embed",
    "resolve_impl",
    "scaled_dot_product_attention",
    "to_2tuple",
]
