"""Regressions of issue 18 (data side): channels that follow the model, seed-dependent subject
folds, dataset-folder messages, face crops, one expression vocabulary, the skipped-files warning.

Images are generated here (noise, synthetic faces); the real-data checks are in
``test_data_real.py``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from data_helpers import make_image, save

from vitfer.data import (
    CANONICAL_EXPRESSIONS,
    CKPLUS48_CLASSES,
    DATASET_EXPRESSIONS,
    FER2013_CLASSES,
    JAFFE_CLASSES,
    SYNTHETIC_CLASSES,
    DatasetError,
    FERDataset,
    Normalize,
    Resize,
    SkippedFilesWarning,
    SyntheticFaces,
    ToChannels,
    UnknownExpressionError,
    build_transforms,
    canonical,
    canonical_classes,
    class_index_map,
    iter_folds,
    load_dataset,
    make_split,
    shared_classes,
    to_channels,
)

CFG1 = {"input_size": (1, 16, 16), "mean": (0.3, 0.45, 0.6), "std": (0.2, 0.25, 0.3), "crop_pct": 1.0}
CFG3 = {"input_size": (3, 16, 16), "mean": (0.3, 0.45, 0.6), "std": (0.2, 0.25, 0.3), "crop_pct": 1.0}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- item 4: channels
def test_issue18_item4_to_channels_converts_grey_and_rgb() -> None:
    grey = torch.rand(1, 5, 6)
    rgb = to_channels(grey, 3)
    assert rgb.shape == (3, 5, 6) and all(torch.equal(rgb[c], grey[0]) for c in range(3))
    rgb[0, 0, 0] = 7.0  # a copy, not a view of the grey image
    assert float(grey[0, 0, 0]) != 7.0
    colour = torch.rand(2, 3, 5, 6)
    luma = to_channels(colour, 1)
    expected = 0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]
    assert luma.shape == (2, 1, 5, 6)
    torch.testing.assert_close(luma[:, 0], expected)
    assert to_channels(grey, 1) is grey and to_channels(colour, 3) is colour  # unchanged
    torch.testing.assert_close(to_channels(to_channels(grey, 3), 1), grey)  # grey round trip
    as_uint8 = to_channels(torch.tensor([[[10]], [[20]], [[30]]], dtype=torch.uint8), 1)
    assert as_uint8.dtype == torch.uint8 and int(as_uint8) == round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)
    with pytest.raises(ValueError, match="1 .grey. or 3"):
        to_channels(grey, 2)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_channels(torch.rand(4, 5, 6), 3)


def test_issue18_item4_build_transforms_follows_input_channels() -> None:
    grey = torch.rand(1, 16, 16)
    colour = torch.rand(3, 16, 16)
    for train in (False, True):
        one = build_transforms(CFG1, train=train)
        three = build_transforms(CFG3, train=train)
        assert isinstance(one[0], ToChannels) and one.channels == 1 and three.channels == 3
        for x in (grey, colour):
            assert one(x, generator=_gen(0)).shape == (1, 16, 16)
            assert three(x, generator=_gen(0)).shape == (3, 16, 16)
    # eval, no resize (16 -> 16, crop_pct 1): RGB -> luma, normalised by the mean of the 3 values
    out = build_transforms(CFG1, train=False)(colour)
    luma = to_channels(colour, 1)
    torch.testing.assert_close(out, (luma - 0.45) / 0.25)
    norm = build_transforms(CFG1, train=False)[-1]
    assert isinstance(norm, Normalize) and norm.mean == pytest.approx((0.45,)) and norm.std == pytest.approx((0.25,))
    imagenet_grey = build_transforms({"input_size": (1, 16, 16)}, train=False)[-1]  # ImageNet defaults
    assert imagenet_grey.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert imagenet_grey.std == pytest.approx(((0.229 + 0.224 + 0.225) / 3,))
    # grey -> 3 channels: each channel normalised with its own mean / std
    out3 = build_transforms(CFG3, train=False)(grey)
    for c in range(3):
        torch.testing.assert_close(out3[c], (grey[0] - CFG3["mean"][c]) / CFG3["std"][c])
    one_value = build_transforms({"input_size": (3, 16, 16), "mean": (0.5,), "std": (0.5,)}, train=False)[-1]
    assert one_value.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="1 .grey. or 3 .RGB. channels"):
        build_transforms({"input_size": (4, 16, 16)}, train=False)
    with pytest.raises(ValueError, match="mean has 2 values"):
        build_transforms({"input_size": (3, 16, 16), "mean": (0.5, 0.5)}, train=False)


def test_issue18_item4_dataset_hands_stored_channels_to_the_pipeline() -> None:
    grey = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    colour = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for images in (grey, colour):
        for cfg, c in ((CFG1, 1), (CFG3, 3)):
            ds = FERDataset(images, [0, 1, 0, 1], ["a", "b"], transform=build_transforms(cfg, train=False))
            assert ds.item_channels() == images.shape[1]  # stored channels: the pipeline converts
            x, _ = ds[0]
            assert x.shape == (c, 16, 16)
            expected = build_transforms(cfg, train=False)(images[0].float() / 255)
            torch.testing.assert_close(x, expected)
            view = ds.subset([1, 2])  # views share the behaviour
            assert view[0][0].shape == (c, 16, 16)


def test_issue18_item4_dataset_without_pipeline_keeps_three_channels() -> None:
    grey = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8)
    ds = FERDataset(grey, [0, 1], ["a", "b"])
    x, _ = ds[0]  # backward compatible: transform=None gives 3 channels, grey repeated
    assert x.shape == (3, 6, 6) and ds.channels is None and ds.stored_channels == 1
    torch.testing.assert_close(x, grey[0].float().expand(3, -1, -1) / 255)
    ds.transform = Normalize([0.5] * 3, [0.5] * 3)  # a transform without channel handling: 3 too
    assert ds[0][0].shape == (3, 6, 6)
    ds.transform = None
    ds.channels = 1  # asked for: grey
    torch.testing.assert_close(ds[0][0], grey[0].float() / 255)
    colour = FERDataset(torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8), [0, 1], ["a", "b"], channels=1)
    torch.testing.assert_close(colour[0][0], to_channels(colour.uint8(0).float() / 255, 1))
    with pytest.raises(ValueError, match="channels"):
        FERDataset(grey, [0, 1], ["a", "b"], channels=2)


def test_issue18_item4_one_channel_model_trains() -> None:
    from vitfer.models import create_model

    model = create_model(
        "vit_tiny_patch16_224", num_classes=7, in_chans=1, img_size=32, patch_size=8, depth=1,
    )
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)
    ds = SyntheticFaces(n=8, image_size=40, seed=0, n_subjects=2)
    ds.transform = build_transforms(model.pretrained_cfg, train=True, crop_pct=1.0)
    ds.seed = 0
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert x.shape == (8, 1, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embed.proj.weight.grad is not None


# ----------------------------------------------------------------------------- item 5: folds
def _six_subjects() -> FERDataset:
    """Six subjects of 9, 8, 7, 7, 6 and 5 images (42 items, 3 classes)."""
    sizes = [9, 8, 7, 7, 6, 5]
    subjects = [f"p{s}" for s, n in enumerate(sizes) for _ in range(n)]
    labels = [i % 3 for i in range(len(subjects))]
    images = torch.zeros(len(subjects), 1, 4, 4, dtype=torch.uint8)
    return FERDataset(images, labels, ["a", "b", "c"], subjects=subjects, name="six")


def _subject_folds(ds: FERDataset, n_folds: int, seed: int) -> tuple[frozenset[str], ...]:
    return tuple(
        frozenset(ds.subjects[i] for i in f["test"]) for f in iter_folds(ds, "subject-kfold", n_folds=n_folds, seed=seed)
    )


def test_issue18_item5_subject_kfold_depends_on_seed() -> None:
    ds = _six_subjects()
    folds = {seed: _subject_folds(ds, 3, seed) for seed in range(20)}
    partitions = {frozenset(f) for f in folds.values()}  # which subjects share a fold
    assert len(partitions) >= 3
    assert len({f[0] for f in folds.values()}) >= 3  # and what fold 0 holds
    assert _subject_folds(ds, 3, 7) == folds[7]  # deterministic per seed
    largest = max(ds.subjects.count(s) for s in ds.subject_names)
    for seed in range(20):
        sizes = [len(f["test"]) for f in iter_folds(ds, "subject-kfold", n_folds=3, seed=seed)]
        assert sum(sizes) == len(ds) and max(sizes) - min(sizes) <= largest  # balanced
        for part in folds[seed]:
            assert part  # no empty fold
    # leave-one-subject-out still gives one subject per fold, in a seed-dependent order
    loso = {seed: _subject_folds(ds, 6, seed) for seed in range(10)}
    assert all(len(part) == 1 for f in loso.values() for part in f)
    assert len({f[0] for f in loso.values()}) >= 3


def test_issue18_item5_item_kfold_depends_on_seed() -> None:
    ds = _six_subjects()  # (kfold already depended on the seed: a guard, not a regression)
    fold0 = {tuple(make_split(ds, "kfold", n_folds=3, seed=s)["test"]) for s in range(10)}
    assert len(fold0) >= 8
    assert make_split(ds, "kfold", n_folds=3, seed=4) == make_split(ds, "kfold", n_folds=3, seed=4)


# ----------------------------------------------------------------------------- item 14: messages
def _class_folders(root: Path, names) -> Path:
    for j, name in enumerate(names):
        save(make_image("L", (8, 8), j), root / name / "x.png")
    return root


def test_issue18_item14_class_folders_given_as_ckplus48_say_dataset_folder(tmp_path: Path) -> None:
    names = [f"class{k:02d}" for k in range(12)]
    root = _class_folders(tmp_path / "mine", names)
    with pytest.raises(DatasetError) as info:
        load_dataset("ckplus48", root)
    msg = str(info.value)
    assert "--dataset folder" in msg and 'load_dataset("folder", root)' in msg
    assert "load_dataset('folder', ...)" not in msg
    assert ", ".join(CKPLUS48_CLASSES) in msg  # what was expected
    assert "12 sub-folder(s): class00, class01, class02, class03, class04 and 7 more" in msg  # what was found
    assert "class11" not in msg  # capped, not every entry


def test_issue18_item14_ckplus48_with_an_extra_folder_names_it(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "ck", [*CKPLUS48_CLASSES, "neutral"])
    with pytest.raises(DatasetError, match="unexpected: neutral") as info:
        load_dataset("ckplus48", root)
    assert "missing" not in str(info.value)


def test_issue18_item14_class_folders_given_as_jaffe_say_dataset_folder(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "mine", ["angry", "happy", "sad"])
    with pytest.raises(DatasetError) as info:
        load_dataset("jaffe", root)
    msg = str(info.value)
    assert "KA.AN1.39.tiff" in msg  # what a JAFFE file looks like
    assert "3 sub-folder(s): angry, happy, sad" in msg
    assert "--dataset folder" in msg and 'load_dataset("folder", root)' in msg
    ck = _class_folders(tmp_path / "ck", CKPLUS48_CLASSES)
    with pytest.raises(DatasetError, match="looks like CK\\+48: use --dataset ckplus48"):
        load_dataset("jaffe", ck)


def test_issue18_item14_jaffe_bad_names_are_capped(tmp_path: Path) -> None:
    root = tmp_path / "jaffe"
    for j in range(9):
        save(make_image("L", (8, 8), j), root / f"photo{j}.png")
    with pytest.raises(DatasetError) as info:
        load_dataset("jaffe", root)
    msg = str(info.value)
    assert "9 of 9 image file(s)" in msg and "and 4 more" in msg
    assert "photo0.png" in msg and "photo8.png" not in msg
    assert "AN DI FE HA NE SA SU" in msg


def test_issue18_item14_flat_jaffe_given_as_folder_or_ckplus48(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for j, code in enumerate(("AN", "HA")):
        save(make_image("L", (8, 8), j), root / f"KA.{code}1.{j}.tiff")
    for kind in ("folder", "ckplus48"):
        with pytest.raises(DatasetError, match="--dataset jaffe"):
            load_dataset(kind, root)


# ----------------------------------------------------------------------------- item 17: face crops
def test_issue18_item17_face_cropped_datasets(tmp_path: Path) -> None:
    for k, cls in enumerate(CKPLUS48_CLASSES):
        save(make_image("L", (8, 8), k), tmp_path / "ckplus48" / cls / f"S010_001_0000000{k}.png")
    for j, code in enumerate(("AN", "HA")):
        save(make_image("L", (8, 8), j), tmp_path / "jaffe" / f"KA.{code}1.{j}.tiff")
    assert load_dataset("ckplus48", tmp_path).face_cropped is True
    assert load_dataset("jaffe", tmp_path).face_cropped is True
    assert SyntheticFaces(n=2, image_size=16).face_cropped is True
    folder = load_dataset("folder", tmp_path / "ckplus48")
    assert folder.face_cropped is False
    assert load_dataset("folder", tmp_path / "ckplus48", face_cropped=True).face_cropped is True
    assert load_dataset("ckplus48", tmp_path).subset([0, 1]).face_cropped is True
    assert FERDataset(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), [0], ["a"]).face_cropped is False


def _resize_size(pipeline) -> int | tuple[int, int]:
    (step,) = [t for t in pipeline if isinstance(t, Resize)]
    return step.size


def test_issue18_item17_crop_pct_override() -> None:
    cfg = {"input_size": (3, 48, 48), "crop_pct": 0.875, "mean": (0.0,) * 3, "std": (1.0,) * 3}
    assert _resize_size(build_transforms(cfg, train=False)) == 54  # ImageNet: 48 of a 54-pixel resize
    whole = build_transforms(cfg, train=False, crop_pct=1.0)
    assert _resize_size(whole) == 48
    x = torch.rand(3, 48, 48)
    torch.testing.assert_close(whole(x), x)  # a 48x48 face crop goes through untouched
    assert _resize_size(build_transforms(cfg, train=True, crop_pct=1.0)) == 48
    assert _resize_size(build_transforms({**cfg, "crop_pct": 0.5}, train=False, crop_pct=0.9)) == 53  # kwarg wins
    with pytest.raises(ValueError, match="crop_pct"):
        build_transforms(cfg, train=False, crop_pct=0.0)


# ----------------------------------------------------------------------------- item 24: vocabulary
def test_issue18_item24_canonical_names_and_synonyms() -> None:
    assert CANONICAL_EXPRESSIONS == (
        "anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
    )
    pairs = {
        "angry": "anger", "Anger": "anger", "happy": "happiness", "HAPPINESS": "happiness", "joy": "happiness",
        "sad": "sadness", "sadness": "sadness", "surprised": "surprise", "surprise": "surprise",
        "disgusted": "disgust", "fearful": "fear", "afraid": "fear", "neutral": "neutral", "contempt": "contempt",
        " Sad ": "sadness",
    }
    for name, expected in pairs.items():
        assert canonical(name) == expected, name
    for name in CANONICAL_EXPRESSIONS:
        assert canonical(name) == name
    with pytest.raises(UnknownExpressionError, match="unknown expression 'boredom'.*anger, contempt"):
        canonical("boredom")
    assert issubclass(UnknownExpressionError, ValueError)
    with pytest.raises(ValueError, match="more than once: happiness"):
        canonical_classes(["happy", "joy"])


def test_issue18_item24_dataset_vocabularies() -> None:
    assert canonical_classes(CKPLUS48_CLASSES) == DATASET_EXPRESSIONS["ckplus48"]
    assert canonical_classes(JAFFE_CLASSES) == DATASET_EXPRESSIONS["jaffe"]
    assert canonical_classes(SYNTHETIC_CLASSES) == DATASET_EXPRESSIONS["synthetic"]
    assert FER2013_CLASSES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert DATASET_EXPRESSIONS["fer2013"] == ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
    assert DATASET_EXPRESSIONS["ckplus48"][5] == "sadness" and DATASET_EXPRESSIONS["jaffe"][5] == "sadness"
    for names in DATASET_EXPRESSIONS.values():
        assert set(names) <= set(CANONICAL_EXPRESSIONS) and len(set(names)) == 7


def test_issue18_item24_ckplus48_to_jaffe_index_map() -> None:
    six = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
    assert shared_classes(CKPLUS48_CLASSES, JAFFE_CLASSES) == six
    assert shared_classes(JAFFE_CLASSES, CKPLUS48_CLASSES) == six
    assert shared_classes(JAFFE_CLASSES, SYNTHETIC_CLASSES) == DATASET_EXPRESSIONS["jaffe"]
    m = class_index_map(CKPLUS48_CLASSES, JAFFE_CLASSES)  # a CK+48 model tested on JAFFE
    assert m.shared == six
    assert m.model_to_dataset == {0: 0, 2: 1, 3: 2, 4: 3, 5: 5, 6: 6}
    assert m.dataset_to_model == {0: 0, 1: 2, 2: 3, 3: 4, 5: 5, 6: 6}
    assert m.model_indices == (0, 2, 3, 4, 5, 6) and m.dataset_indices == (0, 1, 2, 3, 5, 6)
    assert m.model_only == ("contempt",) and m.dataset_only == ("neutral",)
    for mi, di in m.model_to_dataset.items():
        assert canonical(CKPLUS48_CLASSES[mi]) == canonical(JAFFE_CLASSES[di])
    assert m.dataset_items([0, 4, 5, 4, 1]) == [0, 2, 4]  # neutral (4) items are left out
    back = class_index_map(JAFFE_CLASSES, CKPLUS48_CLASSES)
    assert back.model_to_dataset == m.dataset_to_model
    with pytest.raises(ValueError, match="share no expression"):
        class_index_map(["happy"], ["sad"])
    with pytest.raises(UnknownExpressionError):
        class_index_map(["a", "b"], JAFFE_CLASSES)


# ----------------------------------------------------------------------------- item 23: warning text
def test_issue18_item23_skipped_files_warning_is_self_contained(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        save(make_image("L", (8, 8)), tmp_path / cls / "ok.png")
        for j in range(4):
            (tmp_path / cls / f"broken{j}.png").write_bytes(b"not a png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("folder", tmp_path)
    (w,) = [w for w in caught if issubclass(w.category, SkippedFilesWarning)]
    msg = str(w.message)
    assert f"skipped 8 of 10 image file(s) in {tmp_path}" in msg  # count and folder
    first = sorted(p for p, _ in ds.skipped)[:5]
    for path, reason in ds.skipped[:5]:
        assert f"{path}: {reason}" in msg  # the first files, with their reasons
    assert [p for p, _ in ds.skipped[:5]] == first
    assert "and 3 more" in msg and str(ds.skipped[-1][0]) not in msg
    assert "Traceback" not in msg and "warnings.warn" not in msg
