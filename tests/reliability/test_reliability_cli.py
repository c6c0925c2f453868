"""Bad arguments to every ``vitfer`` command: one line on stderr, exit status 2, no traceback.

The commands come from the parser itself (``vitfer.cli.build_parser()``), so a new command is
covered without editing this file. For each: an unknown option, no arguments at all, a value of
the wrong type or outside the choices for every option that has a type or choices, and paths that
do not exist for its positional arguments.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from reliability_helpers import record, subprocess_env

from vitfer.cli import build_parser, main

_NOT_A_NUMBER = "not-a-number"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _bad_argvs() -> list[tuple[str, list[str]]]:
    """``(what, argv)`` bad invocations of every command."""
    out: list[tuple[str, list[str]]] = [("no command", []), ("unknown command", ["no-such-command"])]
    for name, sub in sorted(_subparsers(build_parser()).items()):
        out.append((f"{name}: unknown option", [name, "--definitely-not-an-option"]))
        # required positionals (an optional one, like `models [PATTERN]`, is no bad argument when left out)
        positionals = [a for a in sub._actions if not a.option_strings and a.nargs not in ("?", "*")]
        required = [a for a in sub._actions if a.option_strings and a.required]
        if positionals or required:
            out.append((f"{name}: nothing", [name]))
        for a in sub._actions:
            if not a.option_strings or a.nargs == 0:
                continue
            opt = a.option_strings[-1]
            if a.choices is not None:
                out.append((f"{name} {opt}: not a choice", [name, opt, "no-such-choice"]))
            elif a.type is not None and a.type is not str:
                out.append((f"{name} {opt}: bad value", [name, opt, _NOT_A_NUMBER]))
            if a.nargs != "?":  # an option whose value is optional (finetune --distill) is fine without one
                out.append((f"{name} {opt}: no value", [name, opt]))
        if positionals:
            argv = [name]
            for a in positionals:
                argv += ["/no/such/path/x.safetensors"] * (1 if a.nargs in (None, 1) else 2)
            for a in required:
                argv += [a.option_strings[-1], "/no/such/path/out"]
            out.append((f"{name}: paths that do not exist", argv))
    return out


BAD = _bad_argvs()


def test_every_command_is_covered():
    names = set(_subparsers(build_parser()))
    covered = {argv[0] for _, argv in BAD if argv and argv[0] in names}
    assert names and covered == names


@pytest.mark.parametrize("what,argv", BAD, ids=[w for w, _ in BAD])
def test_bad_arguments_give_one_line_and_exit_2(what, argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    except BaseException as e:  # noqa: BLE001
        record("crash", f"vitfer {' '.join(argv)}", f"{type(e).__name__}: {e}")
        raise
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    ok = rc == 2 and len(lines) == 1 and "Traceback" not in err and lines[0].startswith("vitfer")
    record("handled" if ok else "crash", f"vitfer {' '.join(argv)}", f"exit {rc}, stderr {err[-300:]!r}")
    assert ok, (what, rc, err)


def test_bad_arguments_in_a_real_process():
    """The same from a real process (the console entry point's exit status and stderr)."""
    for argv in (["predict", "--top", "0", "a", "b"], ["finetune", "--epochs", _NOT_A_NUMBER],
                 ["predict", "/no/such/ckpt.safetensors", "/no/such/image.png"]):
        r = subprocess.run([sys.executable, "-m", "vitfer.cli", *argv], capture_output=True, text=True, timeout=120,
                           env=subprocess_env())
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        ok = r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr
        record("handled" if ok else "crash", f"vitfer {' '.join(argv)} (process)", r.stderr[-300:])
        assert ok, (argv, r.returncode, r.stderr)
