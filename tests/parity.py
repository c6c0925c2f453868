"""Helpers for numerical parity tests against timm (imported by tests as ``from parity import ...``).

Tolerances follow REFERENCE.md section 4: logits within ``1e-4 * max(1, max|ref|)``, layers
(forward and backward) within ``1e-5``, all in fp32.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitfer.models import create_model

LAYER_ATOL = 1e-5


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a.detach().double() - b.detach().double()).abs().max().item()


def logits_tol(ref: Tensor) -> float:
    return 1e-4 * max(1.0, ref.detach().abs().max().item())


def assert_logits_close(ours: Tensor, ref: Tensor, what: str = "logits") -> float:
    """Assert ``max|ours - ref| <= 1e-4 * max(1, max|ref|)`` and return the difference."""
    diff = max_abs_diff(ours, ref)
    tol = logits_tol(ref)
    assert diff <= tol, f"{what}: max abs diff {diff:.3e} > tol {tol:.3e}"
    return diff


def assert_close(ours: Tensor, ref: Tensor, atol: float = LAYER_ATOL, what: str = "output") -> float:
    diff = max_abs_diff(ours, ref)
    assert diff <= atol, f"{what}: max abs diff {diff:.3e} > {atol:.1e}"
    return diff


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s state dict into ``dst`` strictly (key sets and shapes must agree)."""
    sd = src.state_dict()
    dst_keys = set(dst.state_dict())
    missing = sorted(dst_keys - set(sd))
    unexpected = sorted(set(sd) - dst_keys)
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    dst.load_state_dict(sd, strict=True)


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Give every parameter and float buffer (BN statistics included) non-trivial random values.

    Norm weights around 1, biases / other parameters small random, running_var positive.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1 and name.endswith("weight"):
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.add_(torch.randn(t.shape, generator=g) * std)
    return module


def check_forward_backward(
    ours: nn.Module,
    ref: nn.Module,
    inputs: Iterable[Tensor],
    atol: float = LAYER_ATOL,
    param_map: Optional[dict[str, str]] = None,
) -> dict[str, float]:
    """Run both modules on the same inputs, backprop the same random cotangent, compare.

    Compares the outputs, the input gradients and every parameter gradient (parameters are
    matched by name, or through ``param_map`` ours -> ref). Returns the max differences.
    """
    xs_ours = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    xs_ref = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out_o = ours(*xs_ours)
    out_r = ref(*xs_ref)
    res = {"out": assert_close(out_o, out_r, atol, "forward")}
    cot = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(1))
    out_o.backward(cot)
    out_r.backward(cot)
    for i, (a, b) in enumerate(zip(xs_ours, xs_ref)):
        if a.grad is not None or b.grad is not None:
            res[f"input{i}.grad"] = assert_close(a.grad, b.grad, atol, f"grad of input {i}")
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        rname = (param_map or {}).get(name, name)
        assert rname in ref_params, f"parameter {name} has no counterpart {rname} in the reference"
        q = ref_params[rname]
        if p.grad is None and q.grad is None:
            continue
        assert p.grad is not None and q.grad is not None, f"gradient of {name} missing on one side"
        res[f"{name}.grad"] = assert_close(p.grad, q.grad, atol, f"grad of {name}")
    return res


# -- CNN / hybrid helpers (ResNet-D, VGG, ViT-R50) ------------------------------------------

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


def assert_same_state_dict_layout(ours, ref, ordered: bool = True) -> None:
    """Same state-dict names (in the same order unless ``ordered=False``) and shapes as timm's."""
    a, b = ours.state_dict(), ref.state_dict()
    assert (list(a) == list(b)) if ordered else (sorted(a) == sorted(b)), sorted(set(a) ^ set(b))[:10]
    assert all(a[k].shape == b[k].shape for k in a)
