"""Issue 17 from the command line: training on folders of photos of any size and mode, the
train/ + test/ layout with --split official, FER-2013's CSV, label files and subject patterns
(all data drawn by the tests)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitfer
from vitfer.cli import main

TINY = ["--model", "resnet18d", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--quiet"]
MODES = ("RGB", "L", "RGBA", "P")


def _photo(path: Path, seed: int, size: tuple[int, int], mode: str) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").convert(mode).save(path)
    return path


def _photos(root: Path, classes=("happy", "sad", "surprise"), n: int = 8, seed: int = 0) -> Path:
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            k = seed + 100 * c + i
            _photo(root / cls / f"s{i % 4}_{cls}_{i}.png", k, (40 + 7 * (k % 5), 30 + 11 * (k % 3)), MODES[k % 4])
    return root


def test_folder_of_photos_of_any_size_with_a_corrupt_file(tmp_path, capsys):
    root = _photos(tmp_path / "photos")
    good = root / "happy" / "s0_happy_0.png"
    (root / "sad" / "broken.jpg").write_bytes(good.read_bytes()[:60])  # truncated: its header promises more
    out = tmp_path / "run"
    assert main(["finetune", "--dataset", "folder", "--data-dir", str(root), *TINY, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and err.startswith("warning: ")
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["split_sizes"].values()) == 24
    model = vitfer.load(out / "model.safetensors")
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_train_test_layout_with_official_split(tmp_path):
    root = tmp_path / "fer"
    _photos(root / "train", n=8)
    _photos(root / "test", n=3, seed=7)
    out = tmp_path / "run"
    assert main(["finetune", "--dataset", "folder", "--data-dir", str(root), "--split", "official", *TINY,
                 "--out", str(out)]) == 0
    sizes = json.loads((out / "metrics.json").read_text())["split_sizes"]
    assert sizes["test"] == 9 and sizes["train"] + sizes["val"] == 24


def test_fer2013_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"]
    for i in range(140):
        usage = ("Training", "PublicTest", "PrivateTest")[0 if i < 100 else 1 if i < 120 else 2]
        rows.append(f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 48 * 48)))},{usage}")
    csv = tmp_path / "fer2013.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(["finetune", "--dataset", "fer2013", "--data-dir", str(csv), "--split", "official", *TINY,
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split_sizes"] == {"train": 100, "val": 20, "test": 20} and len(m["classes"]) == 7
    assert vitfer.load(out / "model.safetensors").pretrained_cfg["input_size"] == (3, 32, 32)


def test_label_file_and_subject_pattern(tmp_path, capsys):
    root = tmp_path / "flat"
    root.mkdir()
    lines = ["path,label"]
    for i in range(24):
        name = f"person{i % 4}_{i}.png"
        _photo(root / name, i, (36 + i % 5, 40), "L")
        lines.append(f"{name},{('happy', 'sad', 'neutral')[i % 3]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["finetune", "--dataset", "folder", "--labels", str(root / "labels.csv"), "--subject-pattern",
            r"person(\d+)_", "--split", "subject-kfold", "--n-folds", "2", *TINY, "--val-size", "0"]
    assert main([*args, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["test_subjects"]) == 2 and all(s in {"0", "1", "2", "3"} for s in m["test_subjects"])
    from vitfer.data import load_dataset

    ds = load_dataset("folder", root, labels="labels.csv", image_size=32)
    assert ds.stored_channels == 1 and ds.image_size == (32, 32)  # a grey folder stays grey in memory
    # a pattern that matches nothing names the flag, one line, status 2
    assert main([*args[:5], "--subject-pattern", r"nobody(\d+)", *args[7:], "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "--subject-pattern" in err and "Traceback" not in err


def test_mixed_size_folder_error_names_img_size_flag(tmp_path, capsys):
    from vitfer.data import load_dataset

    root = _photos(tmp_path / "p", n=4)
    with pytest.raises(ValueError, match="--img-size"):
        load_dataset("folder", root)


def test_crop_faces_on_photos_of_pasted_jaffe_faces(data_root, tmp_path, capsys):
    """--crop-faces: JAFFE faces pasted into larger noisy photos (written under tmp_path only);
    training sees the detected crops, photos without a face are skipped and named."""
    rng = np.random.default_rng(0)
    jaffe = sorted((data_root / "jaffe").glob("*.tiff"))
    root = tmp_path / "photos"
    picked = {"happy": [p for p in jaffe if ".HA" in p.name][:6], "surprise": [p for p in jaffe if ".SU" in p.name][:6]}
    for cls, files in picked.items():
        (root / cls).mkdir(parents=True)
        for i, f in enumerate(files):
            canvas = Image.fromarray(rng.integers(90, 140, (300, 420), dtype=np.uint8), "L")
            face = Image.open(f).convert("L").resize((160, 160))
            canvas.paste(face, (int(rng.integers(0, 260)), int(rng.integers(0, 140))))
            canvas.convert("RGB").save(root / cls / f"photo{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8), "L").save(root / "happy" / "noface.png")
    out = tmp_path / "run"
    rc = main(["finetune", "--dataset", "folder", "--data-dir", str(root), "--crop-faces", *TINY, "--val-size", "0",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "noface.png" in err and "no face found" in err
    sizes = json.loads((out / "metrics.json").read_text())["split_sizes"]
    assert sum(sizes.values()) >= 11  # the detector finds (nearly) every pasted face
    assert vitfer.load(out / "model.safetensors").pretrained_cfg["crop_pct"] == 1.0  # crops are face crops
