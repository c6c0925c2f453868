"""Where and in which precision vitfer computes: device names and bf16 autocast.

The one place that turns ``"auto"`` into a device or a precision, shared by training
(:mod:`vitfer.engine`), evaluation, prediction (:mod:`vitfer.inference`) and the demo. It depends
on torch alone, so every layer may import it.
"""
from __future__ import annotations

import torch

__all__ = ["autocast", "bf16_is_fast", "resolve_amp", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when there is a GPU, else the CPU) or a torch device string; an unknown
    device or CUDA on a machine without it is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return dev


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds ``device`` up: a CUDA GPU with bf16 support, or a CPU whose
    oneDNN has native bf16 kernels (AVX-512 BF16 / AMX; elsewhere bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`bf16_is_fast`, else ``"none"``; others unchanged."""
    if amp == "auto":
        return "bf16" if bf16_is_fast(device) else "none"
    return amp


def autocast(device: torch.device, amp: str):
    """The autocast context of ``amp`` (``auto`` resolved by :func:`resolve_amp`) on ``device``."""
    amp = resolve_amp(amp, device)
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp != "none":
        raise ValueError(f"amp must be 'auto', 'none' or 'bf16', got {amp!r}")
    return torch.autocast(device.type, enabled=False)
