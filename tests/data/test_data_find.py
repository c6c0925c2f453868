"""Issue 23 defects 7 and 14 and issue 28 point 7, data side: a label file given relative to the
current folder (``--labels faces/labels.csv``), :func:`vitfer.data.find_dataset` for every kind
and layout (FER-2013 in ``DIR/fer2013/fer2013.csv`` too), and the load line of a face-cropped
dataset. Every image and CSV is generated here (noise)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import vitfer.data.loading as loading_module
from vitfer.data import (
    CKPLUS48_CLASSES,
    FER2013_CLASSES,
    DatasetError,
    find_dataset,
    load_dataset,
)
from vitfer.data.faces import Box, FaceCropper

from data_helpers import make_image, save


# ----------------------------------------------------------------------------- layouts
def _ckplus48(root: Path) -> Path:
    for k, cls in enumerate(CKPLUS48_CLASSES):
        for j in range(2):
            save(make_image("L", (8, 8), k * 2 + j), root / cls / f"S{10 + j:03d}_001_0000000{k}.png")
    return root


def _jaffe(root: Path) -> Path:
    for j, code in enumerate(("AN", "HA", "SU")):
        save(make_image("L", (8, 8), j), root / f"KA.{code}1.{30 + j}.tiff")
    return root


def _classes(root: Path, names=("happy", "sad")) -> Path:
    for k, cls in enumerate(names):
        for j in range(2):
            save(make_image("L", (8, 8), k * 2 + j), root / cls / f"{cls}{j}.png")
    return root


def _fer2013(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = [f"{k % len(FER2013_CLASSES)},{' '.join(map(str, rng.integers(0, 256, 48 * 48)))},Training"
            for k in range(3)]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    return path


def _label_file(folder: Path, name: str = "labels.csv") -> Path:
    for j in range(4):
        save(make_image("L", (8, 8), j), folder / "imgs" / f"p{j}.png")
    path = folder / name
    path.write_text("path,label\n" + "".join(f"imgs/p{j}.png,{'ab'[j % 2]}\n" for j in range(4)))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """find_dataset must not decode an image: any load_image call fails the test."""
    monkeypatch.setattr(loading_module, "load_image", lambda p: pytest.fail(f"decoded {p}"))


# ----------------------------------------------------------------------------- find_dataset
def test_find_ckplus48_and_jaffe_in_their_folder_or_the_folder_around(tmp_path: Path, no_decoding) -> None:
    ck = _ckplus48(tmp_path / "data" / "ckplus48")
    jaffe = _jaffe(tmp_path / "data" / "jaffe")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_dataset("ckplus48", [empty, ck]) == ck
    assert find_dataset("ckplus48", [empty, tmp_path / "missing", tmp_path / "data"]) == tmp_path / "data"
    assert find_dataset("ck+48", [jaffe]) is None  # JAFFE is no CK+48
    assert find_dataset("jaffe", [ck, tmp_path / "data"]) == tmp_path / "data"
    assert find_dataset("jaffe", [jaffe]) == jaffe
    assert find_dataset("jaffe", [empty, ck]) is None


def test_find_ckplus48_refuses_what_load_dataset_refuses(tmp_path: Path) -> None:
    ck = _ckplus48(tmp_path / "ck")
    (ck / "fear" / "S010_001_00000003.png").rename(ck / "fear" / "x.png")  # no S###_ subject
    assert find_dataset("ckplus48", [ck]) is None
    with pytest.raises(DatasetError, match="does not start with the subject"):
        load_dataset("ckplus48", ck)
    bad = _jaffe(tmp_path / "jf")
    save(make_image("L", (8, 8), 9), bad / "KA.XX1.40.tiff")  # unknown expression code
    assert find_dataset("jaffe", [bad]) is None
    with pytest.raises(DatasetError, match="unknown expression code"):
        load_dataset("jaffe", bad)


def test_find_folder_class_and_part_layouts(tmp_path: Path, no_decoding) -> None:
    flat = _classes(tmp_path / "flat")
    parts = tmp_path / "parts"
    _classes(parts / "train")
    _classes(parts / "test")
    (tmp_path / "nothing").mkdir()
    _classes(tmp_path / "hollow")
    for p in (tmp_path / "hollow" / "sad").iterdir():
        p.unlink()  # an empty class folder
    assert find_dataset("folder", [tmp_path / "nothing", tmp_path / "hollow", flat]) == flat
    assert find_dataset("folder", [parts]) == parts
    assert find_dataset("folder", [tmp_path / "nothing", None, tmp_path / "hollow"]) is None


def test_find_labels_file(tmp_path: Path, no_decoding) -> None:
    good = _label_file(tmp_path / "faces")
    gone = tmp_path / "gone.csv"
    gone.write_text("path,label\nnope.png,a\n")
    assert find_dataset("labels", [tmp_path / "faces", gone, good]) == good


@pytest.mark.parametrize("layout", ["file", "dir", "dir/fer2013"])
def test_find_fer2013_in_every_layout_load_dataset_takes(tmp_path: Path, layout: str) -> None:
    """Defect 14: ``--pretrain fer2013`` found only DIR/fer2013.csv."""
    data = tmp_path / "data"
    csv_path = _fer2013(data / "fer2013" / "fer2013.csv" if layout == "dir/fer2013" else data / "fer2013.csv")
    candidate = csv_path if layout == "file" else data
    other = _classes(tmp_path / "photos")
    assert find_dataset("fer2013", [other, candidate]) == candidate
    assert find_dataset("fer-2013", [candidate]) == candidate
    assert len(load_dataset("fer2013", candidate)) == 3  # and it loads from there


def test_find_fer2013_checks_the_header_only(tmp_path: Path) -> None:
    wrong = tmp_path / "a" / "fer2013.csv"
    wrong.parent.mkdir()
    wrong.write_text("path,label\nx.png,1\n")
    assert find_dataset("fer2013", [wrong.parent, tmp_path / "missing.csv"]) is None
    good = _fer2013(tmp_path / "b" / "fer2013.csv")
    with open(good, "a") as f:
        f.write("9,1 2 3,Training\n")  # a bad row: the loader skips it, the finder does not read it
    assert find_dataset("fer2013", [wrong.parent, good.parent]) == good.parent


def test_find_dataset_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown dataset kind 'mnist'"):
        find_dataset("mnist", ["."])


# ----------------------------------------------------------------------------- --labels paths
def test_labels_relative_to_the_current_folder_without_a_root(tmp_path: Path, monkeypatch) -> None:
    """Defect 7: ``vitfer finetune --dataset folder --labels faces/labels.csv`` (the README's
    command) joined the label file's folder twice (faces/faces/labels.csv)."""
    _label_file(tmp_path / "faces")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("folder", None, labels="faces/labels.csv", image_size=8)
    assert len(ds) == 4 and ds.classes == ["a", "b"]
    assert ds.paths[0].resolve() == (tmp_path / "faces" / "imgs" / "p0.png").resolve()  # relative to the file
    # what the engine passes today: the label file's folder as the root, the path as given
    ds = load_dataset("folder", "faces", labels="faces/labels.csv", image_size=8)
    assert len(ds) == 4
    # absolute, with or without a root
    ds = load_dataset("folder", tmp_path / "elsewhere", labels=tmp_path / "faces" / "labels.csv", image_size=8)
    assert len(ds) == 4


