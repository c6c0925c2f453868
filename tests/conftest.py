"""Shared test fixtures.

Real-data tests take the dataset folder from ``VITFER_DATA_DIR`` (CI points it at
``../shared/datasets``). They skip when it is absent, except when ``VITFER_REQUIRE_DATA=1``
(set by ``.ci/run``), where a missing folder is a failure.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch


def _data_root() -> Path | None:
    env = os.environ.get("VITFER_DATA_DIR")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding ``ckplus48/`` and ``jaffe/`` (research-only data, never copied)."""
    root = _data_root()
    required = os.environ.get("VITFER_REQUIRE_DATA") == "1"
    if root is None or not (root / "ckplus48").is_dir() or not (root / "jaffe").is_dir():
        msg = f"real datasets not found (VITFER_DATA_DIR={os.environ.get('VITFER_DATA_DIR')!r})"
        if required:
            pytest.fail(msg + " and VITFER_REQUIRE_DATA=1")
        pytest.skip(msg)
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)``: ``benchmarks/<name>.py`` loaded as a module (the scripts are not a
    package), for tests of their measuring parts."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
