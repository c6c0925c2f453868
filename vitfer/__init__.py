__version__ = "0.1.0"

from .weights import save, load

__all__ = ["save", "load"]
