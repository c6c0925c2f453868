"""Hand-written transforms: geometry, PIL agreement, determinism, per-item seeding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vitfer.data import (
    DEFAULT_AUGMENT,
    CenterCrop,
    ColorJitter,
    Compose,
    FERDataset,
    GaussianNoise,
    Normalize,
    RandomAffine,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomTranslation,
    RandomVerticalFlip,
    Resize,
    build_transforms,
    item_generator,
)
from vitfer.data.transforms import affine

CFG = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.5, 0.4, 0.3),
    "std": (0.2, 0.25, 0.3),
    "crop_pct": 0.9,
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_image(h: int = 48, w: int = 48) -> np.ndarray:
    """A smooth uint8 (H, W) image without sharp edges (no overshoot when resampled)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    v = 0.5 + 0.25 * np.sin(x / 5.0) * np.cos(y / 7.0) + 0.2 * (x + y) / (h + w) - 0.1
    return np.clip(np.rint(v * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "interpolation, pil", [("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)]
)
@pytest.mark.parametrize("size", [(24, 24), (37, 29), (100, 100)])
def test_resize_matches_pil(interpolation, pil, size) -> None:
    a = _smooth_image()
    ref = np.asarray(Image.fromarray(a).resize((size[1], size[0]), pil)).astype(np.float64) / 255
    out = Resize(size, interpolation)(torch.from_numpy(a).float()[None] / 255)
    assert out.shape == (1, *size)
    diff = np.abs(out[0].numpy() - ref)
    assert diff.max() <= 2.0 / 255 and diff.mean() <= 0.5 / 255  # PIL rounds to uint8 after each pass


def test_resize_shorter_side_and_center_crop_geometry() -> None:
    x = torch.rand(3, 40, 60)
    assert Resize(20)(x).shape == (3, 20, 30)
    assert Resize(20)(torch.rand(3, 60, 40)).shape == (3, 30, 20)
    assert Resize(20, "nearest")(torch.rand(2, 1, 40, 40)).shape == (2, 1, 20, 20)
    img = torch.arange(7 * 9, dtype=torch.float32).view(1, 7, 9)
    torch.testing.assert_close(CenterCrop(3)(img), img[:, 2:5, 3:6])
    padded = CenterCrop((9, 9))(img)  # larger than the image: zero padding
    assert padded.shape == (1, 9, 9) and padded[0, 0].abs().sum() == 0
    torch.testing.assert_close(padded[:, 1:8, :], img)


def test_eval_pipeline_is_resize_crop_normalise_like_pil() -> None:
    a = _smooth_image()
    t = build_transforms(CFG, train=False)
    assert [type(s).__name__ for s in t] == ["ToChannels", "Resize", "CenterCrop", "Normalize"]
    out = t(torch.from_numpy(a).float().expand(3, -1, -1) / 255)
    assert out.shape == (3, 32, 32)
    scale = math.floor(32 / 0.9)  # 35
    big = np.asarray(Image.fromarray(a).resize((scale, scale), Image.Resampling.BICUBIC)).astype(np.float64) / 255
    top = int(round((scale - 32) / 2.0))
    ref = big[top : top + 32, top : top + 32]
    for c in range(3):
        expected = (ref - CFG["mean"][c]) / CFG["std"][c]
        assert np.abs(out[c].numpy() - expected).max() <= 1.01 / 255 / CFG["std"][c]


def test_flips() -> None:
    x = torch.rand(2, 3, 5, 6)
    torch.testing.assert_close(RandomHorizontalFlip(1.0)(x), x.flip(-1))
    torch.testing.assert_close(RandomVerticalFlip(1.0)(x[0]), x[0].flip(-2))
    torch.testing.assert_close(RandomHorizontalFlip(0.0)(x), x)
    batch = torch.rand(64, 1, 4, 4)
    flipped = RandomHorizontalFlip(0.5)(batch, generator=_gen(0))
    is_flipped = [torch.equal(f, b.flip(-1)) for f, b in zip(flipped, batch)]
    assert 10 < sum(is_flipped) < 54  # per-sample decisions
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)


def test_rotation_is_counter_clockwise_and_translation_exact() -> None:
    x = torch.zeros(1, 9, 9)
    x[0, 4, 7] = 1.0  # right of centre
    rotated = RandomRotation((90, 90))(x)
    assert rotated[0].argmax() == 1 * 9 + 4  # now above the centre (row 1, column 4)
    torch.testing.assert_close(RandomAffine()(x), x)  # no rotation, no shift: identity
    img = torch.rand(2, 3, 10, 12)
    shift = torch.tensor([[2.0, 0.0], [0.0, -3.0]])  # (dx, dy): right 2; up 3
    shifted = affine(img, torch.zeros(2), shift, torch.ones(2))
    torch.testing.assert_close(shifted[0, :, :, 2:], img[0, :, :, :-2])
    torch.testing.assert_close(shifted[1, :, :-3, :], img[1, :, 3:, :])
    assert float(shifted[0, :, :, :2].abs().max()) == 0.0  # uncovered: zero fill
    moved = RandomAffine(translate=(0.25, 0.0))(img, generator=_gen(1))
    assert not torch.allclose(moved, img) and moved.shape == img.shape
    tr = RandomTranslation((0.2, 0.2))
    assert tr.degrees == (0.0, 0.0) and tr.translate == (0.2, 0.2)
    filled = RandomRotation((45, 45), fill=0.5)(torch.zeros(1, 8, 8))
    assert float(filled[0, 0, 0]) == pytest.approx(0.5, abs=1e-5)  # corner: outside after rotation
    assert float(filled[0, 4, 4]) == pytest.approx(0.0, abs=1e-5)  # centre: the image


def test_random_resized_crop_and_jitter_and_noise() -> None:
    x = torch.rand(4, 3, 40, 30)
    out = RandomResizedCrop(16, scale=(0.5, 1.0))(x, generator=_gen(2))
    assert out.shape == (4, 3, 16, 16)
    crop = RandomResizedCrop((16, 16), scale=(0.5, 1.0))
    for seed in range(20):
        top, left, h, w = crop.get_params(40, 30, _gen(seed))
        assert 0 <= top <= 40 - h and 0 <= left <= 30 - w and 0.5 * 1200 * 0.9 <= h * w <= 1200
    grey = torch.full((3, 8, 8), 0.5)
    bright = ColorJitter(brightness=(1.2, 1.2))(grey)
    torch.testing.assert_close(bright, torch.full_like(grey, 0.6))
    img = torch.rand(3, 8, 8)
    flat = ColorJitter(contrast=(0.0, 0.0))(img)  # zero contrast: the mean grey level
    assert float(flat.std()) < 1e-6
    noisy = GaussianNoise(std=0.1)(torch.full((1, 64, 64), 0.5), generator=_gen(3))
    assert float((noisy - 0.5).std()) == pytest.approx(0.1, rel=0.1)
    assert float(GaussianNoise(std=5.0)(img).min()) >= 0.0  # clipped
    torch.testing.assert_close(Normalize([0.5], [0.5])(torch.ones(1, 2, 2)), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="channels"):
        Normalize([0.5], [0.5])(torch.ones(3, 2, 2))


def test_train_pipeline_same_seed_same_output() -> None:
    t = build_transforms(CFG, train=True, augment={"vflip": 0.5, "noise": 0.05, "scale": (0.9, 1.1)})
    names = [type(s).__name__ for s in t]
    assert names == [
        "ToChannels", "Resize", "CenterCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomAffine", "ColorJitter",
        "GaussianNoise", "Normalize",
    ]
    x = torch.rand(3, 48, 48)
    a, b = t(x, generator=_gen(7)), t(x, generator=_gen(7))
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    assert not torch.equal(a, t(x, generator=_gen(8)))
    batch = torch.rand(5, 3, 48, 48)
    out = t(batch, generator=_gen(9))
    assert out.shape == (5, 3, 32, 32) and torch.equal(out, t(batch, generator=_gen(9)))
    rrc = build_transforms(CFG, train=True, augment={"random_resized_crop": (0.8, 1.0)})
    assert type(rrc[1]).__name__ == "RandomResizedCrop" and rrc(x, generator=_gen(1)).shape == (3, 32, 32)


def test_augment_options() -> None:
    off = {k: 0 for k in ("hflip", "vflip", "rotation", "translate", "brightness", "contrast", "noise")}
    t = build_transforms(CFG, train=True, augment=off)
    x = torch.rand(3, 48, 48)
    torch.testing.assert_close(t(x, generator=_gen(1)), build_transforms(CFG, train=False)(x))
    default = build_transforms(CFG, train=True)
    assert "RandomVerticalFlip" not in repr(default) and DEFAULT_AUGMENT["vflip"] == 0.0
    with pytest.raises(ValueError, match="unknown augment keys"):
        build_transforms(CFG, train=True, augment={"mixup": 0.2})
    with pytest.raises(ValueError, match="input_size"):
        build_transforms({"mean": (0.5,) * 3}, train=False)
    minimal = build_transforms({"input_size": (3, 16, 16)}, train=False)  # timm defaults for the rest
    assert minimal(torch.rand(3, 20, 20)).shape == (3, 16, 16)


def test_dataset_seed_makes_augmentation_per_item_and_order_independent() -> None:
    images = torch.randint(0, 256, (6, 1, 40, 40), dtype=torch.uint8)
    ds = FERDataset(images, [0, 1, 0, 1, 0, 1], ["a", "b"], transform=build_transforms(CFG, train=True))
    ds.seed = 11
    forward = [ds[i][0] for i in range(6)]
    backward = [ds[i][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], forward[0])
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], forward[0])
    view = ds.subset([3, 4])  # a view seeds by its own positions
    g = item_generator(11, 0, 0)
    expected = ds.transform(images[3].float().expand(3, -1, -1) / 255, generator=g)
    torch.testing.assert_close(view[0][0], expected)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False)
    assert torch.equal(next(iter(loader))[0][1], forward[1])
    plain = Compose([lambda t: t * 2])  # plain callables are allowed in a pipeline
    torch.testing.assert_close(plain(torch.ones(1, 2, 2)), torch.full((1, 2, 2), 2.0))
