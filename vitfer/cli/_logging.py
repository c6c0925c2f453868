"""The CLI's log handlers: warnings on stderr, a command's progress on stdout, one handler per stream for the whole process."""
from __future__ import annotations

import logging
import sys
from typing import Any


class _StdHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` / ``sys.stderr`` is at the time of the
    record (tests and embedding programs swap them between calls)."""

    def __init__(self, which: str) -> None:
        super().__init__()
        self._which = which

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


_HANDLERS: dict[str, _StdHandler] = {}
_PROGRESS_LOGGERS: list[str] = []


def _handler(which: str, fmt: str, level: int) -> _StdHandler:
    """One handler per stream for the whole process, so that calling :func:`main` again does not
    print every line twice."""
    h = _HANDLERS.get(which)
    if h is None:
        h = _HANDLERS[which] = _StdHandler(which)
        if which == "stdout":
            h.addFilter(lambda r: r.levelno < logging.WARNING)
    h.setFormatter(logging.Formatter(fmt))
    h.setLevel(level)
    return h


def setup_logging(verbose: int) -> None:
    """vitfer's warnings (with -v also its info, -vv debug lines) on stderr, one line each."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    fmt = "%(levelname)s %(name)s: %(message)s" if verbose else "warning: %(message)s"
    root = logging.getLogger("vitfer")
    h = _handler("stderr", fmt, level)
    if h not in root.handlers:
        root.addHandler(h)
    root.setLevel(min(level, logging.INFO))
    out = _HANDLERS.get("stdout")
    while _PROGRESS_LOGGERS:
        logging.getLogger(_PROGRESS_LOGGERS.pop()).removeHandler(out)


def progress_to_stdout(*loggers: str) -> None:
    """Show the INFO lines of these loggers (a command's progress) on stdout, as bare messages."""
    h = _handler("stdout", "%(message)s", logging.INFO)
    for name in loggers:
        logging.getLogger(name).addHandler(h)
        _PROGRESS_LOGGERS.append(name)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one line, without the source location (``warning: <message>``)."""
    print(f"warning: {message}", file=sys.stderr)
