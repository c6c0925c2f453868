"""Helpers for numerical parity tests against timm (imported by tests as ``from parity import ...``).

Tolerances follow REFERENCE.md section 4: logits within ``1e-4 * max(1, max|ref|)``, layers
(forward and backward) within ``1e-5``, all in fp32.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

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
