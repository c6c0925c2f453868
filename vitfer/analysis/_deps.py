"""The optional dependencies of the figures (the ``plots`` extra)."""
from __future__ import annotations

from typing import Any

PLOTS_HINT = "pip install 'vitfer[plots]'"


def figure(**kwargs: Any) -> Any:
    """A new ``matplotlib.figure.Figure``, not attached to pyplot: no display and no global state
    (``savefig`` renders it with the non-interactive Agg canvas; Jupyter still shows a returned
    figure). An ``ImportError`` naming the extra when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"vitfer's figures need matplotlib: {PLOTS_HINT}") from e
    return Figure(**kwargs)


def tsne_class() -> Any:
    """``sklearn.manifold.TSNE``; an ``ImportError`` naming the extra when scikit-learn is missing."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise ImportError(f"t-SNE needs scikit-learn: {PLOTS_HINT}") from e
    return TSNE
