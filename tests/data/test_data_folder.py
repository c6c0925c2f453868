"""Class-folder, CK+48-style and JAFFE-style datasets built in tmp_path from generated images."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_image, save, write_bad_files
from PIL import Image

from vitfer.data import (
    CKPLUS48_CLASSES,
    JAFFE_CLASSES,
    DatasetError,
    FERDataset,
    SkippedFilesWarning,
    SplitError,
    load_dataset,
    make_split,
)
from vitfer.data.transforms import Normalize

SIZE = (12, 10)  # (W, H) of the generated images


def _mixed_folder(root: Path) -> dict[str, Path]:
    """Three classes of good images in many modes, junk that is ignored and three bad files."""
    save(make_image("L", SIZE, 1), root / "a" / "grey.png")
    save(make_image("RGB", SIZE, 2), root / "a" / "colour.jpg", quality=95)
    save(make_image("I;16", SIZE, 3), root / "a" / "sixteen.png")
    save(make_image("P", SIZE, 4), root / "b" / "palette.tif")
    save(make_image("RGBA", SIZE, 5), root / "b" / "alpha.png")
    save(make_image("CMYK", SIZE, 6), root / "c" / "cmyk.jpg")
    save(make_image("L", SIZE, 7), root / "c" / "nested" / "deep.bmp")
    save(make_image("L", SIZE, 8), root / "c" / "anim.gif")
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "b" / "Thumbs.db").write_bytes(b"\x00junk")
    (root / "c" / "readme.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    save(make_image("L", SIZE, 9), root / ".hidden" / "x.png")
    bad = write_bad_files(root / "b")
    return bad


def test_folder_dataset_loads_every_mode_and_skips_bad_files_with_one_warning(tmp_path: Path) -> None:
    bad = _mixed_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("folder", tmp_path)
    skipped_warnings = [w for w in caught if issubclass(w.category, SkippedFilesWarning)]
    assert len(skipped_warnings) == 1
    message = str(skipped_warnings[0].message)
    for path in bad.values():
        assert str(path) in message
    assert sorted(p for p, _ in ds.skipped) == sorted(bad.values())
    assert all(reason for _, reason in ds.skipped)

    assert ds.classes == ["a", "b", "c"]
    assert len(ds) == 8 and ds.class_counts() == {"a": 3, "b": 2, "c": 3}
    assert [p.name for p in ds.paths] == [
        "colour.jpg", "grey.png", "sixteen.png", "alpha.png", "palette.tif", "anim.gif", "cmyk.jpg", "deep.bmp",
    ]
    assert ds.subjects == [None] * 8
    assert ds.images.shape == (8, 3, SIZE[1], SIZE[0]) and ds.images.dtype == torch.uint8
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, SIZE[1], SIZE[0]) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert y == ds.labels[i]
    # the grey image is repeated over the channels, with its exact values
    grey = ds.paths.index(tmp_path / "a" / "grey.png")
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "a" / "grey.png"))).float() / 255
    for c in range(3):
        torch.testing.assert_close(ds[grey][0][c], expected)
    assert "skipped=3" in repr(ds) and "a: 3" in repr(ds)


def test_strict_raises_naming_every_bad_file(tmp_path: Path) -> None:
    bad = _mixed_folder(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", tmp_path, strict=True)
    for path in bad.values():
        assert str(path) in str(info.value)


def test_a_class_whose_files_all_fail_is_an_error(tmp_path: Path) -> None:
    save(make_image("L", SIZE), tmp_path / "ok" / "x.png")
    write_bad_files(tmp_path / "broken")
    with pytest.warns(SkippedFilesWarning), pytest.raises(DatasetError, match="'broken'"):
        load_dataset("folder", tmp_path)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    save(make_image("L", SIZE), tmp_path / "full" / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "Thumbs.db").write_bytes(b"junk")  # not an image: still empty
    with pytest.raises(DatasetError, match=str(tmp_path / "empty")):
        load_dataset("folder", tmp_path)


@pytest.mark.parametrize("kind", ["folder", "ckplus48", "jaffe"])
def test_missing_folder_is_named(tmp_path: Path, kind: str) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DatasetError, match="no_such_folder"):
        load_dataset(kind, missing)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    save(make_image("L", SIZE), tmp_path / "flat.png")
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset("folder", tmp_path)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_dataset("mnist", ".")


def test_different_sizes_need_image_size(tmp_path: Path) -> None:
    save(make_image("L", (12, 10), 1), tmp_path / "a" / "small.png")
    save(make_image("RGB", (20, 16), 2), tmp_path / "b" / "large.png")
    with pytest.raises(DatasetError, match="image_size") as info:
        load_dataset("folder", tmp_path)
    assert "large.png" in str(info.value) or "small.png" in str(info.value)
    ds = load_dataset("folder", tmp_path, image_size=(8, 9), interpolation="bicubic")
    assert ds.images.shape == (2, 3, 8, 9) and ds.image_size == (8, 9)
    expected = np.asarray(Image.open(tmp_path / "a" / "small.png").resize((9, 8), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(ds.uint8(0)[0].numpy(), expected)


def test_subject_fn_and_explicit_classes(tmp_path: Path) -> None:
    for k, cls in enumerate(("x", "y")):
        for s in range(4):
            for j in range(2):
                save(make_image("L", SIZE, 10 * k + 2 * s + j), tmp_path / cls / f"p{s}_{j}.png")
    ds = load_dataset("folder", tmp_path, subject_fn=lambda p: p.name.split("_")[0], classes=["y", "x"])
    assert ds.classes == ["y", "x"] and ds.labels[:8] == [0] * 8
    assert ds.subject_names == ["p0", "p1", "p2", "p3"]
    split = make_split(ds, "subject", test_size=0.25, seed=3)
    train_subjects = {ds.subjects[i] for i in split["train"]}
    test_subjects = {ds.subjects[i] for i in split["test"]}
    assert test_subjects and not train_subjects & test_subjects
    with pytest.raises(DatasetError, match="'z'"):
        load_dataset("folder", tmp_path, classes=["x", "z"])
    plain = load_dataset("folder", tmp_path)
    with pytest.raises(SplitError, match="subject_fn"):
        make_split(plain, "subject")


def test_subset_shares_the_decoded_images_and_carries_its_own_transform(tmp_path: Path) -> None:
    for k in range(3):
        for j in range(3):
            save(make_image("L", SIZE, 3 * k + j), tmp_path / f"c{k}" / f"{j}.png")
    ds = load_dataset("folder", tmp_path)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    view = ds.subset([7, 2, 4], transform=norm)
    assert view._images.data_ptr() == ds._images.data_ptr()  # no copy
    assert view.labels == [ds.labels[7], ds.labels[2], ds.labels[4]]
    assert view.paths == [ds.paths[7], ds.paths[2], ds.paths[4]]
    torch.testing.assert_close(view[0][0], (ds[7][0] - 0.5) / 0.25)
    assert ds.transform is None and view.transform is norm
    kept = view.subset([2])  # a view of a view keeps the transform by default
    assert kept.paths == [ds.paths[4]] and kept.transform is norm
    torch.testing.assert_close(kept[0][0], view[2][0])
    assert torch.equal(view.images, ds.images[[7, 2, 4]])
    with pytest.raises(IndexError):
        ds.subset([9])
    with pytest.raises(IndexError):
        ds.uint8(9)


def test_ckplus48_layout_checks(tmp_path: Path) -> None:
    for k, cls in enumerate(CKPLUS48_CLASSES):
        for s in (10, 11):
            save(make_image("L", (8, 8), 2 * k + s), tmp_path / "ckplus48" / cls / f"S{s:03d}_001_0000000{k}.png")
    ds = load_dataset("ckplus48", tmp_path)  # the parent of ckplus48/ works too
    assert ds.classes == list(CKPLUS48_CLASSES) and len(ds) == 14
    assert ds.subject_names == ["S010", "S011"] and ds.default_test_size == 200
    save(make_image("L", (8, 8)), tmp_path / "ckplus48" / "anger" / "frame.png")
    with pytest.raises(DatasetError, match="frame.png"):
        load_dataset("ckplus48", tmp_path / "ckplus48")
    (tmp_path / "ckplus48" / "anger" / "frame.png").unlink()
    (tmp_path / "ckplus48" / "neutral").mkdir()
    with pytest.raises(DatasetError, match="neutral"):
        load_dataset("ckplus48", tmp_path)


def test_jaffe_names_labels_subjects_and_palette(tmp_path: Path) -> None:
    root = tmp_path / "jaffe"
    names = ["KA.AN1.39.tiff", "KA.NE2.27.tiff", "KM.SU3.59.tiff", "UY.DI1.126.tiff"]
    for j, name in enumerate(names):
        save(make_image("P" if name.startswith("KM") else "L", (16, 16), j), root / name)
    (root / "README").write_text("licence")
    (root / "Thumbs.db").write_bytes(b"junk")
    ds = load_dataset("jaffe", root)
    assert ds.classes == list(JAFFE_CLASSES)
    assert [ds.classes[y] for y in ds.labels] == ["anger", "neutral", "surprise", "disgust"]
    assert ds.subjects == ["KA", "KA", "KM", "UY"] and ds.default_test_size == 70
    palette = ds.paths.index(root / "KM.SU3.59.tiff")
    np.testing.assert_array_equal(
        ds.uint8(palette)[0].numpy(), np.asarray(Image.open(root / "KM.SU3.59.tiff").convert("L"))
    )
    save(make_image("L", (16, 16)), root / "XX.ZZ1.99.tiff")
    with pytest.raises(DatasetError, match="XX.ZZ1.99.tiff") as info:
        load_dataset("jaffe", root)
    assert "'ZZ'" in str(info.value)
    (root / "XX.ZZ1.99.tiff").unlink()
    save(make_image("L", (16, 16)), root / "noexpression.tiff")
    with pytest.raises(DatasetError, match="noexpression.tiff"):
        load_dataset("jaffe", root)


def test_jaffe_bad_file_is_skipped_or_strict(tmp_path: Path) -> None:
    root = tmp_path / "jaffe"
    for j, code in enumerate(("AN", "DI", "FE", "HA", "NE", "SA", "SU")):
        save(make_image("L", (16, 16), j), root / f"KA.{code}1.{j}.tiff")
    (root / "KA.HA2.99.tiff").write_bytes(b"II*\x00broken")
    with pytest.warns(SkippedFilesWarning, match="KA.HA2.99.tiff"):
        ds = load_dataset("jaffe", root)
    assert len(ds) == 7 and [p.name for p, _ in ds.skipped] == ["KA.HA2.99.tiff"]
    with pytest.raises(DatasetError, match="KA.HA2.99.tiff"):
        load_dataset("jaffe", root, strict=True)


def test_fer_dataset_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        FERDataset(torch.zeros(2, 1, 4, 4), [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        FERDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0], ["a", "b"])
    with pytest.raises(ValueError, match="range"):
        FERDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0, 2], ["a", "b"])
