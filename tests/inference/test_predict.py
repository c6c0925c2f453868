"""vitfer predict and vitfer.inference.Predictor: faces in photos, folders and videos."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitfer.cli import main
from vitfer.engine import FinetuneConfig, finetune
from vitfer.inference import Predictor

RECORD_KEYS = {"file", "frame", "box", "label", "probabilities"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A small model trained briefly on synthetic faces (7 classes, 32 px)."""
    out = tmp_path_factory.mktemp("pred") / "run"
    finetune(FinetuneConfig(model="resnet18d", img_size=32, synthetic_n=42, epochs=1, batch_size=8, out_dir=str(out)))
    return out / "model.safetensors"


def _canvas(data_root: Path, n: int, path: Path) -> list[tuple[int, int, int, int]]:
    """``n`` JAFFE faces pasted side by side on a noisy canvas (written under tmp_path only)."""
    files = sorted((data_root / "jaffe").glob("*.tiff"))[:n]
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(100, 140, (320, 20 + 260 * n), dtype=np.uint8), "L")
    boxes = []
    for i, f in enumerate(files):
        x, y = 20 + 260 * i, 40
        canvas.paste(Image.open(f).convert("L").resize((240, 240)), (x, y))
        boxes.append((x, y, 240, 240))
    canvas.save(path)
    return boxes


def test_detect_json_finds_every_pasted_face(ckpt, data_root, tmp_path, capsys):
    photo = tmp_path / "four.png"
    pasted = _canvas(data_root, 4, photo)
    assert main(["predict", str(ckpt), str(photo), "--detect", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 4 and all(RECORD_KEYS <= set(r) for r in records)
    centres = sorted(r["box"][0] + r["box"][2] / 2 for r in records)
    for c, (x, _, w, _) in zip(centres, pasted):
        assert x < c < x + w  # one box per pasted face
    for r in records:
        assert r["file"] == str(photo) and r["frame"] is None and r["label"] in r["probabilities"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_folder_with_a_bad_file_prints_every_good_record_and_exits_1(ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8), "L").save(folder / f"a{i}.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8), "RGB").save(folder / "sub" / "c.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    assert main(["predict", str(ckpt), str(folder)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 4 and all("%" in ln for ln in lines)
    assert "empty.jpg" in captured.err and "Traceback" not in captured.err
    assert main(["predict", str(ckpt), str(folder), "--json"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 5 and sum("error" in r for r in records) == 1


def test_csv_output_and_no_face(ckpt, tmp_path, capsys):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (120, 120), dtype=np.uint8), "L").save(noise)
    assert main(["predict", str(ckpt), str(noise), "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:4] == ["file", "frame", "box", "label"] and len(rows) == 2 and rows[1][3]
    assert main(["predict", str(ckpt), str(noise), "--detect", "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["label"] is None and rec["note"] == "no face found" and rec["box"] is None


def test_video_every_nth_frame(ckpt, data_root, tmp_path, capsys):
    import cv2

    face = np.array(Image.open(sorted((data_root / "jaffe").glob("*.tiff"))[0]).convert("RGB").resize((200, 200)))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for t in range(12):
        frame = np.full((240, 320, 3), 120, np.uint8)
        frame[20:220, 20 + 5 * t:220 + 5 * t] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    assert main(["predict", str(ckpt), str(video), "--detect", "--every", "5", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["frame"] for r in records] == [0, 5, 10] and all(r["label"] for r in records)


def test_annotate_writes_boxes(ckpt, data_root, tmp_path, capsys):
    photo = tmp_path / "two.png"
    _canvas(data_root, 2, photo)
    out = tmp_path / "annotated"
    assert main(["predict", str(ckpt), str(photo), "--detect", "--annotate", str(out)]) == 0
    drawn = Image.open(out / "two.png.png").convert("RGB")  # the input's name, suffix kept
    assert drawn.size == Image.open(photo).size
    assert (np.asarray(drawn)[..., 0].astype(int) - np.asarray(drawn)[..., 1]).max() > 100  # red boxes


def test_python_api_inputs(ckpt, tmp_path):
    import vitfer

    assert vitfer.Predictor is Predictor
    p = Predictor(ckpt)
    x = torch.rand(3, 3, 40, 40)
    recs = p.predict(x)
    assert len(recs) == 3 and all(RECORD_KEYS <= set(r) for r in recs)
    im = Image.fromarray(np.random.default_rng(3).integers(0, 255, (50, 50), dtype=np.uint8), "L")
    assert p.predict(im)[0]["label"] == p.predict([im])[0]["label"]
    path = tmp_path / "x.png"
    im.save(path)
    assert p.predict(str(path))[0]["probabilities"] == pytest.approx(p.predict(im)[0]["probabilities"])
    with pytest.raises(ValueError, match="precision"):
        Predictor(ckpt, precision="fp16")


def test_bf16_agrees_with_fp32_on_ckplus48(data_root, tmp_path):
    """Top-1 of bf16 autocast vs fp32 on the CK+48 test faces of a model fine-tuned there: >= 99%."""
    from vitfer.data import load_dataset, make_split

    out = tmp_path / "ck"
    finetune(FinetuneConfig(model="resnet18d", dataset="ckplus48", data_dir=str(data_root), img_size=48, epochs=3,
                            batch_size=32, out_dir=str(out)))
    data = load_dataset("ckplus48", data_root)
    test = make_split(data, "random", seed=0, val_size=0.1)["test"]
    x = torch.stack([data.uint8(i) for i in test]).float().expand(-1, 3, -1, -1) / 255.0
    fp32 = [r["label"] for r in Predictor(out / "model.safetensors").predict(x)]
    bf16 = [r["label"] for r in Predictor(out / "model.safetensors", precision="bf16").predict(x)]
    agree = sum(a == b for a, b in zip(fp32, bf16)) / len(fp32)
    assert len(fp32) == 200 and agree >= 0.99, agree


def test_cli_export_onnx(ckpt, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra (in the test extra)")
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "max |diff|" in text
    from vitfer.inference import read_onnx_metadata

    meta = read_onnx_metadata(out)
    assert meta["num_classes"] == 7 and len(meta["class_names"]) == 7
