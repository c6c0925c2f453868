"""GPSA against timm's ``timm.models.convit.GPSA`` with identical weights (fp32, CPU).

Gradients are compared under the cotangent ``randn / (B * N)`` (the size of a mean-reduced
loss), which keeps every gradient O(1): under a unit cotangent ``pos_proj.weight``'s gradient is
in the hundreds, where one fp32 ulp already exceeds 1e-5.
"""
from __future__ import annotations

import pytest
import torch
from parity import LAYER_ATOL, assert_close, copy_weights, max_abs_diff, randomize_
from timm.models.convit import GPSA as TimmGPSA

from vitfer.layers.gpsa import GPSA, GPSABlock, attention_distance, grid_distances, rel_indices

# (heads, grid side): the per-element strided path (heads in one chunk / split in two groups)
# and the grouped path of small grids.
CASES = [(4, 14), (16, 14), (9, 7)]


def _pair(heads: int, side: int, seed: int = 0, **kw):
    dim = 48 * heads
    ref = TimmGPSA(dim, heads, **kw)
    randomize_(ref, seed)
    with torch.no_grad():  # gates away from 1 so that both terms of the mix matter
        ref.gating_param.copy_(torch.linspace(-2.0, 2.0, heads))
    ours = GPSA(dim, heads, (side, side), **kw)
    copy_weights(ref, ours)
    return ours, ref


def _compare_fwd_bwd(ours, ref, x):
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_o, out_r = ours(xo), ref(xr)
    diffs = {"out": assert_close(out_o, out_r, LAYER_ATOL, "forward")}
    cot = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(1)) / (x.shape[0] * x.shape[1])
    out_o.backward(cot)
    out_r.backward(cot)
    diffs["x.grad"] = assert_close(xo.grad, xr.grad, LAYER_ATOL, "input grad")
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        diffs[f"{name}.grad"] = assert_close(p.grad, ref_params[name].grad, LAYER_ATOL, f"grad of {name}")
    return diffs


