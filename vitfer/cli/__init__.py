"""The ``vitfer`` command line.

    vitfer models [PATTERN] [--family F] [--json]     the registered models
    vitfer convert --model NAME --out DIR             timm weights to vitfer checkpoints
    vitfer manifest [--out weights/manifest.json]     the weights manifest
    vitfer finetune [--recipe R] [--model M] ...      train or fine-tune (one run, every fold, resume)
    vitfer predict CKPT IMAGE|FOLDER|VIDEO ...        classify faces
    vitfer evaluate CKPT [--dataset D] ...            score a checkpoint
    vitfer export CKPT OUT.onnx                       ONNX export
    vitfer study --data-dir DIR [--quick] ...         the study's grid and its Tables 4.1 / 4.2
    vitfer report RUN_DIR [RUN_DIR ...]               figures and a report of run folders
    vitfer demo CKPT [CKPT ...] [--port P]            a local web page: photos, webcam, attention

One module a command (``vitfer/cli/<command>.py``), each with an ``_add_<command>(subparsers)``
function that sets ``func`` on its parser; a new command is a new module listed in ``_COMMANDS``.
Only this package prints; the library logs.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable, Optional, Sequence

from vitfer.cli._logging import setup_logging, show_warning
from vitfer.cli.finetune import Progress  # noqa: F401  (tests drive the progress bar)

__all__ = ["build_parser", "main"]

_COMMANDS = ["models", "convert", "manifest", "finetune", "predict", "evaluate", "export", "study", "report", "demo"]


def _adders() -> list[Callable[[argparse._SubParsersAction], None]]:
    import importlib

    return [getattr(importlib.import_module(f"vitfer.cli.{c}"), f"add_{c}") for c in _COMMANDS]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``vitfer CMD: error: ...`` and a
    pointer to ``--help``), exit status 2, like every other error of the command line; argparse's
    own multi-line usage block is left to ``--help``. Sub-command parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        one_line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {one_line} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vitfer", description="Vision Transformers for facial expression recognition")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _adders():
        add(sub)
    return parser


def _vitfer_errors() -> tuple[type[BaseException], ...]:
    from vitfer.engine import TrainingError
    from vitfer.weights.errors import CheckpointError

    return (CheckpointError, TrainingError, KeyError, TypeError, ValueError, OSError, ImportError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``vitfer`` command; returns the exit status: 0 success, 2 a bad argument or any
    error vitfer reports (one line on stderr, no traceback), 1 a command that partly failed
    (``predict`` with an unreadable image)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    setup_logging(args.verbose)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(args.func(args) or 0)
        except _vitfer_errors() as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            print(f"vitfer {args.command}: error: {msg}", file=sys.stderr)
            if args.verbose > 1:
                import traceback

                traceback.print_exc()
            return 2
        except KeyboardInterrupt:
            print(f"vitfer {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
