"""Shared pieces of the reliability suite: the tally behind its summary line, per-input limits,
and a tiny self-describing checkpoint to run ``vitfer predict`` / ``vitfer.load`` against.

Every test of the suite records each input it tries with :func:`record`: ``handled`` (read
correctly, or refused with vitfer's own named error), ``crash`` (any other exception), ``hang``
(over :data:`TIME_LIMIT_S` seconds or :data:`MEMORY_LIMIT_MB` MB of new peak memory for one input)
or ``damaged`` (a file that was there before an interrupted or failed write is no longer intact).
``tests/reliability/conftest.py`` prints the tally at the end of the session and the tests assert
that nothing but ``handled`` was recorded.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

#: One input may take this long (seconds) before it counts as a hang.
TIME_LIMIT_S = float(os.environ.get("VITFER_FUZZ_TIME_LIMIT_S", "5"))
#: One input may raise the process's peak memory by this much (MB) before it counts as a hang.
MEMORY_LIMIT_MB = float(os.environ.get("VITFER_FUZZ_MEMORY_LIMIT_MB", "400"))
#: Fuzzed image files per run (CI: 500; ``VITFER_FUZZ_N=10000`` for the full suite).
FUZZ_N = int(os.environ.get("VITFER_FUZZ_N", "500"))
#: Seed of the fuzzer (``VITFER_FUZZ_SEED``); fixed so that CI tries the same sample every run.
FUZZ_SEED = int(os.environ.get("VITFER_FUZZ_SEED", "20240615"))

OUTCOMES = ("handled", "crash", "hang", "damaged")


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in OUTCOMES})
    problems: list[str] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        c = self.counts
        return (f"reliability: {self.tried} inputs tried, {c['handled']} handled, {c['crash']} crashes, "
                f"{c['hang']} hangs, {c['damaged']} files damaged")


TALLY = Tally()


def record(outcome: str, what: str = "", detail: str = "") -> str:
    """Count one input's ``outcome``; anything but ``handled`` is kept with ``what`` and ``detail``."""
    assert outcome in OUTCOMES, outcome
    TALLY.counts[outcome] += 1
    if outcome != "handled":
        TALLY.problems.append(f"{outcome}: {what}: {detail}")
    return outcome


def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@dataclass
class Limits:
    seconds: float = 0.0
    rss_growth_mb: float = 0.0
    read: bool = False  # set by the caller: the input was read (not refused)

    def exceeded(self, time_limit: float = TIME_LIMIT_S, memory_limit: float = MEMORY_LIMIT_MB) -> Optional[str]:
        if self.seconds > time_limit:
            return f"took {self.seconds:.1f} s (limit {time_limit:g} s)"
        if self.rss_growth_mb > memory_limit:
            return f"raised peak memory by {self.rss_growth_mb:.0f} MB (limit {memory_limit:g} MB)"
        return None


@contextmanager
def measured() -> Iterator[Limits]:
    """Wall time and growth of the process's peak RSS over the block (the peak only grows, so
    this sees an input that needs more memory than any before it: a decompression bomb)."""
    lim = Limits()
    rss0, t0 = _max_rss_mb(), time.perf_counter()
    try:
        yield lim
    finally:
        lim.seconds = time.perf_counter() - t0
        lim.rss_growth_mb = _max_rss_mb() - rss0


def tiny_vit(num_classes: int = 3, seed: int = 0, **kw):
    """A very small ViT (2 blocks, 32 px, patches of 8) with a fixed random init."""
    import torch

    from vitfer.models import create_model

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=num_classes)
    args.update(kw)
    return create_model("vit_tiny_patch16_224", **args).eval()


def save_tiny_checkpoint(path: Path, num_classes: int = 3, seed: int = 0, **kw) -> Path:
    import vitfer

    model = tiny_vit(num_classes, seed, **kw)
    names = ["anger", "happy", "neutral", "sadness", "surprise", "fear", "disgust"][:num_classes]
    return vitfer.save(model, path, class_names=names)


def subprocess_env() -> dict[str, str]:
    """The environment for a child ``python``: this one, with vitfer importable from the tree."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
