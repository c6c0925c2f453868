"""Deterministic train / val / test splits: image-level, subject-level and k-fold.

:func:`make_split` returns ``{"train": [...], "val": [...], "test": [...]}``: sorted lists of
item indices that are disjoint and together cover the dataset. The validation part is always
carved from the training side, never from the test side.

Kinds:

- ``random``: stratified image split (the study's protocol). Per-class test quotas are
  allocated by largest remainder, so the total is exact: with the default ``test_size`` the
  split is 781/200 on CK+48 and 143/70 on JAFFE. Near-duplicate frames of one subject land
  on both sides, which inflates accuracy (see ``subject``).
- ``subject``: subject-independent hold-out. Whole subjects go to the test side, chosen so
  that the test size is close to ``test_size`` and the class mix close to the dataset's; no
  subject is ever on both sides (nor on both train and val).
- ``kfold``: stratified k-fold over images; the test part is fold ``fold`` of ``n_folds``; the
  images of each fold depend on the seed (the fold sizes do not).
- ``official``: the dataset's own parts (``dataset.usage``): FER-2013's Training / PublicTest /
  PrivateTest as train / val / test, or the ``train/``, ``val/`` (``validation/``) and
  ``test/`` folders of a folder dataset. Without a validation part, ``val_size`` carves one from
  the training part (stratified); with one, ``val_size`` is ignored. ``seed``, ``n_folds`` and
  ``fold`` play no part; ``test_size`` is an error.
- ``subject-kfold``: k folds of whole subjects with balanced image counts (fold sizes within
  one subject's image count of each other); every subject is in exactly one test fold (with
  ``n_folds`` = number of subjects: leave-one-subject-out). Which subjects share a fold, and
  which fold is fold 0, depend on the seed.

Determinism: every random choice ranks keys by a BLAKE2 hash of ``(seed, purpose, key)``, so a
split depends only on the seed and the dataset's labels and subjects, not on any library's RNG
version. Different seeds give different splits, with one exception: a subject hold-out picks the
cheapest of 64 seeded candidate selections, and where few selections meet the test size and class
mix (JAFFE's 10 people, 3 to a test part) most seeds land on the same one: seeds 0-9 hold out only
two sets of test people on JAFFE (CK+48's 118 people give ten). :func:`seeds_sharing_test_subjects`
says which seeds share a seed's test people; ``subject-kfold`` tests every person once.

Sizes: an int is a number of images; a float in ``[0, 1)`` a fraction (of the whole dataset
for ``test_size``, of the training side for ``val_size``). ``test_size=None`` uses the
dataset's ``default_test_size`` (200 for CK+48, 70 for JAFFE: the study's test sets; 0.2
otherwise).
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "SPLIT_KINDS", "ALL_SPLIT_KINDS", "OFFICIAL_PARTS", "SplitError", "make_split", "iter_folds",
    "seeds_sharing_test_subjects",
]

#: The split kinds that :func:`make_split` makes on any dataset with labels (and subjects), from
#: a seed.
SPLIT_KINDS: tuple[str, ...] = ("random", "subject", "kfold", "subject-kfold")
#: Every kind :func:`make_split` knows: :data:`SPLIT_KINDS` and ``official`` (the dataset's own
#: parts; only datasets with ``usage``, and the same for every seed, so it is kept apart).
ALL_SPLIT_KINDS: tuple[str, ...] = (*SPLIT_KINDS, "official")

#: ``dataset.usage`` values (lower case) and the official part each stands for: FER-2013's
#: Usage column and the part folders of a ``root/train|val|test/<class>/`` layout.
OFFICIAL_PARTS: dict[str, str] = {
    "training": "train", "train": "train",
    "publictest": "val", "val": "val", "valid": "val", "validation": "val",
    "privatetest": "test", "test": "test", "testing": "test",
}
_OFFICIAL_HELP = (
    "--split official needs a dataset with its own train/test parts: FER-2013 (--dataset fer2013, its "
    "Usage column) or a folder laid out as train/<class>/ and test/<class>/ (optionally val/ or "
    "validation/) given to --dataset folder"
)

_GROUP_TRIALS = 64  # candidate subject selections scored per subject hold-out


class SplitError(ValueError):
    """A split cannot be made (no subjects, too few subjects for the folds, bad sizes)."""


def _rank(keys: Sequence[Any], seed: int, purpose: str) -> list[Any]:
    """``keys`` in a pseudo-random order fixed by ``(seed, purpose)``."""
    def h(key: Any) -> bytes:
        return hashlib.blake2b(f"{seed}\x00{purpose}\x00{key}".encode(), digest_size=8).digest()

    return sorted(keys, key=h)


def _count(size: int | float, n: int, what: str) -> int:
    """A size (int count or float fraction of ``n``) as a count in ``[0, n]``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise SplitError(f"{what} must be an int (count) or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise SplitError(f"{what} as a fraction must be in [0, 1), got {size}")
        return int(math.floor(size * n + 0.5))
    if not 0 <= size <= n:
        raise SplitError(f"{what}={size} is not within 0..{n} (the images available)")
    return int(size)


def _test_size(dataset: Any, test_size: int | float | None) -> int | float:
    """A hold-out's test size: ``test_size``, or the dataset's default (0.2 without one)."""
    return getattr(dataset, "default_test_size", 0.2) if test_size is None else test_size


def _quotas(counts: Sequence[int], total: int) -> list[int]:
    """Split ``total`` over classes of ``counts`` proportionally, by largest remainder (exact sum)."""
    n = sum(counts)
    if n == 0:
        return [0] * len(counts)
    exact = [total * c / n for c in counts]
    quotas = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(counts)), key=lambda k: (-(exact[k] - quotas[k]), k))
    for k in order[: total - sum(quotas)]:
        quotas[k] += 1
    return quotas


