"""Residual adds folded into the branch's last GEMM, in-place activations, and the blocks using
them: same numbers as the plain formulas, and nobody's tensor is overwritten behind their back."""
from __future__ import annotations

import pytest
import torch
from parity import assert_close, copy_weights, randomize_
from timm.layers import Mlp as TimmMlp
from timm.models.convit import Block as TimmConvitBlock
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from vitfer.layers import Block, GPSABlock, Mlp
from vitfer.layers.residual import activation, branch_output, linear_residual, no_grad_needed


def _lin(bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(12, 8, bias=bias)
    return lin


@pytest.mark.parametrize("bias", [True, False])
def test_linear_residual_equals_plain_formula_and_keeps_residual(bias):
    lin = _lin(bias)
    x, r = torch.randn(3, 5, 12), torch.randn(3, 5, 8)
    r0 = r.clone()
    with torch.no_grad():
        out = linear_residual(x, lin, r)
        assert_close(out, r0 + lin(x), 1e-6, "out of place")
        assert torch.equal(r, r0) and out.data_ptr() != r.data_ptr()
        out2 = linear_residual(x, lin, r, inplace=True)
        assert out2.data_ptr() == r.data_ptr(), "inplace under no_grad writes into the residual"
        assert_close(out2, r0 + lin(x), 1e-6, "in place")


def test_linear_residual_under_autograd_is_out_of_place_and_differentiable():
    lin = _lin()
    x = torch.randn(4, 12, requires_grad=True)
    r = torch.randn(4, 8, requires_grad=True)
    r0 = r.detach().clone()
    out = linear_residual(x, lin, r, inplace=True)  # inplace refused: gradients are needed
    assert out.data_ptr() != r.data_ptr() and torch.equal(r.detach(), r0)
    cot = torch.randn(4, 8)
    out.backward(cot)
    grads = [t.grad.clone() for t in (x, r, lin.weight, lin.bias)]
    for t in (x, r, lin.weight, lin.bias):
        t.grad = None
    (r + lin(x)).backward(cot)
    for g, t in zip(grads, (x, r, lin.weight, lin.bias)):
        assert_close(g, t.grad, 1e-6, "gradient")


def test_linear_residual_falls_back_where_it_cannot_fuse():
    lin = _lin()
    x = torch.randn(5, 3, 12)
    r = torch.randn(3, 5, 8).transpose(0, 1)  # not contiguous
    r0 = r.clone()
    with torch.no_grad():
        out = linear_residual(x, lin, r, inplace=True)
    assert_close(out, r0 + lin(x), 1e-6, "non-contiguous residual")
    assert torch.equal(r, r0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_residual(x, lin, r0.contiguous())
        plain = r0 + lin(x)
    assert out.dtype == plain.dtype == torch.float32, "autocast keeps the residual stream in fp32"
    assert_close(out, plain, 0.0, "autocast takes the plain path")


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU(), nn.SiLU()])
def test_activation_in_place_only_without_grad(act):
    h = torch.randn(4, 6)
    want = act(h)
    with torch.no_grad():
        hh = h.clone()
        out = activation(act, hh)
    assert torch.equal(out, want)
    assert (out.data_ptr() == hh.data_ptr()) == (type(act) in (nn.GELU, nn.ReLU))
    hg = h.clone().requires_grad_()
    out = activation(act, hg)
    assert out.data_ptr() != hg.data_ptr() and torch.equal(hg.detach(), h)
    assert no_grad_needed(h) and not no_grad_needed(hg)


def test_branch_output_keeps_dropout_in_training():
    lin = _lin()
    drop = nn.Dropout(0.5).train()
    x, r = torch.randn(64, 12), torch.randn(64, 8)
    torch.manual_seed(1)
    a = branch_output(x, lin, drop, r)
    torch.manual_seed(1)
    b = r + drop(lin(x))
    assert torch.equal(a, b)
    drop.eval()
    assert_close(branch_output(x, lin, drop, r), r + lin(x), 1e-6, "eval: fused")


def test_mlp_residual_matches_timm_mlp():
    ref, ours = TimmMlp(24, 96), Mlp(24, 96)
    copy_weights(ref, ours)
    x, r = torch.randn(2, 7, 24), torch.randn(2, 7, 24)
    with torch.no_grad():
        want = r + ref(x)
        assert_close(ours(x, residual=r.clone(), inplace=True), want, 1e-5, "mlp residual in place")
        assert_close(ours(x, residual=r), want, 1e-5, "mlp residual")


def _no_grad_check(ours, ref, x):
    x0 = x.clone()
    with torch.no_grad():
        out, want = ours(x), ref(x)
    assert torch.equal(x, x0), "the block must not overwrite its input"
    assert_close(out, want, 1e-5, "no-grad forward")
    return out


@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_block_fused_paths_match_timm_and_leave_input_alone(drop_path):
    ref = TimmBlock(48, 4, qkv_bias=True, drop_path=drop_path).eval()
    ours = Block(48, 4, qkv_bias=True, drop_path=drop_path).eval()
    copy_weights(ref, ours)
    randomize_(ours)
    copy_weights(ours, ref)
    x = torch.randn(3, 9, 48)
    out = _no_grad_check(ours, ref, x)
    # chained blocks: the first block's output survives the second block's in-place MLP update
    keep = out.clone()
    with torch.no_grad():
        ours(out)
    assert torch.equal(out, keep)
    with torch.no_grad():
        o, w = ours(x, return_attention=True)
    assert_close(o, ref(x), 1e-5, "with attention weights")
    assert w.shape == (3, 4, 9, 9)


def test_gpsa_block_fused_path_matches_timm_and_leaves_input_alone():
    torch.manual_seed(0)
    ref = TimmConvitBlock(48, 4, use_gpsa=True, locality_strength=1.0).eval()
    ours = GPSABlock(48, 4, (4, 4), norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6)).eval()
    randomize_(ref, 8)  # not ours: that would also randomise our rel_indices buffer
    copy_weights(ref, ours)
    _no_grad_check(ours, ref, torch.randn(2, 16, 48))


@pytest.mark.parametrize("grad", [False, True])
def test_block_compiles_without_graph_breaks(grad):
    """The fused paths (workspace, in-place updates) trace as one graph (eager backend)."""
    ours = Block(48, 3, qkv_bias=True).eval()
    compiled = torch.compile(ours, backend="eager", fullgraph=True)
    x = torch.randn(2, 50, 48)
    with torch.set_grad_enabled(grad):
        assert_close(compiled(x), ours(x), 1e-6, "compiled")


def test_hooks_on_branches_see_branch_outputs():
    """A forward hook on ``attn`` / ``mlp`` sees the branch output (as in timm), not the residual
    stream that the fused path would hand back."""
    ref = TimmBlock(48, 4, qkv_bias=True).eval()
    ours = Block(48, 4, qkv_bias=True).eval()
    copy_weights(ref, ours)
    seen = {}
    for tag, blk in (("ours", ours), ("ref", ref)):
        for part in ("attn", "mlp"):
            getattr(blk, part).register_forward_hook(
                lambda m, i, o, key=(tag, part): seen.__setitem__(key, o.detach().clone()))
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        assert_close(ours(x), ref(x), 1e-5, "hooked block")
    for part in ("attn", "mlp"):
        assert_close(seen["ours", part], seen["ref", part], 1e-5, f"{part} hook output")
