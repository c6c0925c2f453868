"""benchmarks/train_profile.py's measuring parts, on a small model (the benchmark itself runs a
real recipe and is not part of the suite)."""
from __future__ import annotations


import pytest
import torch

from vitfer.layers import set_gemm_backend
from vitfer.models import create_model


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("train_profile")


@pytest.mark.parametrize("backend", ["blas", "onednn"])
def test_matmul_shapes_finds_every_product_of_a_vit_forward(bench, backend):
    """Every block's four projections and two attention products, and the head, whichever path
    (F.linear or the fp32 oneDNN operator) the Linears take."""
    from vitfer.layers import gemm

    if backend == "onednn" and not gemm.onednn_linear_available():
        pytest.skip("no oneDNN linear operator in this torch build")
    model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=7).eval()
    previous = set_gemm_backend(backend)
    try:
        shapes = bench.matmul_shapes(model, torch.randn(4, 3, 32, 32), amp=False)
    finally:
        set_gemm_backend(previous)
    rows = 4 * 17  # 16 patches and the class token
    linears = sorted(s for s in shapes if s[0] == 1 and s[1] == rows)
    assert linears == sorted([(1, rows, 192, 576), (1, rows, 192, 192), (1, rows, 192, 768), (1, rows, 768, 192)] * 2)
    heads = 3  # vit_tiny: 192 wide, 3 heads of 64
    assert sorted(s for s in shapes if s[0] > 1) == sorted([(4 * heads, 17, 64, 17), (4 * heads, 17, 17, 64)] * 2)
    assert (1, 4, 192, 7) in shapes


def test_step_operators_and_rates(bench):
    model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=7)
    ops = bench.step_operators(model, torch.randn(4, 3, 32, 32), amp=False, top=5)
    assert len(ops) == 5 and all(0 < share <= 1 for _, share, _ in ops)
    assert [s for _, s, _ in ops] == sorted((s for _, s, _ in ops), reverse=True)
    assert bench.gemm_rate(1, 64, 64, 64, torch.float32, repeats=2) > 0
    assert bench.gemm_rate(3, 16, 8, 16, torch.float32, repeats=2) > 0
