"""ResNet-D against timm with identical weights (fp32, num_classes=7).

Also home of :func:`train_step_diffs`, the one-training-step comparison the CNN and hybrid tests
share.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from parity import assert_close, assert_logits_close, copy_weights, logits_tol, randomize_

import vitfer.models.resnet  # noqa: F401  (registers the ResNet-D family)
from vitfer.models import create_model
from vitfer.models.resnet import RESNET_VARIANTS, resnet50d

NUM_CLASSES = 7
GRAD_RTOL = 1e-4  # gradient bound: 1e-4 * the largest |gradient| of the same parameter tensor in timm


def make_pair(name: str, seed: int = 0, **overrides):
    """(vitfer model built with ``overrides``, timm model) in eval mode with the same random
    weights and BN statistics (used for the ResNets and VGGs).

    In ResNets the last BN of every residual branch is scaled down after ``randomize_`` so that
    the activations stay O(1) through the depth instead of growing with every block.
    """
    ref = timm.create_model(name, num_classes=NUM_CLASSES)
    randomize_(ref, seed)
    with torch.no_grad():
        for blk in ref.modules():
            if hasattr(blk, "zero_init_last"):  # timm's BasicBlock / Bottleneck
                (blk.bn3 if hasattr(blk, "bn3") else blk.bn2).weight.mul_(0.2)
    ours = create_model(name, num_classes=NUM_CLASSES, **overrides)
    copy_weights(ref, ours)
    return ours.eval(), ref.eval()


def train_step_diffs(
    ours, ref, x: torch.Tensor, target: torch.Tensor, what: str, channels_last: bool, copy_models: bool = True
) -> dict[str, float]:
    """One training step on both models (on deep copies unless ``copy_models=False``; then the
    gradients are cleared afterwards): forward in train mode (batch statistics,
    dropout off), cross-entropy on ``target``, backward. Asserts logits within the logits
    tolerance, every parameter gradient within ``GRAD_RTOL`` of that parameter's largest timm
    gradient, and every buffer (BN running statistics after the step) within 1e-4 relative.
    Returns the max differences.

    timm gets ``x`` in the memory format vitfer runs in (``channels_last``), so that both sides
    sum in the same order: with random weights, train-mode batch norm makes the gradients so
    ill-conditioned that timm against itself, NCHW against channels-last input, differs by 5% to
    30% relative on some tensors (measured on resnet50d), although the logits agree to 1e-6.
    """
    if copy_models:
        ours, ref = copy.deepcopy(ours), copy.deepcopy(ref)
    ours.train(), ref.train()
    try:
        return _train_step_diffs(ours, ref, x, target, what, channels_last)
    finally:
        ours.eval(), ref.eval()
        ours.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)


def _train_step_diffs(ours, ref, x, target, what, channels_last) -> dict[str, float]:
    lo, lr = ours(x), ref(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    diffs = {"logits": assert_logits_close(lo, lr, f"{what} train-mode logits")}
    F.cross_entropy(lo, target).backward()
    F.cross_entropy(lr, target).backward()
    ref_params = dict(ref.named_parameters())
    grad_rel = 0.0
    for name, p in ours.named_parameters():
        g = ref_params[name].grad
        scale = g.abs().max().item()
        d = assert_close(p.grad, g, GRAD_RTOL * scale, f"{what} grad of {name}")
        grad_rel = max(grad_rel, d / scale if scale > 0 else d)
    diffs["grad (max diff / max|grad| per tensor)"] = grad_rel
    ref_bufs = dict(ref.named_buffers())
    buf = 0.0
    for name, b in ours.named_buffers():
        if name in ref_bufs:
            r = ref_bufs[name]
            buf = max(buf, assert_close(b.double(), r.double(), logits_tol(r.double()), f"{what} buffer {name}"))
    diffs["buffers"] = buf
    return diffs


@pytest.fixture(scope="module")
def r50d():
    return make_pair("resnet50d")


def assert_same_state_dict_layout(ours, ref, ordered: bool = True) -> None:
    """Same state-dict names (in the same order unless ``ordered=False``) and shapes as timm's."""
    a, b = ours.state_dict(), ref.state_dict()
    assert (list(a) == list(b)) if ordered else (sorted(a) == sorted(b)), sorted(set(a) ^ set(b))[:10]
    assert all(a[k].shape == b[k].shape for k in a)


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
