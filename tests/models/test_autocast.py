"""Every family under CPU bf16 autocast: the forward and a backward run, and the logits agree with
timm's under the same autocast to a bf16 bound. (The hand-written attention path computes in the
autocast dtype as the fused kernel does; residual fusions step aside under autocast.)"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from vitfer.models import create_model

MODELS = ["vit_tiny_patch16_224", "convit_tiny", "crossvit_tiny_240", "resnet18d", "vgg16"]


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_matches_timm(name):
    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=7).eval()
    ours = create_model(name, num_classes=7).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    size = ours.pretrained_cfg["input_size"]
    if name == "vgg16":
        size = (3, 64, 64)  # any size: the ConvMlp head pools adaptively
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), ref(x)
    assert got.dtype == want.dtype
    diff = (got.float() - want.float()).abs().max().item()
    tol = 5e-2 * max(1.0, want.float().abs().max().item())
    assert diff <= tol, f"{name}: bf16 logits differ by {diff:.3e} > {tol:.3e}"
    ours.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(ours(x), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)
