"""vitfer demo on the command line: arguments, errors before any server starts, the missing extra."""
from __future__ import annotations

import sys

import pytest

from vitfer.cli import main


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitfer demo: error:"), err
    assert "Traceback" not in err and all(n in lines[0] for n in needles), err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--port", "--host", "--device", "--max-side", "--max-faces", "127.0.0.1", "vitfer[demo]"):
        assert opt in out


def test_bad_checkpoint_fails_before_serving(tmp_path, capsys, monkeypatch):
    pytest.importorskip("gradio")
    import vitfer.demo

    started = []
    monkeypatch.setattr(vitfer.demo, "launch", lambda *a, **k: started.append(a))
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a checkpoint")
    assert main(["demo", str(bad)]) == 2
    _one_error_line(capsys.readouterr().err, "bad.safetensors")
    assert main(["demo", str(tmp_path / "missing.safetensors")]) == 2
    _one_error_line(capsys.readouterr().err, "missing.safetensors")
    assert started == []


def test_bad_arguments(demo_ckpts, capsys):
    for argv in (["demo"], ["demo", str(demo_ckpts[0]), "--port", "0"], ["demo", str(demo_ckpts[0]), "--port", "x"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_gradio_names_the_extra(demo_ckpts, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["demo", str(demo_ckpts[0])]) == 2
    _one_error_line(capsys.readouterr().err, "Gradio", "pip install 'vitfer[demo]'")


def test_serves_the_loaded_models_and_stops(demo_ckpts, capsys, monkeypatch):
    pytest.importorskip("gradio")
    import vitfer.demo

    calls = {}

    class FakeApp:
        is_running = False  # the server "stopped" at once

        def close(self, verbose=True):
            calls["closed"] = True

    def fake_launch(checkpoints, **kwargs):
        calls.update(kwargs, checkpoints=checkpoints)
        return FakeApp(), "http://127.0.0.1:7999/"

    monkeypatch.setattr(vitfer.demo, "launch", fake_launch)
    assert main(["demo", *map(str, demo_ckpts), "--port", "7999", "--max-side", "800"]) == 0
    out = capsys.readouterr().out
    assert "2 model(s)" in out and "http://127.0.0.1:7999/" in out
    assert calls["host"] == "127.0.0.1" and calls["port"] == 7999 and calls["max_side"] == 800
    assert [p.class_names for p in calls["predictors"]] == [p.class_names for p in vitfer.demo.load_models(demo_ckpts)]
    assert calls["closed"]
