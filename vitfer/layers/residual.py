"""Residual branches that end in a Linear, computed without the separate residual add.

A transformer block ends each branch with ``x + linear(h)``. Written as written, that is one GEMM
into a fresh output (whose bias is first copied into it), then an add that reads both and writes a
third tensor. Here the residual is the GEMM's accumulator instead (``addmm`` with ``beta=1``) and
the bias is added in place: one output fewer and one memory pass fewer per branch. When no gradient
is needed and the caller owns the residual, the GEMM accumulates straight into it. The activation
between ``fc1`` and ``fc2`` likewise runs in place when no gradient is needed.

Fresh multi-MiB outputs are not free on the CPU: each comes from ``mmap`` and costs a page fault
per 4 KiB. Measured on vit_tiny at batch 8 (2 cores): these fusions take the forward from about
0.9x to about 1.06x timm's speed; ViT-B about 1.04x.

Under autocast the plain path is taken (``addmm`` would otherwise run, and leave the residual
stream, in the low-precision dtype). Where :mod:`vitfer.layers.gemm` sends the GEMM to oneDNN (CPU,
fp32), its kernel takes no accumulator: the residual is added in place after it (into the residual
itself when the caller allows), which measured as fast as oneDNN's own residual post-op.
"""

from typing import Optional

import torch
import torch.fx
from torch import Tensor, nn

from . import gemm
from .tracing import is_tracing

__all__ = [
    "act_inplace_if_no_grad", "activation", "branch_output", "call_linear", "fused_linear_residual", "has_hooks",
    "linear_residual", "no_grad_needed",
]


def no_grad_needed(*tensors: Tensor) -> bool:
    """True when autograd will not record an op on these tensors (grad mode off, or none of them
    requires grad), so that an in-place update is invisible to any backward."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def has_hooks(*modules: nn.Module) -> bool:
    """True when forward hooks (module-level or global) could observe these modules' outputs: a
    block then runs its branches unfused, so that a hook on ``attn`` or ``mlp`` sees the branch
    output and not the residual stream."""
    g = nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _fusable(x: Tensor, weight: Tensor, residual: Tensor) -> bool:
    return (
        residual.dtype == x.dtype == weight.dtype
        and residual.shape[-1] == weight.shape[0]
        and residual.shape[:-1] == x.shape[:-1]
        and residual.is_contiguous()
        and not torch.is_autocast_enabled(x.device.type)
    )


def fused_linear_residual(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Tensor, inplace: bool = False
) -> Tensor:
    """``residual + F.linear(x, weight, bias)`` with the residual as the GEMM's accumulator where
    possible (see :func:`linear_residual`). One node under torch.fx: the choice is made at run time
    (a scripted traced graph adds plainly)."""
    if torch.jit.is_scripting():
        return residual + torch.nn.functional.linear(x, weight, bias)
    return _fused_linear_residual(x, weight, bias, residual, inplace)


def _fused_linear_residual(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Tensor, inplace: bool
) -> Tensor:
    if not _fusable(x, weight, residual):
        return residual + torch.nn.functional.linear(x, weight, bias)
    params = (weight,) if bias is None else (weight, bias)
    inplace = inplace and no_grad_needed(x, residual, *params)
    if gemm.uses_onednn(x, weight):  # oneDNN's GEMM, then the add (in place where allowed)
        return residual.add_(gemm.linear(x, weight, bias)) if inplace else gemm.linear(x, weight, bias, residual)
    x2 = x.reshape(-1, x.shape[-1])
    r2 = residual.view(-1, residual.shape[-1])
    if inplace:
        r2.addmm_(x2, weight.t())
        out = residual
    else:
        out = torch.addmm(r2, x2, weight.t()).view(residual.shape)
    if bias is not None:
        out.add_(bias)  # addmm's backward does not need its output: in place is fine
    return out


def act_inplace_if_no_grad(h: Tensor, kind: str, approximate: str = "none") -> Tensor:
    """GELU (``kind="gelu"``) or ReLU of ``h``, in place when no gradient is needed (``h`` is a
    fresh intermediate of the caller). One node under torch.fx."""
    if not torch.jit.is_scripting():
        if no_grad_needed(h):
            return torch.ops.aten.gelu_(h, approximate=approximate) if kind == "gelu" else h.relu_()
    return torch.nn.functional.gelu(h, approximate=approximate) if kind == "gelu" else torch.relu(h)


torch.fx.wrap("fused_linear_residual")
torch.fx.wrap("act_inplace_if_no_grad")


def call_linear(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear(x)`` for a layer's own ``nn.Linear``: through :func:`vitfer.layers.gemm.linear`
    (oneDNN on the CPU in fp32), or as a module call while torch.fx traces or a hook watches it."""
    if is_tracing() or has_hooks(linear):
        return linear(x)
    return gemm.linear(x, linear.weight, linear.bias)


def linear_residual(x: Tensor, linear: nn.Linear, residual: Tensor, inplace: bool = False) -> Tensor:
    """``residual + linear(x)``.

    Args:
        x: (..., in_features).
        linear: the branch's last Linear.
        residual: (..., out_features), the block's input stream.
        inplace: the caller owns ``residual`` and allows it to be overwritten; honoured only when
            no gradient is needed (see :func:`no_grad_needed`), otherwise a new tensor is returned.
    """
    return fused_linear_residual(x, linear.weight, linear.bias, residual, inplace)


def branch_output(
    x: Tensor, linear: nn.Linear, drop: nn.Module, residual: Optional[Tensor] = None, inplace: bool = False
) -> Tensor:
    """The end of a residual branch: ``drop(linear(x))``, or ``residual + drop(linear(x))`` with
    the residual fused into the GEMM where the dropout is inactive (see :func:`linear_residual`
    for ``inplace``)."""
    if residual is None:
        return drop(linear(x))
    if drop.training and getattr(drop, "p", 0.0) > 0.0:
        return residual + drop(linear(x))
    return linear_residual(x, linear, residual, inplace=inplace)


def activation(act: nn.Module, h: Tensor) -> Tensor:
    """``act(h)``, in place on ``h`` (a fresh intermediate the caller owns) for exact GELU/ReLU
    when no gradient is needed."""
    if type(act) is nn.GELU:
        return act_inplace_if_no_grad(h, "gelu", act.approximate)
    if type(act) is nn.ReLU:
        return act_inplace_if_no_grad(h, "relu")
    return act(h)
