"""benchmarks/speed.py's plumbing: every model in a fresh process of its own (a model's training
steps leave a heap that skews the next model's ratio), ``--in-process`` for the old way, the rows as
JSON. The timings themselves are not asserted (no wall-clock assertions in tests)."""
from __future__ import annotations

import argparse
import json

import pytest


@pytest.fixture(scope="module")
def speed(load_benchmark):
    return load_benchmark("speed")


def _child_args() -> argparse.Namespace:
    """The smallest measurement: one eval repeat of batch 1 on one thread."""
    return argparse.Namespace(device="cpu", amp="none", modes=["eval"], eval_batch=1, train_batch=1,
                              num_classes=7, repeats=1, warmup=0, min_time=0.01, threads=1)


def _fake_rows(name, args):
    return [dict(model=name, mode=m, batch=1, vitfer=2.0, timm=1.0, ratio=2.0, ratios=[2.0], diff=0.0,
                 peak_vitfer=None, peak_timm=None) for m in args.modes]


@pytest.mark.parametrize("in_process", [False, True])
def test_each_model_runs_in_its_own_process_unless_told(speed, monkeypatch, tmp_path, capsys, in_process):
    calls = {"isolated": [], "here": []}
    monkeypatch.setattr(speed, "bench_isolated", lambda n, a: calls["isolated"].append(n) or _fake_rows(n, a))
    monkeypatch.setattr(speed, "bench_model", lambda n, a: calls["here"].append(n) or _fake_rows(n, a))
    out = tmp_path / "rows.json"
    argv = ["vit_tiny_patch16_224", "convit_tiny", "--modes", "eval", "--json", str(out)]
    assert speed.main(argv + (["--in-process"] if in_process else [])) == 0
    models = ["vit_tiny_patch16_224", "convit_tiny"]
    assert calls == ({"isolated": [], "here": models} if in_process else {"isolated": models, "here": []})
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == models
    table = capsys.readouterr().out
    assert "| convit_tiny | eval | 1 | 2.00 | 1.00 | **2.000** |" in table


def test_a_single_model_runs_here(speed, monkeypatch):
    calls = []
    monkeypatch.setattr(speed, "bench_isolated", lambda n, a: pytest.fail("a lone model needs no second process"))
    monkeypatch.setattr(speed, "bench_model", lambda n, a: calls.append(n) or _fake_rows(n, a))
    assert speed.main(["convit_tiny", "--modes", "eval"]) == 0
    assert calls == ["convit_tiny"]


def test_bench_isolated_measures_in_a_child_process(speed):
    """The real thing, small: one eval repeat of vit_tiny against timm in a child process; the rows
    come back with the logits' agreement."""
    args = _child_args()
    rows = speed.bench_isolated("vit_tiny_patch16_224", args)
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == "vit_tiny_patch16_224" and row["mode"] == "eval" and row["batch"] == 1
    assert row["vitfer"] > 0 and row["timm"] > 0 and len(row["ratios"]) == 1
    assert row["diff"] < 1e-4


def test_bench_isolated_names_the_model_that_failed(speed):
    args = _child_args()
    with pytest.raises(RuntimeError, match="no_such_model"):
        speed.bench_isolated("no_such_model", args)
