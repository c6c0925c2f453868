"""What ConViT's GPSA gates learned, and whether the ConViT paper's finding shows in them.

Each GPSA head mixes positional and content attention with a gate ``g = sigmoid(gating_param)``
(:mod:`vitfer.layers.gpsa`: 1 = purely positional, 0 = purely by content). Training starts every
gate at the same value (timm's and the paper's ``gating_param = 1``, ``g = 0.731``).
d'Ascoli et al. (ICML 2021, section 4 and Fig. 5) found that after training the later GPSA layers
have become less positional (their gates fall) while the early ones stay positional.
:func:`gpsa_gates` measures both on a model::

    from vitfer.analysis import gpsa_gates
    s = gpsa_gates(model)            # a ConViT
    s.gates                          # (GPSA layers, heads) sigmoid(gating_param)
    s.init                           # (GPSA layers, heads) the gates of a freshly built model
    s.verdict                        # one paragraph: moved or not, and which of the findings hold

The numbers behind the verdict:

* **moved**: the largest ``|gate - init|`` over every head of every GPSA layer is above
  :data:`GATE_ATOL` (0.01, one hundredth of the gate's range, i.e. a change that shows in the
  report's two-decimal table; ``gating_param`` moves about 0.05 for it, ``sigmoid'(1) = 0.197``).
* **trend with depth** of the layer-mean gate ``m_l`` (l = 1..L): the least-squares slope of
  ``m_l`` on ``l`` and Spearman's rank correlation. "Decreasing" needs both the fitted change over
  the GPSA layers, ``slope * (L - 1)``, below ``-GATE_ATOL`` and the last layer's mean below the
  first's by more than ``GATE_ATOL``; "increasing" the mirror image; anything else is "no
  consistent trend". One GPSA layer has no trend.
* **peak**: without a trend, a mean gate that is highest in a middle layer, above every layer
  after it and the average of the layers before it by more than ``GATE_ATOL``, is named in the
  verdict with the averages before and after it (a rise and a fall around a middle layer, which a
  straight fit over depth does not see).
* **early layers positional**: the first GPSA layer's mean gate is at least :data:`POSITIONAL`
  (0.5: the positional part of the mix outweighs the content part).

Needs only torch and numpy (no matplotlib).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .attention import model_kind

__all__ = ["GATE_ATOL", "POSITIONAL", "GPSAGates", "gpsa_gates", "init_gates", "spearman"]

#: Largest ``|gate - init|`` up to which the gates count as not moved, and the smallest change of
#: the layer means over depth that counts as a trend.
GATE_ATOL = 0.01
#: Mean gate at or above which a GPSA layer counts as positional (its positional attention
#: weighs at least as much as its content attention).
POSITIONAL = 0.5


@dataclasses.dataclass(frozen=True)
class GPSAGates:
    """The GPSA gates of a ConViT and what they say (see the module docstring for the rules).

    ``gates``, ``init``: (L, H) arrays (GPSA layers, heads); ``layer_mean``: (L,); ``slope``:
    least-squares change of the layer mean a layer; ``spearman``: rank correlation of the layer
    mean with depth (NaN with one layer or constant means); ``trend``: ``"decreasing"``,
    ``"increasing"``, ``"none"`` or ``"n/a"`` (fewer than two GPSA layers); ``peak_layer``: the
    1-based GPSA layer of the highest mean gate when, without a trend, it is a middle layer above
    every layer after it and the layers before it on average (see the module docstring), else None.
    """

    gates: np.ndarray
    init: np.ndarray
    layer_mean: np.ndarray
    max_change: float
    moved: bool
    slope: float
    spearman: float
    trend: str
    first_positional: bool
    verdict: str
    peak_layer: int | None = None

    @property
    def init_level(self) -> float:
        """The initial gate when every head starts alike (as in ConViT), else their mean."""
        return float(self.init.mean())

    @property
    def later_less_positional(self) -> bool:
        """The paper's finding: the gates moved and fall with depth."""
        return self.moved and self.trend == "decreasing"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (lists and floats; NaN written as None)."""

        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "gates": self.gates.tolist(), "init": self.init.tolist(), "init_level": self.init_level,
            "layer_mean": self.layer_mean.tolist(), "max_change": self.max_change, "moved": self.moved,
            "slope": num(self.slope), "spearman": num(self.spearman), "trend": self.trend,
            "first_positional": self.first_positional, "later_less_positional": self.later_less_positional,
            "peak_layer": self.peak_layer,
            "thresholds": {"moved_atol": GATE_ATOL, "positional": POSITIONAL}, "verdict": self.verdict,
        }


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D arrays (average ranks for ties); NaN when either
    is constant or shorter than 2."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x) - (len(x) + 1) / 2, _ranks(y) - (len(y) + 1) / 2
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def init_gates(model: nn.Module) -> np.ndarray:
    """The (GPSA layers, heads) gates ``model`` had when it was built: those of a fresh model of
    its class built from its config through the same init code path (``__init__`` and
    ``init_weights``, seed-independent for the gates), made small (one patch, width one per head,
    no MHSA blocks, no head) so that it costs nothing."""
    if model_kind(model) != "convit":
        raise ValueError(f"GPSA gates need a ConViT model, not {type(model).__name__}")
    cfg = model.cfg
    p = cfg.patch_size if isinstance(cfg.patch_size, int) else int(cfg.patch_size[0])
    small = dataclasses.replace(cfg, img_size=p, patch_size=p, head_dim=1, depth=len(model.gpsa_layers),
                                local_up_to_layer=len(model.gpsa_layers), num_classes=0, attn_impl="manual")
    with torch.random.fork_rng(devices=[]), torch.device("cpu"), torch.no_grad():  # the caller's RNG untouched
        fresh = type(model)(small)
        return fresh.gating_values().double().numpy()


def _peak_layer(means: np.ndarray, trend: str) -> int | None:
    """The 1-based layer of the highest of ``means`` when ``trend`` is ``"none"`` and it is a middle
    layer whose mean is above every layer after it and the average of the layers before it by more
    than :data:`GATE_ATOL`; else None."""
    if trend != "none" or len(means) < 3:
        return None
    p = int(np.argmax(means))
    if not 0 < p < len(means) - 1:
        return None
    if means[p] - means[:p].mean() > GATE_ATOL and means[p] - means[p + 1:].max() > GATE_ATOL:
        return p + 1
    return None


def _layers(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def _verdict(init_level: float, max_change: float, moved: bool, means: np.ndarray, slope: float, rho: float,
             trend: str, first_positional: bool, peak: int | None = None) -> str:
    n = len(means)
    if not moved:
        return (f"The gates have not moved from their initial {init_level:.3f} (largest change over the heads "
                f"{max_change:.4f}, at most {GATE_ATOL:g}): they show neither of the ConViT paper's findings "
                "(later GPSA layers less positional, early ones still positional), nor the opposite; training "
                "has not changed how positional the heads are.")
    out = [f"The gates moved from their initial {init_level:.3f} (largest change over the heads {max_change:.3f}, "
           f"above {GATE_ATOL:g})."]
    trend_numbers = (f"least-squares slope {slope:+.3f} a layer, Spearman {rho:+.2f}; GPSA layer 1 {means[0]:.2f}, "
                     f"layer {n} {means[-1]:.2f}")
    if trend == "n/a":
        out.append("With a single GPSA layer there is no trend with depth to compare with the paper's finding "
                   "that later layers become less positional.")
    elif trend == "decreasing":
        out.append(f"Later GPSA layers are less positional: the mean gate falls with depth ({trend_numbers}), "
                   "as the ConViT paper found.")
    elif trend == "increasing":
        out.append(f"Later GPSA layers are more positional: the mean gate rises with depth ({trend_numbers}), the "
                   "opposite of the ConViT paper's finding that later layers become less positional.")
    else:
        out.append(f"The mean gate shows no consistent trend with depth ({trend_numbers}): the ConViT paper's "
                   "finding that later layers become less positional does not show here.")
        if peak is not None:
            out.append(f"It peaks in a middle layer instead: GPSA layer {peak} at {means[peak - 1]:.2f}, against "
                       f"{means[: peak - 1].mean():.2f} on average in {_layers(1, peak - 1)} and "
                       f"{means[peak:].mean():.2f} in {_layers(peak + 1, n)}: the layers after it are less "
                       "positional than it is.")
    if first_positional:
        out.append(f"The first GPSA layer stays positional (mean gate {means[0]:.2f}, at least {POSITIONAL:g}), as "
                   "in the paper.")
    else:
        out.append(f"The first GPSA layer is no longer positional (mean gate {means[0]:.2f}, below {POSITIONAL:g}), "
                   "unlike the paper's early layers.")
    return " ".join(out)


def gpsa_gates(model: nn.Module) -> GPSAGates:
    """The GPSA gates of a ConViT, their initial value and the verdict on the paper's finding.

    Returns a :class:`GPSAGates`: the (L, H) gates ``sigmoid(gating_param)`` of the L GPSA layers,
    the gates a freshly built model has (:func:`init_gates`), the layer means, whether the gates
    moved, the trend of the layer mean with depth and the verdict sentence. A ValueError for any
    other model, or a ConViT without GPSA layers.
    """
    if model_kind(model) != "convit":
        raise ValueError(f"GPSA gates need a ConViT model, not {type(model).__name__}")
    with torch.no_grad():
        g = model.gating_values().detach().double().cpu().numpy()
    if g.shape[0] == 0:
        raise ValueError(f"{type(model).__name__} has no GPSA layers (local_up_to_layer = 0): no gates to show")
    init = init_gates(model)
    if init.shape != g.shape:
        raise ValueError(f"the fresh model's gates have shape {init.shape}, the model's {g.shape}")
    means = g.mean(1)
    max_change = float(np.abs(g - init).max())
    moved = max_change > GATE_ATOL
    n = len(means)
    depth = np.arange(1, n + 1, dtype=np.float64)
    if n >= 2:
        slope = float(np.polyfit(depth, means, 1)[0])
        rho = spearman(depth, means)
        fitted, ends = slope * (n - 1), float(means[-1] - means[0])
        if fitted < -GATE_ATOL and ends < -GATE_ATOL:
            trend = "decreasing"
        elif fitted > GATE_ATOL and ends > GATE_ATOL:
            trend = "increasing"
        else:
            trend = "none"
    else:
        slope, rho, trend = float("nan"), float("nan"), "n/a"
    first_positional = bool(means[0] >= POSITIONAL)
    init_level = float(init.mean())
    peak = _peak_layer(means, trend) if moved else None
    return GPSAGates(
        gates=g, init=init, layer_mean=means, max_change=max_change, moved=moved, slope=slope, spearman=rho,
        trend=trend, first_positional=first_positional,
        verdict=_verdict(init_level, max_change, moved, means, slope, rho, trend, first_positional, peak),
        peak_layer=peak,
    )
