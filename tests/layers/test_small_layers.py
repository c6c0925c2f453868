"""Mlp, DropPath, PatchEmbed, Block and position-embedding resampling against timm."""
from __future__ import annotations

import pytest
import torch
from parity import assert_close, check_forward_backward, copy_weights, randomize_
from timm.layers import DropPath as TimmDropPath
from timm.layers import Mlp as TimmMlp
from timm.layers import PatchEmbed as TimmPatchEmbed
from timm.layers import resample_abs_pos_embed as timm_resample
from timm.models.vision_transformer import Block as TimmBlock

from vitfer.layers import Block, DropPath, Mlp, PatchEmbed, check_input, resample_abs_pos_embed


def test_mlp_matches_timm():
    ref, ours = TimmMlp(24, 96), Mlp(24, 96)
    copy_weights(ref, ours)
    check_forward_backward(ours, ref, [torch.randn(3, 5, 24)])


def test_drop_path_matches_timm_with_same_rng():
    ref, ours = TimmDropPath(0.3).train(), DropPath(0.3).train()
    x = torch.randn(64, 4, 8)
    torch.manual_seed(7)
    xo = x.clone().requires_grad_()
    yo = ours(xo)
    torch.manual_seed(7)
    xr = x.clone().requires_grad_()
    yr = ref(xr)
    assert torch.equal(yo, yr)
    dropped = (yo.flatten(1) == 0).all(1).float().mean().item()
    assert 0.1 < dropped < 0.5, dropped
    yo.sum().backward()
    yr.sum().backward()
    assert torch.equal(xo.grad, xr.grad)
    assert torch.equal(ours.eval()(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_patch_embed_matches_timm():
    ref = TimmPatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    ours = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    copy_weights(ref, ours)
    check_forward_backward(ours, ref, [torch.randn(2, 3, 32, 32)])
    assert ours.grid_size == (4, 4) and ours.num_patches == 16


def test_patch_embed_errors_name_expected_and_actual():
    pe = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    with pytest.raises(ValueError, match=r"expects input size 32x32, got 40x40"):
        pe(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"expects 3 input channels, got 1"):
        pe(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        PatchEmbed(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="4-D"):
        check_input(torch.randn(3, 32, 32), 3, (32, 32))


@pytest.mark.parametrize("train", [False, True])
def test_block_matches_timm(train):
    torch.manual_seed(0)
    ref = TimmBlock(48, 4, qkv_bias=True)
    ours = Block(48, 4, qkv_bias=True)
    copy_weights(ref, ours)
    randomize_(ours)
    copy_weights(ours, ref)
    ref.train(train), ours.train(train)
    check_forward_backward(ours, ref, [torch.randn(2, 9, 48)])


def test_block_drop_path_same_rng():
    ref = TimmBlock(32, 4, drop_path=0.5).train()
    ours = Block(32, 4, drop_path=0.5).train()
    copy_weights(ref, ours)
    x = torch.randn(16, 5, 32)
    torch.manual_seed(3)
    a = ours(x)
    torch.manual_seed(3)
    b = ref(x)
    assert_close(a, b, 1e-5, "block with drop path")


@pytest.mark.parametrize("new_size,prefix", [((10, 10), 1), ((24, 24), 1), ((7, 12), 1), ((9, 9), 0)])
def test_resample_pos_embed_matches_timm(new_size, prefix):
    pe = torch.randn(1, prefix + 14 * 14, 32)
    ours = resample_abs_pos_embed(pe, new_size, num_prefix_tokens=prefix)
    ref = timm_resample(pe, new_size, num_prefix_tokens=prefix)
    assert ours.shape == (1, prefix + new_size[0] * new_size[1], 32)
    assert_close(ours, ref, 1e-6, "resampled pos embed")
    if prefix:
        assert torch.equal(ours[:, :prefix], pe[:, :prefix])


def test_resample_pos_embed_identity_and_errors():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_abs_pos_embed(pe, (4, 4)) is pe
    with pytest.raises(ValueError, match="square grid"):
        resample_abs_pos_embed(torch.randn(1, 1 + 15, 8), (4, 4))
    with pytest.raises(ValueError, match=r"\(1, N, D\)"):
        resample_abs_pos_embed(torch.randn(17, 8), (4, 4))
