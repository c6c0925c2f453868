"""The layers' CPU GEMMs through oneDNN (vitfer.layers.gemm): the same numbers as ``F.linear``
within float rounding, forward and backward, the plain path wherever it does not apply, the
switch, and the layers really taking it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from parity import assert_close

from vitfer.layers import Block, gemm, gemm_backend, set_gemm_backend
from vitfer.models import create_model

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture
def onednn():
    set_gemm_backend("onednn" if gemm.onednn_linear_available() else "blas")
    yield
    set_gemm_backend("auto")


def test_onednn_is_the_default_on_x86():
    """PyTorch's x86 builds (CPU and CUDA wheels) ship oneDNN's linear: the fast path must not
    silently go missing on the machines it was measured on."""
    if not X86:
        assert gemm_backend() == "blas"
        return
    assert gemm.onednn_linear_available(), "this PyTorch build has no torch.ops.mkldnn._linear_pointwise"
    assert os.environ.get("VITFER_GEMM", "auto") != "auto" or gemm_backend() == "onednn"


def _operands(bias=True, rows=(4, 50), k=96, n=128, grad=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*rows, k, generator=g)
    w = torch.randn(n, k, generator=g) * k**-0.5
    b = torch.randn(n, generator=g) if bias else None
    r = torch.randn(*rows, n, generator=g)
    if grad:
        for t in (x, w, b, r):
            if t is not None:
                t.requires_grad_()
    return x, w, b, r


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_forward_matches_f_linear(onednn, bias, residual):
    x, w, b, r = _operands(bias)
    assert gemm.uses_onednn(x, w) == gemm.onednn_linear_available()
    r0 = r.clone()
    with torch.no_grad():
        out = gemm.linear(x, w, b, residual=r if residual else None)
    want = F.linear(x, w, b) + (r0 if residual else 0)
    assert out.shape == want.shape == (4, 50, 128)
    assert_close(out, want, 1e-5, "oneDNN linear")
    assert torch.equal(r, r0), "the residual is not modified"


@pytest.mark.parametrize("residual", [False, True])
def test_backward_matches_f_linear(onednn, residual):
    x, w, b, r = _operands(grad=True)
    cot = torch.randn(4, 50, 128)
    out = gemm.linear(x, w, b, residual=r if residual else None)
    if gemm.onednn_linear_available():
        assert "OneDNN" in type(out.grad_fn.next_functions[0][0]).__name__, "the oneDNN autograd function ran"
    out.backward(cot)
    got = {k: t.grad.clone() for k, t in zip("xwbr", (x, w, b, r)) if t.grad is not None}
    for t in (x, w, b, r):
        t.grad = None
    (F.linear(x, w, b) + (r if residual else 0)).backward(cot)
    want = {k: t.grad for k, t in zip("xwbr", (x, w, b, r)) if t.grad is not None}
    assert got.keys() == want.keys()
    for k in want:
        assert_close(got[k], want[k], 1e-4, f"gradient of {k}")
    assert got["w"].is_contiguous() or w.grad is None


def test_only_the_needed_gradients_are_computed(onednn):
    x, w, b, _ = _operands()
    w.requires_grad_()
    gemm.linear(x, w, b).sum().backward()
    assert w.grad is not None and x.grad is None and b.grad is None


def _plain(x, w, b, r=None):
    out = F.linear(x, w, b)
    return out if r is None else r + out


@pytest.mark.parametrize("case", ["blas", "small rows", "small weight", "bf16", "autocast", "jit.trace"])
def test_plain_path_where_it_does_not_apply(onednn, case):
    x, w, b, _ = _operands()
    if case == "blas":
        set_gemm_backend("blas")
    elif case == "small rows":
        x = x[:1, :10]
    elif case == "small weight":
        w, b = w[:8, :], b[:8]
    elif case == "bf16":
        x, w, b = x.bfloat16(), w.bfloat16(), b.bfloat16()
    assert not gemm.uses_onednn(x, w) or case in ("autocast", "jit.trace")
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not gemm.uses_onednn(x, w)
            assert torch.equal(gemm.linear(x, w, b), _plain(x, w, b))
        return
    if case == "jit.trace":
        traced = torch.jit.trace(lambda a: gemm.linear(a, w, b), (x,))
        assert "mkldnn" not in str(traced.graph)
        assert torch.equal(traced(x), _plain(x, w, b))
        return
    assert torch.equal(gemm.linear(x, w, b), _plain(x, w, b))


def test_set_gemm_backend_checks_its_argument():
    with pytest.raises(ValueError, match="GEMM backend must be one of"):
        set_gemm_backend("mkl")
    assert set_gemm_backend("auto") == gemm_backend()


@pytest.mark.parametrize("value, expect", [("blas", "blas"), ("BLAS", "blas"), ("bogus", "error")])
def test_environment_variable(value, expect):
    code = "from vitfer.layers import gemm_backend; print(gemm_backend())"
    env = {**os.environ, "VITFER_GEMM": value}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if expect == "error":
        assert res.returncode != 0 and "VITFER_GEMM must be one of" in res.stderr
    else:
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == expect


def _profiled_ops(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_blocks_take_the_onednn_path_in_eval_and_training(onednn):
    if not gemm.onednn_linear_available():
        pytest.fail("no oneDNN linear in this build")
    blk = Block(96, 4, qkv_bias=True)
    x = torch.randn(2, 40, 96)
    with torch.no_grad():
        ops = _profiled_ops(lambda: blk.eval()(x))
    assert "mkldnn::_linear_pointwise" in ops and "aten::addmm" not in ops
    blk.train()
    ops = _profiled_ops(lambda: blk(x).sum().backward())
    assert "mkldnn::_linear_pointwise" in ops and "aten::addmm" not in ops
    set_gemm_backend("blas")
    with torch.no_grad():
        ops = _profiled_ops(lambda: blk.eval()(x))
    assert "mkldnn::_linear_pointwise" not in ops


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convit_tiny", "crossvit_tiny_240"])
def test_models_give_the_same_numbers_on_both_backends(name):
    """Logits, features and a training step's gradients: oneDNN against BLAS, fp32."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, depth=2) if not name.startswith("crossvit") else \
        create_model(name, num_classes=7)
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    y = torch.tensor([1, 5])
    out = {}
    try:
        for backend in ("blas", "onednn"):
            set_gemm_backend(backend)
            model.eval()
            with torch.no_grad():
                logits, feats = model(x), model.forward_features(x)
            model.train()
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
            out[backend] = (logits, feats, grads)
    finally:
        set_gemm_backend("auto")
    assert_close(out["onednn"][0], out["blas"][0], 1e-4, f"{name} logits")
    f1, f0 = out["onednn"][1], out["blas"][1]
    for a, b in zip(f1, f0) if isinstance(f0, list) else [(f1, f0)]:  # CrossViT: a list, a branch each
        assert_close(a, b, 1e-5, f"{name} features")
    g1, g0 = out["onednn"][2], out["blas"][2]
    assert g1.keys() == g0.keys()
    for k in g0:
        assert_close(g1[k], g0[k], 1e-4 * max(1.0, g0[k].abs().max().item()), f"{name} grad {k}")


def test_convit_tokens_reach_the_gpsa_blocks_in_token_order():
    """The patch embedding's transposed view is made contiguous once, so the GPSA blocks'
    residual stream is in (B, N, D) order (else every block's LayerNorm copies it)."""
    model = create_model("convit_tiny", num_classes=7).eval()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert seen == [True]