@pytest.mark.parametrize("heads,side", CASES)
def test_forward_backward_matches_timm(heads, side):
    ours, ref = _pair(heads, side)
    x = torch.randn(2, side * side, 48 * heads)
    diffs = _compare_fwd_bwd(ours, ref, x)
    print(f"\nGPSA H={heads} grid={side}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


@pytest.mark.parametrize("heads,side", [(4, 14), (9, 7)])
def test_sdpa_split_form_matches_timm(heads, side):
    """impl="sdpa" on CPU: (1 - g) SDPA(q, k, v) + g (P @ v) against timm's explicit formula."""
    ours, ref = _pair(heads, side, seed=2)
    ours.impl = "sdpa"
    x = torch.randn(2, side * side, 48 * heads)
    diffs = _compare_fwd_bwd(ours, ref, x)
    print(f"\nGPSA sdpa H={heads} grid={side}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


def test_eval_no_grad_matches_grad_mode():
    """The in-place mix (no autograd) and the out-of-place one agree."""
    ours, _ = _pair(4, 14)
    x = torch.randn(2, 196, 192)
    with torch.no_grad():
        a = ours(x)
    b = ours(x.requires_grad_())
    assert_close(a, b.detach(), 1e-6, "no_grad vs grad mode")


def test_attention_weights_and_distances_match_timm():
    ours, ref = _pair(9, 14, seed=3)
    x = torch.randn(2, 196, 432)
    with torch.no_grad():
        ref_out = ref(x)  # timm builds its relative indices lazily, in forward
        out, w = ours(x, return_attention=True)
        d_w = assert_close(w, ref.get_attention(x), 1e-6, "attention weights")
        assert_close(out, ref_out, LAYER_ATOL, "output with return_attention")
        dist, dist_ref = ours.attention_map(x), ref.get_attention_map(x)
        d_d = assert_close(dist, dist_ref, 1e-5 * max(1.0, dist_ref.abs().max().item()), "mean distance")
        assert torch.allclose(attention_distance(w), dist)
        assert_close(ours.gating(), torch.sigmoid(ref.gating_param), 0.0, "gating")
        assert_close(ours.positional_attention(), ref.pos_proj(ref.get_rel_indices(196)).squeeze(0).permute(2, 0, 1).softmax(-1), 1e-6)
    assert w.shape == (2, 9, 196, 196)
    print(f"\nweights {d_w:.1e}, distances {d_d:.1e}")


@pytest.mark.parametrize("side", [14, 5, 1])
def test_rel_indices_match_timm(side):
    ref = TimmGPSA(48, 1)
    expected = ref.get_rel_indices(side * side)[0]
    assert torch.equal(rel_indices((side, side)), expected)
    assert torch.equal(grid_distances(side * side), expected[..., 2].sqrt())


@pytest.mark.parametrize("heads,strength", [(4, 1.0), (9, 0.5), (16, 2.0), (6, 1.0)])
def test_local_init_matches_timm(heads, strength):
    dim = 48 * heads
    ref = TimmGPSA(dim, heads, locality_strength=strength)
    randomize_(ref, 4)
    ours = GPSA(dim, heads, (14, 14), locality_strength=strength)
    copy_weights(ref, ours)
    ref.local_init()
    ours.local_init()
    assert torch.equal(ours.v.weight, torch.eye(dim))
    for name, t in ref.state_dict().items():
        if name != "rel_indices":
            assert torch.equal(ours.state_dict()[name], t), name


def test_state_dict_matches_timm():
    ref, ours = TimmGPSA(192, 4), GPSA(192, 4, (14, 14))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items() if k != "rel_indices"
    }
    assert "rel_indices" not in ours.state_dict()
    assert ours.rel_indices.shape == (196, 196, 3) and ours.rel_indices.dtype == torch.float32


def test_non_square_grid_raises():
    with pytest.raises(ValueError, match="square patch grid.*14x10"):
        GPSA(192, 4, (14, 10))
    gpsa = GPSA(192, 4, (14, 14))
    with pytest.raises(ValueError, match="square patch grid"):
        gpsa.set_grid_size((7, 8))
    assert gpsa.grid_size == (14, 14) and gpsa.rel_indices.shape[0] == 196


def test_wrong_token_count_raises():
    gpsa = GPSA(192, 4, (14, 14))
    with pytest.raises(ValueError, match=r"\(B, 196, 192\).*got \(2, 197, 192\)"):
        gpsa(torch.randn(2, 197, 192))


def test_set_grid_size_rebuilds_indices():
    ours, ref = _pair(4, 14, seed=5)
    ours.set_grid_size((6, 6))
    assert ours.rel_indices.shape == (36, 36, 3)
    x = torch.randn(2, 36, 192)
    with torch.no_grad():
        assert_close(ours(x), ref(x), LAYER_ATOL, "after set_grid_size")


@pytest.mark.parametrize("side", [7, 14])
def test_attention_dropout_falls_back_to_manual(side):
    """With attention dropout in training, impl="sdpa" takes the hand-written path (same draw)."""
    ours, _ = _pair(4, side, seed=6, attn_drop=0.5)
    ours.train()
    x = torch.randn(2, side * side, 192)
    torch.manual_seed(7)
    manual = ours(x)
    ours.impl = "sdpa"
    torch.manual_seed(7)
    sdpa = ours(x)
    assert torch.equal(manual, sdpa)
    ours.eval()
    with torch.no_grad():
        assert max_abs_diff(ours(x), manual) > 1e-3  # dropout did act in training


def test_block_matches_timm_block():
    from timm.models.convit import Block as TimmBlock

    ref = TimmBlock(192, 4, qkv_bias=False, use_gpsa=True)
    randomize_(ref, 8)
    ours = GPSABlock(192, 4, (14, 14), norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
    copy_weights(ref, ours)
    x = torch.randn(2, 196, 192)
    with torch.no_grad():
        assert_close(ours(x), ref(x), LAYER_ATOL, "block")
        y, w = ours(x, return_attention=True)
        assert_close(y, ref(x), LAYER_ATOL, "block with attention")
    assert w.shape == (2, 4, 196, 196)


def test_compiles_without_graph_breaks():
    """No lazy state mutation in forward: dynamo traces one full graph (eager backend)."""
    ours, _ = _pair(4, 7, seed=9)
    compiled = torch.compile(ours, backend="eager", fullgraph=True)
    x = torch.randn(2, 49, 192)
    with torch.no_grad():
        assert_close(compiled(x), ours(x), 1e-6, "compiled")


def test_head_groups_that_do_not_divide_the_heads(monkeypatch):
    """5 heads in groups of at most 3 (3 + 2): same forward and gradients as one group."""
    import vitfer.layers.gpsa as gpsa_mod

    torch.manual_seed(0)
    m = GPSA(40, 5, (14, 14)).eval()
    with torch.no_grad():
        m.gating_param.copy_(torch.linspace(-2.0, 2.0, 5))
    x = torch.randn(2, 196, 40)
    xa = x.clone().requires_grad_()
    ref = m(xa)
    ref.sum().backward()
    monkeypatch.setattr(gpsa_mod, "CHUNK_BYTES", 3 * 196 * 196 * 4)
    xb = x.clone().requires_grad_()
    out = m(xb)
    out.sum().backward()
    assert_close(out, ref, 1e-6, "grouped forward")
    assert_close(xb.grad, xa.grad, 1e-6, "grouped input gradient")
