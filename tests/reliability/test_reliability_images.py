"""Fuzzed image files through every reader: ``load_image``, ``load_dataset("folder", ...)`` and
``vitfer predict``. Each file is read correctly (a file valid by construction: exactly what it
holds) or refused with vitfer's own named error; never another exception, never more than
:data:`~reliability_helpers.TIME_LIMIT_S` seconds or :data:`~reliability_helpers.MEMORY_LIMIT_MB`
MB for one file.

CI tries a fixed-seed sample of ``VITFER_FUZZ_N`` (500) files; ``VITFER_FUZZ_N=10000`` the full
suite. The real seeds come from ``VITFER_DATA_DIR`` (research-only data: read, mutated into
pytest's ``tmp_path``, never copied anywhere else).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from image_fuzz import Case, build_cases, matches, real_seeds
from reliability_helpers import FUZZ_N, FUZZ_SEED, TIME_LIMIT_S, Limits, measured, record, save_tiny_checkpoint, subprocess_env

from vitfer.data import DatasetError, ImageDecodeError, load_dataset, load_image

CLASSES = ("anger", "happy", "neutral")


def _seed_data_root() -> Path | None:
    """The real-data folder, as the shared ``data_root`` fixture finds it; ``None`` (drawn seeds
    only) when it is absent, unless ``VITFER_REQUIRE_DATA=1``: then a failure, as for every
    real-data test."""
    env = os.environ.get("VITFER_DATA_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "datasets"
    if (root / "ckplus48").is_dir() and (root / "jaffe").is_dir():
        return root
    if os.environ.get("VITFER_REQUIRE_DATA") == "1":
        pytest.fail(f"real datasets not found (VITFER_DATA_DIR={env!r}) and VITFER_REQUIRE_DATA=1")
    return None


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    """The fuzz cases written to ``<tmp>/<class>/<index>_<kind><ext>``, and load_image's verdict
    on each (``"read"`` or ``"error"``), measured one file at a time."""
    root = _seed_data_root()
    real = real_seeds(root, random.Random(FUZZ_SEED)) if root is not None else []
    cases = build_cases(FUZZ_N, FUZZ_SEED, real, lambda: np.random.default_rng(FUZZ_SEED))
    folder = tmp_path_factory.mktemp("fuzz")
    paths: list[Path] = []
    for i, c in enumerate(cases):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in c.name)[:60]
        p = folder / CLASSES[i % len(CLASSES)] / f"{i:05d}_{safe}{c.ext}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(c.data)
        paths.append(p)
    verdicts: dict[Path, str] = {}
    problems: list[str] = []
    worst = {"seconds": (0.0, ""), "memory": (0.0, "")}
    for c, p in zip(cases, paths):
        outcome, detail, lim, read = _load_one(c, p)
        worst["seconds"] = max(worst["seconds"], (lim.seconds, p.name))
        worst["memory"] = max(worst["memory"], (lim.rss_growth_mb, p.name))
        verdicts[p] = "read" if read else "error"
        if not outcome.startswith("handled"):
            problems.append(f"{p.name} ({c.name}): {outcome}: {detail}")
        record(outcome.split("-")[0], f"load_image {p.name} ({c.name})", detail)
    return {"cases": cases, "paths": paths, "verdicts": verdicts, "problems": problems, "folder": folder,
            "real": len(real), "worst": worst}


def _load_one(case: Case, path: Path) -> tuple[str, str, Limits, bool]:
    """``handled-read`` / ``handled-error`` / ``crash`` / ``hang``, a detail, what it took and
    whether load_image returned an image."""
    outcome, detail, lim = _judge(case, path)
    return outcome, detail, lim, lim.read


def _judge(case: Case, path: Path) -> tuple[str, str, Limits]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings, re-issued with the path: not failures
        with measured() as lim:
            try:
                im = load_image(path)
                outcome, detail = "handled-read", ""
                lim.read = True
            except ImageDecodeError as e:
                outcome, detail = "handled-error", str(e)
                if str(path) not in str(e):
                    outcome, detail = "crash", f"the error does not name the file: {e}"
            except Exception as e:  # noqa: BLE001 - anything else is what the fuzzer looks for
                outcome, detail = "crash", f"{type(e).__name__}: {e}"
    over = lim.exceeded()
    if over:
        return "hang", over, lim
    if outcome == "handled-read":
        if im.mode not in ("L", "RGB") or min(im.size) < 1:
            return "crash", f"load_image gave mode {im.mode} size {im.size}", lim
        if case.expect is not None:
            why = matches(im, case.expect)
            if why:
                return "crash", f"read incorrectly: {why}", lim
    elif case.expect is not None and outcome == "handled-error":
        return "crash", f"a valid file was refused: {detail}", lim
    return outcome, detail, lim


def test_load_image_reads_or_names_every_file(fuzz):
    """Every fuzzed file: read (exactly as it holds, when valid by construction) or ImageDecodeError."""
    n = len(fuzz["cases"])
    read = sum(v == "read" for v in fuzz["verdicts"].values())
    (t, t_file), (m, m_file) = fuzz["worst"]["seconds"], fuzz["worst"]["memory"]
    print(f"\n{n} files ({fuzz['real']} real seeds): {read} read, {n - read} refused with ImageDecodeError; "
          f"slowest {t:.2f} s ({t_file}), most new peak memory {m:.0f} MB ({m_file})")
    assert not fuzz["problems"], "\n".join(fuzz["problems"][:30])
    assert 0 < read < n  # the sample holds both kinds


def test_valid_seeds_cover_the_modes_the_issue_lists(fuzz):
    names = {c.name for c in fuzz["cases"] if c.expect is not None}
    for kind in ("16bit-png", "16bit-tiff", "cmyk-jpeg", "cmyk-tiff", "palette-trns-png", "palette-trns-gif",
                 "multiframe-gif", "multiframe-tiff", "exif-rotated-jpeg"):
        assert kind in names, kind
    kinds = {c.name.split("/", 1)[1] for c in fuzz["cases"] if "/" in c.name}
    for kind in ("truncate", "flip_header", "flip_data", "wrong_ext", "zero_bytes", "huge_dims"):
        assert any(k.startswith(kind) for k in kinds), kind
    assert any(c.name.startswith("bomb-png") for c in fuzz["cases"])


def test_folder_dataset_keeps_the_readable_and_names_the_rest(fuzz):
    """load_dataset("folder") over all the fuzzed files: the files load_image reads are the
    dataset, every other one is in ``dataset.skipped`` with its reason; nothing else."""
    with measured() as lim:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = load_dataset("folder", fuzz["folder"], image_size=32)
            outcome = "handled"
        except DatasetError as e:
            pytest.fail(f"the folder has readable files in every class, yet: {e}")
        except Exception as e:  # noqa: BLE001
            outcome = record("crash", "load_dataset(folder)", f"{type(e).__name__}: {e}")
            raise
    n = len(fuzz["paths"])
    limit = max(60.0, TIME_LIMIT_S * n / 50)
    assert lim.seconds < limit, f"load_dataset took {lim.seconds:.0f} s for {n} files"
    skipped = {Path(p) for p, _ in ds.skipped}
    want_skipped = {p for p, v in fuzz["verdicts"].items() if v == "error"}
    assert skipped == want_skipped, (sorted(skipped ^ want_skipped)[:10])
    assert len(ds) == n - len(want_skipped)
    assert all(reason for _, reason in ds.skipped)
    assert tuple(ds.images.shape[-2:]) == (32, 32)
    if want_skipped:
        assert any("skipped" in str(w.message) for w in caught)
    record(outcome, "load_dataset(folder) over all fuzzed files")
    # strict: the first undecodable file makes it a DatasetError that names the files
    with pytest.raises(DatasetError) as ei, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset("folder", fuzz["folder"], image_size=32, strict=True)
    assert str(sorted(want_skipped)[0]) in str(ei.value)
    record("handled", "load_dataset(folder, strict=True)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _video_cases(folder: Path) -> list[Path]:
    """A tiny real video, truncated copies of it and junk with video extensions (predict reads videos)."""
    cv2 = pytest.importorskip("cv2")
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.avi"
    writer = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    rng = np.random.default_rng(0)
    for _ in range(12):
        writer.write(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    writer.release()
    data = good.read_bytes()
    out = [good]
    for i, cut in enumerate((0, 16, len(data) // 3, len(data) - 7)):
        p = folder / f"cut{i}.avi"
        p.write_bytes(data[:cut])
        out.append(p)
    for ext in (".mp4", ".mkv"):
        p = folder / f"junk{ext}"
        p.write_bytes(random.Random(1).randbytes(3000))
        out.append(p)
    return out


def test_predict_over_the_fuzzed_files(fuzz, checkpoint, capsys, tmp_path):
    """``vitfer predict`` (in-process) over the whole fuzzed folder and some broken videos: one
    record per readable file, an error record and one stderr line naming each other file, exit
    status 1, no traceback."""
    from vitfer.cli import main

    videos = _video_cases(tmp_path / "videos")
    with measured() as lim:
        try:
            rc = main(["predict", str(checkpoint), str(fuzz["folder"]), str(tmp_path / "videos"), "--json",
                       "--batch-size", "64"])
        except BaseException as e:  # noqa: BLE001
            record("crash", "vitfer predict (in-process)", f"{type(e).__name__}: {e}")
            raise
    out, err = capsys.readouterr()
    n = len(fuzz["paths"])
    assert lim.seconds < max(60.0, TIME_LIMIT_S * n / 20), f"predict took {lim.seconds:.0f} s for {n} files"
    records = json.loads(out)
    by_file: dict[str, list[dict]] = {}
    for r in records:
        by_file.setdefault(r["file"], []).append(r)
    problems = []
    for p, verdict in fuzz["verdicts"].items():
        recs = by_file.get(str(p), [])
        ok = (len(recs) == 1 and (("error" in recs[0]) == (verdict == "error"))
              and ("error" not in recs[0] or str(p) in recs[0]["error"]))
        if not ok:
            problems.append(f"{p.name}: load_image {verdict}, predict gave {recs}")
        record("handled" if ok else "crash", f"vitfer predict {p.name}", str(recs)[:200])
    for v in videos:
        recs = by_file.get(str(v), [])
        ok = bool(recs) and all(("error" in r and str(v) in r["error"]) or r.get("label") for r in recs)
        if not ok:
            problems.append(f"{v.name}: predict gave {recs}")
        record("handled" if ok else "crash", f"vitfer predict {v.name}", str(recs)[:200])
    assert not problems, "\n".join(problems[:20])
    assert any("label" in r for r in by_file[str(videos[0])])  # the intact video is classified
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert all(ln.startswith(("vitfer predict: error: ", "warning: ")) for ln in lines), lines[:5]
    n_errors = sum("error" in r for r in records)
    assert sum(ln.startswith("vitfer predict: error: ") for ln in lines) == n_errors


def test_predict_subprocess(fuzz, checkpoint, tmp_path):
    """One real ``vitfer predict`` process over a sample of the fuzzed files: exit status 1, one
    stderr line per unreadable file, no traceback."""
    sample = tmp_path / "sample"
    sample.mkdir()
    picked = sorted(fuzz["verdicts"].items())[:60]
    for p, _ in picked:
        (sample / p.name).write_bytes(p.read_bytes())
    n_bad = sum(v == "error" for _, v in picked)
    r = subprocess.run([sys.executable, "-m", "vitfer.cli", "predict", str(checkpoint), str(sample)],
                       capture_output=True, text=True, timeout=300, env=subprocess_env())
    ok = r.returncode == (1 if n_bad else 0) and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    ok = ok and sum(ln.startswith("vitfer predict: error: ") for ln in lines) == n_bad
    ok = ok and len([ln for ln in r.stdout.splitlines() if ln.strip()]) == len(picked) - n_bad
    record("handled" if ok else "crash", "vitfer predict (subprocess)", r.stderr[-500:])
    assert ok, (r.returncode, r.stderr[-3000:], r.stdout[-1000:])
