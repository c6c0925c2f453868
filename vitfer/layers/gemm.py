"""The transformer layers' Linear GEMMs on the CPU: oneDNN instead of the BLAS behind ``F.linear``.

On x86 CPUs PyTorch runs an fp32 ``F.linear`` through its BLAS (MKL). oneDNN, which PyTorch ships
beside it (and uses for its own bf16 GEMMs and convolutions), picks its kernels by instruction set
alone; MKL is known to take slower paths on non-Intel CPUs (not checked here beyond the timings).
On this project's 2-core AMD EPYC (AVX-512) ``benchmarks/gemm_backends.py`` measured, fp32, at the
transformer blocks' shapes: forward 111-190 GFLOP/s through MKL against 160-207 through oneDNN,
and the input gradient ``g W`` 98-185 against 164-210 (the spread is the machine's, from session
to session; oneDNN came out ahead at every shape but the smallest and one tie). A/B in one process,
the same model alternating between the two: ViT-B eval 1.16x, convit_tiny training 1.09x,
vit_tiny eval 1.03x / training 1.06x.

So, on the CPU in fp32, the layers' hot Linears (attention projections, the MLP, the residual
branches' output GEMMs) call oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, which
``torch.compile`` emits on the CPU when it freezes weights); a residual add and the MLP's GELU follow in place at
inference (oneDNN's post-ops measured no faster). In training a small autograd function gives the
same kernel to the input gradient ``g W``; the weight gradient stays with ``torch.mm`` (oneDNN was
slower there). Results differ from BLAS by float rounding (about 1e-7 relative), within the
parity tolerances against timm.

Where it does not apply the plain ``F.linear`` runs: other devices and dtypes, autocast (PyTorch's
bf16 GEMMs already use oneDNN), ``torch.compile`` / export / ``torch.jit.trace``, tiny GEMMs (a
classifier head: the call costs more than it saves), and builds without the operator.

``VITFER_GEMM=blas`` (read at import) or :func:`set_gemm_backend` turns it off; ``"onednn"``
forces it on where the operator exists (the default, ``"auto"``, uses it on x86-64 only).
"""

import os
import platform
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._compile import is_compiling

__all__ = ["GEMM_BACKENDS", "gemm_backend", "set_gemm_backend", "onednn_linear_available", "uses_onednn", "linear"]

GEMM_BACKENDS = ("auto", "onednn", "blas")

# Below these sizes the oneDNN call's fixed cost outweighs its faster kernel (measured: a 16 x 192
# -> 7 head ran at 1.6 GFLOP/s through oneDNN, 4.1 through MKL).
_MIN_ROWS = 64
_MIN_WEIGHT = 64 * 64


def _find_op():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_OP = _find_op()


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear operator."""
    return _OP is not None


def _resolve(backend: str) -> bool:
    if backend not in GEMM_BACKENDS:
        raise ValueError(f"GEMM backend must be one of {GEMM_BACKENDS}, got {backend!r}")
    if backend == "blas" or _OP is None:
        return False
    if backend == "onednn":
        return True
    return platform.machine().lower() in ("x86_64", "amd64")


_backend = os.environ.get("VITFER_GEMM", "auto").strip().lower() or "auto"
if _backend not in GEMM_BACKENDS:
    raise ValueError(f"VITFER_GEMM must be one of {GEMM_BACKENDS}, got {_backend!r}")
_enabled = _resolve(_backend)


def gemm_backend() -> str:
    """The backend in use for the layers' CPU fp32 Linears: ``"onednn"`` or ``"blas"``."""
    return "onednn" if _enabled else "blas"


def set_gemm_backend(backend: str) -> str:
    """Choose the backend (``"auto"``, ``"onednn"``, ``"blas"``); returns the previous one in use."""
    global _enabled
    previous = gemm_backend()
    _enabled = _resolve(backend)
    return previous


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`linear` sends this GEMM to oneDNN."""
    if not _enabled or torch.jit.is_tracing() or is_compiling():
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and x.dim() >= 2
        and x.numel() >= _MIN_ROWS * x.shape[-1]
        and weight.numel() >= _MIN_WEIGHT
        and not torch.is_autocast_enabled("cpu")
    )


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias) (+ residual)`` for 2-D ``x``, oneDNN forward and input gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = _OP(x, weight, bias, "none", [], "")
        return out if residual is None else out.add_(residual)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _OP(g, weight.t(), None, "none", [], "")  # g @ W
        if ctx.needs_input_grad[1]:
            gw = g.t().mm(x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        gr = g if ctx.needs_input_grad[3] else None
        return gx, gw, gb, gr


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``, or ``residual + F.linear(x, weight, bias)``, through oneDNN
    where :func:`uses_onednn` says so, else through ``F.linear``.

    Args:
        x: (..., in_features).
        weight: (out_features, in_features).
        residual: (..., out_features), added to the result (not modified).
    """
    if not uses_onednn(x, weight) or (residual is not None and residual.dtype != torch.float32):
        out = F.linear(x, weight, bias)
        return out if residual is None else residual + out
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    r2 = None if residual is None else residual.reshape(-1, weight.shape[0])
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual)):
        out = _OneDNNLinear.apply(x2, weight, bias, r2)
    else:
        out = _OP(x2, weight, bias, "none", [], "")
        if r2 is not None:
            # the add in place after the GEMM: as fast as oneDNN's binary post-op or faster at the
            # blocks' shapes (benchmarks/gemm_backends.py), and the same for the GELU post-op
            out.add_(r2)
    return out.view(*lead, weight.shape[0])
