"""SyntheticFaces: interface, determinism, and difficulty (linear model vs a small network)."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitfer.data import SYNTHETIC_CLASSES, SyntheticFaces, build_transforms, make_split


def test_interface_matches_the_file_datasets() -> None:
    ds = SyntheticFaces(n=30, seed=0)
    assert ds.classes == list(SYNTHETIC_CLASSES) == ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert len(ds) == 30 and ds.labels[:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert set(ds.class_counts().values()) == {4, 5}
    assert all(s.startswith("synth") for s in ds.subjects) and 1 < len(ds.subject_names) <= 40
    assert all(isinstance(p, str) and ds.classes[y] in p for p, y in zip(ds.paths, ds.labels))
    assert ds.skipped == [] and ds.default_test_size == 0.2
    assert ds.images.shape == (30, 1, 64, 64) and ds.images.dtype == torch.uint8
    x, y = ds[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert y == 3
    assert float(ds.images.float().std()) > 20  # not blank
    assert "SyntheticFaces" in repr(ds) and "happy: 4" in repr(ds)


def test_same_seed_bit_identical_and_seeds_differ() -> None:
    a = SyntheticFaces(n=14, image_size=48, seed=5)
    b = SyntheticFaces(n=14, image_size=48, seed=5)
    assert torch.equal(a.images, b.images) and a.subjects == b.subjects and a.labels == b.labels
    c = SyntheticFaces(n=14, image_size=48, seed=6)
    assert not torch.equal(a.images, c.images)
    prefix = SyntheticFaces(n=7, image_size=48, seed=5)  # sample i depends on (seed, i) only
    assert torch.equal(prefix.images, a.images[:7])


def test_class_subset_subjects_and_transforms() -> None:
    ds = SyntheticFaces(n=40, image_size=32, seed=1, classes=["happy", "sad"], n_subjects=6)
    assert ds.classes == ["happy", "sad"] and set(ds.labels) == {0, 1}
    assert len(ds.subject_names) <= 6
    split = make_split(ds, "subject", seed=0, test_size=0.3)
    assert not {ds.subjects[i] for i in split["train"]} & {ds.subjects[i] for i in split["test"]}
    cfg = {"input_size": (3, 24, 24), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    train = ds.subset(split["train"], transform=build_transforms(cfg, train=True))
    train.seed = 0
    assert train[0][0].shape == (3, 24, 24) and torch.equal(train[0][0], train[0][0])
    with pytest.raises(ValueError, match="classes"):
        SyntheticFaces(n=4, classes=["happy", "contempt"])
    with pytest.raises(ValueError, match="image_size"):
        SyntheticFaces(n=4, image_size=8)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_synthetic_linear_model_clearly_worse_than_small_convnet() -> None:
    """The faces are hard for a linear model on pixels, learnable for a small network.

    The small network is a 3-layer CNN for now (cheap on a CPU); the issue's claim is about a
    small ViT, which can take its place here once vitfer's models can be trained quickly.
    Measured (seed 0, 1050 train / 450 test at 32x32): linear about 0.26, CNN about 0.70.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest, and fair to shared machines
    try:
        t0 = time.perf_counter()
        ds = SyntheticFaces(n=1500, image_size=32, seed=0)
        split = make_split(ds, "random", test_size=0.3, seed=0)
        x = ds.images.float() / 255.0  # (N, 1, 32, 32)
        y = torch.tensor(ds.labels)
        train, test = torch.tensor(split["train"]), torch.tensor(split["test"])
        xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]

        # logistic regression on standardised raw pixels, full batch
        torch.manual_seed(0)
        mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True) + 1e-3
        flat_tr, flat_te = ((xtr - mean) / std).flatten(1), ((xte - mean) / std).flatten(1)
        linear = nn.Linear(flat_tr.shape[1], 7)
        opt = torch.optim.Adam(linear.parameters(), lr=2e-3)
        for _ in range(150):
            loss = F.cross_entropy(linear(flat_tr), ytr) + 1e-3 * linear.weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        linear_acc = _accuracy(linear, flat_te, yte)

        # a small CNN: three 3x3 conv layers (8, 16, 32 channels), a linear head
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        channels = 1
        for width in (8, 16, 32):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        cnn = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 4 * 4, 7))
        epochs, batch = 6, 64
        steps = epochs * math_ceil(len(train), batch)
        opt = torch.optim.AdamW(cnn.parameters(), lr=1e-2, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
        norm_tr, norm_te = (xtr - 0.5) / 0.25, (xte - 0.5) / 0.25
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            cnn.train()
            perm = torch.randperm(len(train), generator=g)
            for i in range(0, len(train), batch):
                idx = perm[i : i + batch]
                loss = F.cross_entropy(cnn(norm_tr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        cnn_acc = _accuracy(cnn, norm_te, yte)
    finally:
        torch.set_num_threads(threads)
    print(f"synthetic 32x32: linear {linear_acc:.3f}, small CNN {cnn_acc:.3f}, {time.perf_counter() - t0:.1f} s")
    chance = 1 / 7
    assert linear_acc >= chance + 0.06, f"linear {linear_acc:.3f} should beat chance {chance:.3f} clearly"
    assert cnn_acc >= linear_acc + 0.15, f"CNN {cnn_acc:.3f} vs linear {linear_acc:.3f}: the gap is too small"


def math_ceil(a: int, b: int) -> int:
    return -(-a // b)
