"""make_split / iter_folds on small made-up label and subject lists (no images needed)."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from vitfer.data import SPLIT_KINDS, SplitError, iter_folds, make_split, seeds_sharing_test_subjects
from vitfer.data.splits import _quotas


def _dataset(n_subjects: int = 12, per_subject=(3, 5, 8), n_classes: int = 4, default_test_size=0.25):
    """Subjects of varying sizes, labels cycling through classes."""
    labels, subjects = [], []
    for s in range(n_subjects):
        for j in range(per_subject[s % len(per_subject)]):
            labels.append((s + j) % n_classes)
            subjects.append(f"s{s:02d}")
    return SimpleNamespace(labels=labels, subjects=subjects, name="toy", default_test_size=default_test_size)


def _check_partition(split: dict, n: int) -> None:
    assert set(split) == {"train", "val", "test"}
    for part in split.values():
        assert part == sorted(part) and all(isinstance(i, int) for i in part)
    everything = split["train"] + split["val"] + split["test"]
    assert sorted(everything) == list(range(n))  # disjoint and covering


@pytest.mark.parametrize("kind", SPLIT_KINDS)
@pytest.mark.parametrize("val_size", [0.0, 0.2, 5])
def test_every_kind_is_a_deterministic_partition(kind: str, val_size) -> None:
    ds = _dataset()
    split = make_split(ds, kind, seed=4, val_size=val_size)
    _check_partition(split, len(ds.labels))
    assert split["test"] and split["train"]
    assert bool(split["val"]) == (val_size != 0.0)
    assert make_split(ds, kind, seed=4, val_size=val_size) == split
    assert any(make_split(ds, kind, seed=s, val_size=val_size) != split for s in range(5, 9))


def test_largest_remainder_quotas_are_exact() -> None:
    assert _quotas([135, 54, 177, 75, 207, 84, 249], 200) == [28, 11, 36, 15, 42, 17, 51]
    assert sum(_quotas([30, 29, 32, 31, 30, 31, 30], 70)) == 70
    assert _quotas([1, 1, 1], 2) == [1, 1, 0]  # ties go to the first classes
    assert _quotas([5, 0, 5], 3) == [2, 0, 1]


@pytest.mark.parametrize("test_size, expected", [(0.2, 13), (0.25, 16), (10, 10), (0, 0)])
def test_random_split_sizes_and_strata(test_size, expected: int) -> None:
    ds = _dataset()  # 64 items
    split = make_split(ds, "random", test_size=test_size)
    assert len(split["test"]) == expected
    counts = Counter(ds.labels[i] for i in split["test"])
    totals = Counter(ds.labels)
    for k in totals:
        assert abs(counts[k] - expected * totals[k] / len(ds.labels)) < 1


def test_default_test_size_comes_from_the_dataset() -> None:
    ds = _dataset(default_test_size=17)
    assert len(make_split(ds, "random")["test"]) == 17
    plain = SimpleNamespace(labels=[0, 1] * 10, subjects=[None] * 20)  # no default: 0.2
    assert len(make_split(plain, "random")["test"]) == 4


def test_val_is_carved_from_the_training_side_only() -> None:
    ds = _dataset()
    for kind in SPLIT_KINDS:
        base = make_split(ds, kind, seed=1)
        with_val = make_split(ds, kind, seed=1, val_size=0.25)
        assert with_val["test"] == base["test"]
        assert sorted(with_val["train"] + with_val["val"]) == base["train"]


@pytest.mark.parametrize("kind", ["subject", "subject-kfold"])
def test_subject_kinds_keep_subjects_on_one_side(kind: str) -> None:
    ds = _dataset(n_subjects=20)
    for seed in range(5):
        split = make_split(ds, kind, seed=seed, val_size=0.2)
        sides = [{ds.subjects[i] for i in split[k]} for k in ("train", "val", "test")]
        assert all(sides)
        assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]


def test_subject_split_size_is_close_to_target() -> None:
    ds = _dataset(n_subjects=30)  # 30 subjects of 3, 5 or 8 images: 160 items
    for seed in range(5):
        split = make_split(ds, "subject", seed=seed, test_size=40)
        assert abs(len(split["test"]) - 40) <= 1


def test_iter_folds_cover_everything_once() -> None:
    ds = _dataset()
    for kind in ("kfold", "subject-kfold"):
        folds = list(iter_folds(ds, kind, n_folds=4, seed=2))
        assert len(folds) == 4
        tests = sorted(i for f in folds for i in f["test"])
        assert tests == list(range(len(ds.labels)))
    item_folds = [len(f["test"]) for f in iter_folds(ds, "kfold", n_folds=4)]
    assert max(item_folds) - min(item_folds) <= 1
    subject_folds = [len(f["test"]) for f in iter_folds(ds, "subject-kfold", n_folds=4)]
    assert max(subject_folds) - min(subject_folds) <= 8  # at most one subject's worth apart


def test_errors_are_clear() -> None:
    ds = _dataset(n_subjects=5)
    with pytest.raises(SplitError, match="unknown split kind"):
        make_split(ds, "stratified")
    with pytest.raises(SplitError, match="n_folds=6 is more than the 5 subjects"):
        make_split(ds, "subject-kfold", n_folds=6)
    with pytest.raises(SplitError, match="fold must be in range"):
        make_split(ds, "kfold", n_folds=3, fold=3)
    with pytest.raises(SplitError, match="n_folds must be"):
        make_split(ds, "kfold", n_folds=1)
    with pytest.raises(SplitError, match="test_size does not apply"):
        make_split(ds, "kfold", test_size=0.2)
    with pytest.raises(SplitError, match="leaves no training"):
        make_split(ds, "random", test_size=len(ds.labels))
    with pytest.raises(SplitError, match=r"in \[0, 1\)"):
        make_split(ds, "random", test_size=1.5)
    with pytest.raises(SplitError, match="not within"):
        make_split(ds, "random", test_size=-1)
    with pytest.raises(SplitError, match="val_size=0.99 leaves no training"):
        make_split(ds, "random", test_size=0.2, val_size=0.99)
    with pytest.raises(SplitError, match="val_size=500 is not within"):
        make_split(ds, "random", val_size=500)
    with pytest.raises(SplitError, match="iter_folds"):
        next(iter_folds(ds, "random"))
    no_subjects = SimpleNamespace(labels=[0, 1, 0, 1], subjects=[None] * 4, name="anon")
    with pytest.raises(SplitError, match="'anon' has no subject"):
        make_split(no_subjects, "subject")
    one_subject = SimpleNamespace(labels=[0, 1, 0, 1], subjects=["a"] * 4)
    with pytest.raises(SplitError, match="at least 2 subjects"):
        make_split(one_subject, "subject", test_size=0.5)


@pytest.mark.parametrize("n_subjects, test_size", [(12, None), (5, 0.4), (30, 20)])
def test_seeds_sharing_test_subjects_agree_with_make_split(n_subjects: int, test_size) -> None:
    ds = _dataset(n_subjects=n_subjects)
    tests = {s: make_split(ds, "subject", seed=s, test_size=test_size, val_size=0.2)["test"] for s in range(10)}
    for seed in (0, 3, 12):
        mine = make_split(ds, "subject", seed=seed, test_size=test_size)["test"]
        expected = [s for s in range(10) if tests[s] == mine]
        assert seeds_sharing_test_subjects(ds, seed, test_size=test_size) == expected
        assert (seed in expected) == (seed < 10)
    assert seeds_sharing_test_subjects(ds, 1, seeds=[4, 1], test_size=test_size)[-1] == 1
