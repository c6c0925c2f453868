"""Whether ``torch.compile`` is tracing: layers that keep state between calls (caches,
workspaces) recompute or allocate instead while it does."""
from __future__ import annotations

import torch

__all__ = ["is_compiling"]


def is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