def _stratified_take(
    indices: Sequence[int], labels: Sequence[int], n_take: int, seed: int, purpose: str
) -> tuple[list[int], list[int]]:
    """Take ``n_take`` of ``indices`` with per-class proportions; returns (taken, rest)."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        by_class[labels[i]].append(i)
    classes = sorted(by_class)
    quotas = _quotas([len(by_class[c]) for c in classes], n_take)
    taken: list[int] = []
    rest: list[int] = []
    for c, q in zip(classes, quotas):
        ranked = _rank(by_class[c], seed, f"{purpose}/class{c}")
        taken += ranked[:q]
        rest += ranked[q:]
    return taken, rest


def _groups(dataset: Any, indices: Sequence[int]) -> dict[str, list[int]]:
    subjects = getattr(dataset, "subjects", None)
    name = getattr(dataset, "name", type(dataset).__name__)
    if subjects is None or any(subjects[i] is None for i in indices):
        raise SplitError(
            f"dataset {name!r} has no subject for every item, so it cannot be split by subject "
            "(for a folder or label-file dataset pass --subject-pattern REGEX, in Python subject_pattern= or "
            "subject_fn=...; or use --split random / kfold)"
        )
    groups: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        groups[str(subjects[i])].append(i)
    return groups


def _choose_groups(
    groups: dict[str, list[int]], labels: Sequence[int], target: int, seed: int, purpose: str
) -> list[str]:
    """Pick whole groups whose image count is close to ``target`` and class mix close to all's.

    Tries :data:`_GROUP_TRIALS` seeded orders; each greedily adds groups that keep the count at
    most ``target``, then the one remaining group that brings it closest, if any does. The
    candidate with the smallest ``|count - target| / target + 0.5 * L1(class mix)`` wins. At
    least one group is taken when ``target > 0``, and at least one is always left.
    """
    names = sorted(groups)
    if target <= 0:
        return []
    if len(names) < 2:
        raise SplitError(f"need at least 2 subjects to hold some out, got {len(names)}")
    all_counts = Counter(labels[i] for g in names for i in groups[g])
    n_all = sum(all_counts.values())
    best: tuple[float, list[str]] | None = None
    for trial in range(_GROUP_TRIALS):
        order = _rank(names, seed, f"{purpose}/{trial}")
        chosen: list[str] = []
        total = 0
        for g in order:
            if total + len(groups[g]) <= target and len(chosen) < len(names) - 1:
                chosen.append(g)
                total += len(groups[g])
        taken = set(chosen)
        remaining = [g for g in order if g not in taken]
        if len(remaining) > 1 and total < target:
            g = min(remaining, key=lambda r: abs(total + len(groups[r]) - target))
            if abs(total + len(groups[g]) - target) < abs(total - target) or not chosen:
                chosen.append(g)
                total += len(groups[g])
        if not chosen:  # every group is larger than the target: take the first one
            chosen.append(order[0])
            total = len(groups[order[0]])
        counts = Counter(labels[i] for g in chosen for i in groups[g])
        l1 = sum(abs(counts.get(c, 0) / total - all_counts[c] / n_all) for c in all_counts)
        cost = abs(total - target) / target + 0.5 * l1
        if best is None or cost < best[0]:
            best = (cost, chosen)
    assert best is not None
    return best[1]


def _carve_val(
    dataset: Any, train: list[int], val_size: int | float, seed: int, by_subject: bool
) -> tuple[list[int], list[int]]:
    """Split the training side into (train, val); by subject when ``by_subject``."""
    n_val = _count(val_size, len(train), "val_size")
    if n_val == 0:
        return train, []
    if n_val >= len(train):
        raise SplitError(f"val_size={val_size} leaves no training images (training side: {len(train)})")
    labels = dataset.labels
    if by_subject:
        groups = _groups(dataset, train)
        chosen = set(_choose_groups(groups, labels, n_val, seed, "val-subjects"))
        val = [i for g in chosen for i in groups[g]]
        rest = [i for g in groups if g not in chosen for i in groups[g]]
        return rest, val
    val, rest = _stratified_take(train, labels, n_val, seed, "val")
    return rest, val


def _fold_of_items(labels: Sequence[int], n_folds: int, seed: int) -> list[int]:
    """Stratified fold id per item: per-class ranked lists, concatenated, dealt round-robin."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    fold = [0] * len(labels)
    position = 0
    for c in sorted(by_class):
        for i in _rank(by_class[c], seed, f"kfold/class{c}"):
            fold[i] = position % n_folds
            position += 1
    return fold


