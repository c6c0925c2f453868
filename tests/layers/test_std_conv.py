"""StdConv2dSame, MaxPool2dSame and the SAME padding helpers against timm's layers."""
from __future__ import annotations

import copy

import pytest
import torch
from parity import assert_close, check_forward_backward, copy_weights
from timm.layers.pool2d_same import MaxPool2dSame as TimmMaxPool2dSame
from timm.layers.std_conv import StdConv2dSame as TimmStdConv2dSame
from timm.layers.padding import get_same_padding as timm_get_same_padding

from vitfer.layers.padding import MaxPool2dSame, get_same_padding, pad_same
from vitfer.layers.std_conv import StdConv2dSame, standardize_weight


@pytest.mark.parametrize("size", range(1, 20))
@pytest.mark.parametrize(
    "k,s,d", [(1, 1, 1), (1, 2, 1), (3, 1, 1), (3, 2, 1), (7, 2, 1), (2, 2, 1), (3, 2, 2), (4, 1, 1)]
)
def test_get_same_padding_matches_timm(size, k, s, d):
    assert get_same_padding(size, k, s, d) == timm_get_same_padding(size, k, s, d)


def test_pad_same_no_copy_when_nothing_to_pad():
    x = torch.randn(1, 2, 8, 8)
    assert pad_same(x, (1, 1), (2, 2)) is x
    assert pad_same(x, (3, 3), (2, 2)).shape[-2:] == (9, 9)  # (0, 1) on each side


@pytest.mark.parametrize(
    "cin,cout,k,s,hw",
    [
        (3, 8, 7, 2, (24, 24)),  # stem: asymmetric (2, 3) padding
        (3, 8, 7, 2, (23, 21)),  # odd sizes: symmetric padding through the conv
        (8, 8, 3, 2, (10, 11)),  # strided 3x3, mixed even / odd
        (8, 16, 3, 1, (9, 9)),  # static padding
        (8, 16, 1, 2, (10, 9)),  # strided 1x1 projection: no padding
        (8, 4, 1, 1, (5, 6)),
    ],
)
def test_std_conv2d_same_matches_timm(cin, cout, k, s, hw):
    torch.manual_seed(0)
    ref = TimmStdConv2dSame(cin, cout, k, stride=s, eps=1e-8)
    ours = StdConv2dSame(cin, cout, k, stride=s, eps=1e-8)
    copy_weights(ref, ours)
    x = torch.randn(2, cin, *hw)
    res = check_forward_backward(ours, ref, [x])
    assert set(res) >= {"out", "input0.grad", "weight.grad"}
    print(f"StdConv2dSame k{k} s{s} {hw}: max diffs {res}")


def test_std_conv2d_same_bias_and_eps():
    torch.manual_seed(0)
    ref = TimmStdConv2dSame(4, 6, 3, stride=2, bias=True, eps=1e-6)
    ours = StdConv2dSame(4, 6, 3, stride=2, bias=True, eps=1e-6)
    copy_weights(ref, ours)
    check_forward_backward(ours, ref, [torch.randn(2, 4, 8, 8)])


def test_standardize_weight_statistics():
    w = torch.randn(5, 3, 3, 3) * 3 + 1
    s = standardize_weight(w, 1e-8).reshape(5, -1)
    assert_close(s.mean(1), torch.zeros(5), 1e-6)
    assert_close(s.var(1, unbiased=False), torch.ones(5), 1e-5)


def _ref_out(conv: StdConv2dSame, x: torch.Tensor) -> torch.Tensor:
    """The convolution with a freshly standardised weight (the uncached path)."""
    ref = TimmStdConv2dSame(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, eps=conv.eps)
    copy_weights(conv, ref)
    with torch.no_grad():
        return ref(x)


def test_std_conv_cache_reused_and_invalidated():
    torch.manual_seed(0)
    conv = StdConv2dSame(4, 6, 3, stride=2, eps=1e-8).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        y1 = conv(x)
        w1 = conv.standardized_weight()
        assert conv.standardized_weight() is w1  # cached
    assert_close(y1, _ref_out(conv, x), 0.0)

    # An in-place update (optimizer step) invalidates the cache.
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv.train()
    conv(x).square().mean().backward()
    opt.step()
    conv.eval()
    with torch.no_grad():
        y2 = conv(x)
    assert (y2 - y1).abs().max() > 1e-3
    assert_close(y2, _ref_out(conv, x), 0.0)

    # load_state_dict copies in place, invalidating it too.
    other = StdConv2dSame(4, 6, 3, stride=2, eps=1e-8)
    conv.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert_close(conv(x), _ref_out(other, x), 0.0)

    # Inference mode, then an autograd-recording call on a frozen weight with an input that needs grad.
    with torch.inference_mode():
        y3 = conv(x)
    conv.weight.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    y4 = conv(xg)
    y4.sum().backward()
    assert xg.grad is not None
    assert_close(y3, y4, 0.0)

    # A deep copy gets its own weight storage and so its own cache entry.
    dup = copy.deepcopy(conv)
    with torch.no_grad():
        dup.weight.mul_(2.0)
        assert_close(conv(x), y4, 0.0)
        assert_close(dup(x), _ref_out(dup, x), 0.0)


def test_std_conv_gradients_use_fresh_weight():
    torch.manual_seed(0)
    ref = TimmStdConv2dSame(4, 6, 3, eps=1e-8)
    ours = StdConv2dSame(4, 6, 3, eps=1e-8)
    copy_weights(ref, ours)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ours(x)  # fills the cache
    check_forward_backward(ours, ref, [x])  # still differentiates through the standardisation


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 8), (16, 16), (15, 17), (112, 112), (111, 56)])
@pytest.mark.parametrize("k,s", [(3, 2), (2, 2), (3, 1), (5, 3)])
def test_max_pool2d_same_matches_timm(hw, k, s):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *hw)
    res = check_forward_backward(MaxPool2dSame(k, s), TimmMaxPool2dSame(k, s), [x], atol=0.0)
    assert res["out"] == 0.0


def test_max_pool2d_same_negative_inputs_and_channels_last():
    # Padded cells must never win, also when every real value is negative.
    x = -torch.rand(2, 4, 10, 10) - 1.0
    ref = TimmMaxPool2dSame(3, 2)(x)
    assert_close(MaxPool2dSame(3, 2)(x), ref, 0.0)
    y = MaxPool2dSame(3, 2)(x.contiguous(memory_format=torch.channels_last))
    assert_close(y, ref, 0.0)
