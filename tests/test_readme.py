"""The README's claims that a test can check: its Models snippet runs as written (issue 28: it
used an undefined ``x``)."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_models_snippet_runs():
    text = README.read_text()
    start = text.index("## Models")
    block = text[text.index("```python\n", start) + len("```python\n"):]
    code = block[:block.index("```")]
    assert "from vitfer.models import" in code
    scope: dict = {}
    exec(compile(code, "README.md (Models)", "exec"), scope)  # noqa: S102 - the README's own example
    assert tuple(scope["logits"].shape) == (2, 7)