def _fold_of_subjects(groups: dict[str, list[int]], n_folds: int, seed: int) -> dict[str, int]:
    """Fold id per subject: subjects in a seeded order, each to the lightest fold (seeded ties).

    The order is random (not largest first), so the folds change with the seed; assigning each
    subject to the fold with the fewest images keeps the fold sizes within one subject's size
    of each other (the largest minus the smallest fold is at most the largest subject), and
    with ``n_folds`` equal to the number of subjects every fold gets one subject.
    """
    order = _rank(sorted(groups), seed, "subject-kfold")
    tie = {k: r for r, k in enumerate(_rank(range(n_folds), seed, "subject-kfold/folds"))}
    totals = [0] * n_folds
    fold: dict[str, int] = {}
    for g in order:
        f = min(range(n_folds), key=lambda k: (totals[k], tie[k]))
        fold[g] = f
        totals[f] += len(groups[g])
    return fold


def _official_split(
    dataset: Any, labels: list[int], *, seed: int, test_size: Any, val_size: int | float
) -> dict[str, list[int]]:
    """The ``official`` split from ``dataset.usage`` (see the module docstring)."""
    name = getattr(dataset, "name", type(dataset).__name__)
    usage = getattr(dataset, "usage", None)
    if usage is None or len(usage) != len(labels) or all(u is None for u in usage):
        raise SplitError(f"dataset {name!r} has no official split. {_OFFICIAL_HELP}; otherwise use --split "
                         "random, subject, kfold or subject-kfold")
    if test_size is not None:
        raise SplitError("--test-size does not apply to --split official: the test part is the dataset's own")
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, u in enumerate(usage):
        part = OFFICIAL_PARTS.get(str(u).lower()) if u is not None else None
        if part is None:
            raise SplitError(
                f"dataset {name!r}: item {i} ({getattr(dataset, 'paths', [None] * (i + 1))[i]}) has part "
                f"{u!r}, which is not one of {', '.join(sorted(OFFICIAL_PARTS))}"
            )
        parts[part].append(i)
    if not parts["train"]:
        raise SplitError(f"dataset {name!r} has no training part, so --split official cannot train")
    if not parts["test"]:
        raise SplitError(
            f"dataset {name!r} has no test part (only {', '.join(k for k, v in parts.items() if v)}), so "
            "--split official has nothing to test on; use --split random or kfold"
        )
    if not parts["val"]:
        parts["train"], parts["val"] = _carve_val(dataset, parts["train"], val_size, seed, False)
    return {k: sorted(v) for k, v in parts.items()}


