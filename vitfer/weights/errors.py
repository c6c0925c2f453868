"""The one error type of the weights machinery."""
from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read, converted or loaded.

    The message names the file or source, and every missing key, unexpected key and shape pair.
    """
