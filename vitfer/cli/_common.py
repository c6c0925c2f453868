"""Argument types and output helpers shared by the ``vitfer`` commands."""
from __future__ import annotations

import argparse
from typing import Any, Sequence


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def size_arg(text: str) -> Any:
    """--img-size / --patch-size: 'auto', 0 (the model's own) or a positive int."""
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 0 or a positive integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto', 0 or a positive integer, got {v}")
    return v or None


def fold_arg(text: str) -> Any:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number or 'all', got {text!r}") from None


PARSERS: dict[str, argparse.ArgumentParser] = {}
_UNSET = object()


def explicit_args(command: str, argv: Sequence[str]) -> set[str]:
    """The options of ``command`` that ``argv`` sets (not left at their defaults)."""
    parser = PARSERS[command]
    ns = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    tail = list(argv)[list(argv).index(command) + 1:] if command in argv else list(argv)
    parser.parse_known_args(tail, ns)
    return {k for k, v in vars(ns).items() if v is not _UNSET}


def format_metrics(test: dict[str, Any], what: str = "test") -> list[str]:
    lines = [f"{what} accuracy {100 * test['accuracy']:.1f}%  UAR {100 * test['uar']:.1f}%  "
             f"macro-F1 {100 * test['macro_f1']:.1f}%  ({test['n']} images); per class:"]
    support = test.get("support", {})
    for cls, acc in test["per_class_accuracy"].items():
        shown = "    -" if acc is None else f"{100 * acc:5.1f}%"
        lines.append(f"  {cls:<10} {shown}  ({support.get(cls, '?')} images)")
    return lines
