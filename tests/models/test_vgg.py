"""VGG16 / VGG19 against timm with identical weights (fp32, num_classes=7)."""
from __future__ import annotations

import pytest
import torch
from parity import NUM_CLASSES, assert_close, assert_logits_close, assert_same_state_dict_layout, make_pair, train_step_diffs

import vitfer.models.vgg  # noqa: F401  (registers vgg16 / vgg19)
from vitfer.models.vgg import vgg16


@pytest.fixture(scope="module")
def pair16():
    return make_pair("vgg16")


def test_state_dict_keys_and_shapes_match_timm(pair16):
    assert_same_state_dict_layout(*pair16)


@pytest.mark.parametrize("hw", [(224, 224), (256, 256), (64, 64), (32, 40)])
def test_vgg16_eval_parity(pair16, hw):
    # 224: fc1 on exactly 7x7 (the matrix-product path); 256: ConvMlp runs spatially (2x2), then
    # the head averages (timm's behaviour); 64 and 32: maps under 7x7 are pooled up first.
    ours, ref = pair16
    x = torch.randn(2 if hw == (224, 224) else 1, 3, *hw)
    with torch.no_grad():
        fo, fr = ours.forward_features(x), ref.forward_features(x)
        feat = assert_logits_close(fo, fr, "features")
        po, pr = ours.forward_head(fo, pre_logits=True), ref.forward_head(fr, pre_logits=True)
        assert po.shape == (x.shape[0], 4096)
        pre = assert_logits_close(po, pr, "pre_logits (the 4096-d SVM features)")
        lo, lr = ours.forward_head(fo), ref.forward_head(fr)
        d = assert_logits_close(lo, lr)
        assert_close(ours(x), lo, 0.0)
    print(f"vgg16 eval {hw}: logits {d:.2e} (max|ref| {lr.abs().max():.2f}), features {feat:.2e}, pre_logits {pre:.2e}")


def test_vgg16_train_step(pair16):
    # 64x64 gives a 2x2 map, pooled up to 7x7: the fc layers run as matrix products (the path of
    # 224x224 inputs). No batch norm, so no copies are needed.
    ours, ref = pair16
    x = torch.randn(2, 3, 64, 64)
    diffs = train_step_diffs(ours, ref, x, torch.tensor([2, 4]), "vgg16", True, copy_models=False)
    print(f"vgg16 train step 64: {diffs}")


def test_vgg19_eval_parity():
    ours, ref = make_pair("vgg19", seed=1)
    assert sum(p.numel() for p in ours.parameters()) == 143_667_240 - 1000 * 4097 + NUM_CLASSES * 4097
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        d = assert_logits_close(ours(x), ref(x))
        pre = assert_logits_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                  ref.forward_head(ref.forward_features(x), pre_logits=True), "pre_logits")
    print(f"vgg19 eval 64: logits {d:.2e}, pre_logits {pre:.2e}")


def test_bad_inputs(pair16):
    ours, _ = pair16
    with pytest.raises(ValueError, match=r"at least 32x32 .*got 31x64"):
        ours(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="expects 3 input channels, got 4"):
        ours(torch.randn(1, 4, 64, 64))


def test_api_and_pretrained_cfg():
    m = vgg16(num_classes=NUM_CLASSES, drop_rate=0.3)
    assert m.model_name == "vgg16" and m.num_features == 512 and m.head_hidden_size == 4096  # timm's
    assert m.pre_logits.drop.p == 0.3 and m.head.drop.p == 0.3
    cfg = m.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/vgg16.tv_in1k" and cfg["interpolation"] == "bilinear"
    assert cfg["crop_pct"] == 0.875 and cfg["first_conv"] == "features.0" and cfg["classifier"] == "head.fc"
    m.reset_classifier(0)
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4096)
    m.reset_classifier(3)
    assert m.get_classifier().out_features == 3
