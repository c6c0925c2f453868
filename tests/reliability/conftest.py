"""The reliability suite's summary line (inputs tried, handled, crashes, hangs, files damaged).

``pytest tests/reliability`` (and the full ``pytest``) ends with, e.g.::

    reliability: 512 inputs tried, 512 handled, 0 crashes, 0 hangs, 0 files damaged

followed by every input that was not handled, if any. The tests themselves assert zero crashes,
hangs and damaged files; this line is the measurement.
"""
from __future__ import annotations

from reliability_helpers import TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TALLY.tried == 0:
        return
    terminalreporter.section("reliability")
    terminalreporter.write_line(TALLY.line())
    for p in TALLY.problems[:50]:
        terminalreporter.write_line("  " + p)
    if len(TALLY.problems) > 50:
        terminalreporter.write_line(f"  ... and {len(TALLY.problems) - 50} more")