def make_split(
    dataset: Any,
    kind: str,
    *,
    seed: int = 0,
    test_size: int | float | None = None,
    val_size: int | float = 0.0,
    n_folds: int = 5,
    fold: int = 0,
) -> dict[str, list[int]]:
    """Split a dataset into train, val and test index lists.

    Args:
        dataset: anything with per-item ``labels`` (and ``subjects`` for subject kinds),
            e.g. a :class:`~vitfer.data.FERDataset` or :class:`~vitfer.data.SyntheticFaces`.
        kind: ``random``, ``subject``, ``kfold``, ``subject-kfold`` or ``official`` (the
            dataset's own parts, ``dataset.usage``).
        seed: fixes every choice; the same seed gives the same split.
        test_size: ``random`` / ``subject`` only: int count or float fraction of the dataset;
            None uses ``dataset.default_test_size`` (CK+48 200, JAFFE 70, else 0.2).
        val_size: int count or float fraction of the training side, carved from it (by subject
            for the subject kinds, stratified otherwise).
        n_folds: number of folds for the k-fold kinds.
        fold: which fold (``0 <= fold < n_folds``) is the test part, for the k-fold kinds.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, sorted, disjoint, covering
        ``range(len(dataset.labels))``.

    Raises:
        SplitError: unknown kind, bad sizes, subject kinds on a dataset without subjects,
            ``n_folds`` larger than the number of subjects (or images), bad ``fold``.
    """
    kind = kind.lower()
    if kind not in ALL_SPLIT_KINDS:
        raise SplitError(f"unknown split kind {kind!r}; expected one of {', '.join(ALL_SPLIT_KINDS)}")
    labels = [int(y) for y in dataset.labels]
    n = len(labels)
    everything = list(range(n))
    by_subject = kind in ("subject", "subject-kfold")

    if kind == "official":
        return _official_split(dataset, labels, seed=seed, test_size=test_size, val_size=val_size)
    if kind in ("random", "subject"):
        test_size = _test_size(dataset, test_size)
        n_test = _count(test_size, n, "test_size")
        if n_test >= n:
            raise SplitError(f"test_size={test_size} leaves no training images ({n} in all)")
        if kind == "random":
            test, train = _stratified_take(everything, labels, n_test, seed, "test")
        else:
            groups = _groups(dataset, everything)
            chosen = set(_choose_groups(groups, labels, n_test, seed, "test-subjects"))
            test = [i for g in chosen for i in groups[g]]
            train = [i for g in groups if g not in chosen for i in groups[g]]
    else:
        if test_size is not None:
            raise SplitError(f"test_size does not apply to {kind!r}: the test part is fold {fold} of n_folds={n_folds}")
        if not isinstance(n_folds, int) or n_folds < 2:
            raise SplitError(f"n_folds must be an int >= 2, got {n_folds!r}")
        if not 0 <= fold < n_folds:
            raise SplitError(f"fold must be in range({n_folds}), got {fold}")
        if kind == "kfold":
            if n_folds > n:
                raise SplitError(f"n_folds={n_folds} is more than the {n} images")
            fold_ids = _fold_of_items(labels, n_folds, seed)
            test = [i for i in everything if fold_ids[i] == fold]
            train = [i for i in everything if fold_ids[i] != fold]
        else:
            groups = _groups(dataset, everything)
            if n_folds > len(groups):
                raise SplitError(f"n_folds={n_folds} is more than the {len(groups)} subjects")
            subject_fold = _fold_of_subjects(groups, n_folds, seed)
            test = [i for g, f in subject_fold.items() if f == fold for i in groups[g]]
            train = [i for g, f in subject_fold.items() if f != fold for i in groups[g]]

    train, val = _carve_val(dataset, train, val_size, seed, by_subject)
    split = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    if sum(len(v) for v in split.values()) != n or len(set().union(*map(set, split.values()))) != n:
        raise AssertionError("internal error: split parts are not a partition")  # pragma: no cover
    return split


def seeds_sharing_test_subjects(
    dataset: Any, seed: int, seeds: Sequence[int] = range(10), test_size: int | float | None = None
) -> list[int]:
    """The seeds among ``seeds`` whose ``subject`` split holds out the same test people as
    ``seed``'s (``seed`` itself included when it is among them), for the same ``test_size`` as
    :func:`make_split` (None: the dataset's default). More than one means that results over these
    seeds share one test set (see the module docstring)."""
    labels = [int(y) for y in dataset.labels]
    n_test = _count(_test_size(dataset, test_size), len(labels), "test_size")
    groups = _groups(dataset, range(len(labels)))
    held = {s: frozenset(_choose_groups(groups, labels, n_test, s, "test-subjects")) for s in {seed, *seeds}}
    return [s for s in seeds if held[s] == held[seed]]


def iter_folds(
    dataset: Any,
    kind: str = "kfold",
    *,
    seed: int = 0,
    n_folds: int = 5,
    val_size: int | float = 0.0,
) -> Iterator[dict[str, list[int]]]:
    """Yield the split of every fold ``0 .. n_folds - 1`` (``kind``: ``kfold`` or ``subject-kfold``).

    Each test item (each subject, for ``subject-kfold``) is in exactly one fold's test part;
    use the folds for a mean and standard deviation of the metric.
    """
    if kind.lower() not in ("kfold", "subject-kfold"):
        raise SplitError(f"iter_folds needs kind 'kfold' or 'subject-kfold', got {kind!r}")
    for f in range(n_folds):
        yield make_split(dataset, kind, seed=seed, n_folds=n_folds, fold=f, val_size=val_size)
