"""ResNet-D against timm with identical weights (fp32, num_classes=7)."""
from __future__ import annotations

import pytest
import torch
from parity import NUM_CLASSES, assert_close, assert_logits_close, assert_same_state_dict_layout, make_pair, train_step_diffs

import vitfer.models.resnet  # noqa: F401  (registers the ResNet-D family)
from vitfer.models import create_model
from vitfer.models.resnet import RESNET_VARIANTS, resnet50d


@pytest.fixture(scope="module")
def r50d():
    return make_pair("resnet50d")


def test_state_dict_keys_and_shapes_match_timm(r50d):
    assert_same_state_dict_layout(*r50d)


def test_resnet50d_eval_parity_224(r50d):
    ours, ref = r50d
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fo, fr = ours.forward_features(x), ref.forward_features(x)
        feat = assert_logits_close(fo, fr, "features")
        po, pr = ours.forward_head(fo, pre_logits=True), ref.forward_head(fr, pre_logits=True)
        pre = assert_logits_close(po, pr, "pre_logits")
        lo, lr = ours.forward_head(fo), ref.forward_head(fr)
        d = assert_logits_close(lo, lr)
        assert_close(ours(x), lo, 0.0)
    print(f"resnet50d eval 224: logits {d:.2e} (max|ref| {lr.abs().max():.2f}), features {feat:.2e}, "
          f"pre_logits {pre:.2e}")


def test_resnet50d_train_step(r50d):
    ours, ref = r50d
    diffs = train_step_diffs(ours, ref, torch.randn(2, 3, 64, 64), torch.tensor([1, 5]), "resnet50d", True)
    print(f"resnet50d train step 64: {diffs}")


@pytest.mark.parametrize("name", [n for n in RESNET_VARIANTS if n != "resnet50d"])
def test_other_depths_eval_parity(name):
    ours, ref = make_pair(name, seed=1)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        d = assert_logits_close(ours(x), ref(x))
    print(f"{name} eval 64x80: logits {d:.2e}")


def test_resnet18d_train_step_nchw_and_drop_path():
    # Basic blocks, run in NCHW. Stochastic depth and dropout are random, so the step runs
    # without them; their rates are checked on the modules.
    ours, ref = make_pair("resnet18d", seed=2, channels_last=False)
    diffs = train_step_diffs(ours, ref, torch.randn(3, 3, 48, 48), torch.tensor([0, 6, 3]), "resnet18d", False)
    print(f"resnet18d train step 48 (NCHW): {diffs}")
    m = create_model("resnet18d", drop_path_rate=0.1, drop_rate=0.2)
    assert m.layer4[1].drop_path.drop_prob == pytest.approx(0.1)
    assert m.layer1[0].drop_path.__class__.__name__ == "Identity"
    assert m.head_drop.p == 0.2


def test_small_inputs(r50d):
    ours, ref = r50d
    for hw in [(1, 1), (7, 33)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            assert_logits_close(ours(x), ref(x), f"logits at {hw}")
    ours.train()
    try:
        with pytest.raises(ValueError, match=r"batch of 1 at 32x32 gives a 1x1 .*larger than 32x32"):
            ours(torch.randn(1, 3, 32, 32))
        ours(torch.randn(1, 3, 33, 16))  # a 2x1 last map is enough for batch norm
    finally:
        ours.eval()


def test_bad_inputs(r50d):
    ours, _ = r50d
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        ours(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="4-D input"):
        ours(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="at least 1x1"):
        ours(torch.randn(1, 3, 0, 64))


def test_api_and_pretrained_cfg():
    m = resnet50d(num_classes=NUM_CLASSES, channels_last=False)
    assert m.model_name == "resnet50d"
    assert m.num_features == 2048 and m.get_classifier().out_features == NUM_CLASSES
    cfg = m.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/resnet50d.ra2_in1k"
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["first_conv"] == "conv1.0" and cfg["classifier"] == "fc" and not cfg["fixed_input_size"]
    m.reset_classifier(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert m.eval()(x).shape == (2, 2048)
    assert sum(p.numel() for p in create_model("resnet50d").parameters()) == 25_576_264
    with pytest.raises(TypeError, match="unknown override"):
        create_model("resnet50d", img_size=224)
