__version__ = "0.1.0"

from .weights import save, load

__all__ = ["Predictor", "save", "load"]


def __getattr__(name: str):
    # vitfer.Predictor without importing the inference package (and its optional extras' code)
    # at ``import vitfer``.
    if name == "Predictor":
        from .inference import Predictor

        return Predictor
    raise AttributeError(f"module 'vitfer' has no attribute {name!r}")