def test_labels_relative_to_root_still_work(tmp_path: Path, monkeypatch) -> None:
    _label_file(tmp_path / "faces", name="train.csv")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("folder", tmp_path / "faces", labels="train.csv", image_size=8)  # faces/train.csv
    assert len(ds) == 4
    ds = load_dataset("folder", "faces", labels="train.csv", image_size=8)
    assert len(ds) == 4


def test_labels_ambiguous_or_missing_name_every_place(tmp_path: Path, monkeypatch) -> None:
    _label_file(tmp_path / "faces")
    _label_file(tmp_path, name="labels.csv")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"both labels.csv .*and faces/labels.csv .*absolute path"):
        load_dataset("folder", "faces", labels="labels.csv", image_size=8)
    # the same file reached both ways is no ambiguity
    assert len(load_dataset("folder", ".", labels="labels.csv", image_size=8)) == 4
    with pytest.raises(DatasetError, match=r"label file not found: nope.csv .*current folder.*nor faces/nope.csv"):
        load_dataset("folder", "faces", labels="nope.csv", image_size=8)
    with pytest.raises(DatasetError, match=r"label file not found: nope.csv \(relative to the current folder"):
        load_dataset("folder", None, labels="nope.csv")
    with pytest.raises(DatasetError, match=r"needs its folder \(--data-dir\)"):
        load_dataset("folder", None)
    with pytest.raises(DatasetError, match=r"needs its folder"):
        load_dataset("jaffe", None)


# ----------------------------------------------------------------------------- face-crop report
class _StubDetector:
    """Finds a 'face' (a box in the middle) in images whose mean is above 100, none otherwise."""

    def detect(self, image):
        arr = np.asarray(image)
        if arr.mean() <= 100:
            return []
        h, w = arr.shape[:2]
        return [Box(w // 4, h // 4, w // 2, h // 2, 10)]


def test_the_load_line_counts_face_crops_and_images_without_a_face(tmp_path: Path, caplog) -> None:
    """Issue 28 point 7: with --crop-faces the load line said only "213 resized"."""
    from PIL import Image

    for j, level in enumerate((200, 180, 20, 150)):  # the third has no 'face'
        cls = "ab"[j % 2]
        save(Image.fromarray(np.full((40, 40), level, np.uint8)), tmp_path / cls / f"{j}.png")
    crop = FaceCropper(0.0, detector=_StubDetector())
    with caplog.at_level(logging.INFO, logger="vitfer.data"), pytest.warns(UserWarning, match="no face found"):
        ds = load_dataset("folder", tmp_path, image_size=16, preprocess=crop, face_cropped=True)
    assert len(ds) == 3 and [p.name for p, _ in ds.skipped] == ["2.png"]
    rep = ds.load_report
    assert rep["preprocess"] == "face-cropped" and rep["n_preprocessed"] == 3 and rep["n_preprocess_skipped"] == 1
    assert rep["n_resized"] == 3  # the 20x20 crops, to 16
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded folder")]
    assert "3 images" in line and "3 face-cropped (1 skipped for no face)" in line and "3 resized" in line


def test_a_step_without_labels_is_reported_as_preprocessed(tmp_path: Path, caplog) -> None:
    for j in range(4):
        save(make_image("L", (12, 12), j), tmp_path / "ab"[j % 2] / f"{j}.png")

    def keep(im):
        return im, ""

    with caplog.at_level(logging.INFO, logger="vitfer.data"):
        ds = load_dataset("folder", tmp_path, preprocess=keep)
    assert ds.load_report["n_preprocessed"] == 4 and ds.load_report["preprocess"] == "preprocessed"
    assert any("4 preprocessed (0 skipped by the preprocess step)" in r.getMessage() for r in caplog.records)
    # without a step, the report has no step fields
    assert "preprocess" not in load_dataset("folder", tmp_path).load_report
