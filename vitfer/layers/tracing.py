"""Whether the calling code is being traced (torch.fx) or compiled (TorchScript).

Layers use it to keep Python control flow on tensor values out of traced graphs: while tracing,
input checks become ``torch._assert`` nodes (they stay in the graph and run on every call), and the
shape- or device-dependent kernels (attention dispatch, fused residual GEMMs, SAME padding) are
``torch.fx.wrap``-ped functions, so a traced graph calls them as they are and they choose at run
time, exactly as in eager mode.
"""
import torch
import torch.fx

__all__ = ["is_tracing"]


def is_tracing() -> bool:
    """True while ``torch.fx`` symbolically traces the caller (or TorchScript compiles it)."""
    if not torch.jit.is_scripting():  # (TorchScript skips this block, it cannot compile it)
        return torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    return True
