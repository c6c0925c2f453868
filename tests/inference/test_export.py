"""ONNX export (vitfer.inference.export) and torch.compile parity, one small model per family.

Each family's ONNX graph is run by onnxruntime at batch 1 and 3 (the batch is dynamic) and its
logits must lie within ``1e-4 * max(1, max|ref|)`` of eager fp32; ``torch.compile`` must match eager
within the same bound. The measured differences are printed (``pytest -s``) as ``PARITY`` lines.

torch.compile uses ``backend="aot_eager"`` (Dynamo graph capture + AOT functionalisation of the
models' in-place inference paths, without code generation): inductor compiles C++ kernels, about
20 s per small model on 2 cores. ``VITFER_TEST_INDUCTOR=1`` runs the compile tests with inductor.
"""
from __future__ import annotations

import logging
import os
import time
import warnings

import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import vitfer  # noqa: E402
from vitfer.inference import export as ex  # noqa: E402
from vitfer.inference.export import (  # noqa: E402
    ONNXMismatchError,
    check_onnx,
    export_checkpoint,
    export_onnx,
    read_onnx_metadata,
)
from vitfer.models import create_model  # noqa: E402

TOL = 1e-4

# (name, overrides, input_size): small but structurally complete members of each family.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), None),
    # block 0 GPSA, block 1 plain MHSA
    "convit": ("convit_tiny", dict(img_size=32, patch_size=8, depth=2, local_up_to_layer=1), None),
    # two branches at different sizes (48 and 44 px: the bicubic rescale is in the graph), one
    # multi-scale block with its cross-attention fusion
    "crossvit": (
        "crossvit_tiny_240",
        dict(img_size=48, depth=((1, 1, 0),), embed_dim=(48, 96), num_heads=(3, 3)),
        None,
    ),
    # one bottleneck per ResNetV2 stage (StdConv + GroupNorm), one transformer block
    "vit_hybrid": (
        "vit_base_r50_s16_224",
        dict(img_size=32, backbone_layers=(1, 1, 1), depth=1, embed_dim=96, num_heads=3),
        None,
    ),
    "resnet": ("resnet18d", dict(), 32),
    # full vgg16 convolutions, fc1/fc2 at 1/16 width (the 1x1 map at 32 px is pooled up to the
    # 7x7 of the ConvMlp, as timm)
    "vgg": ("vgg16", dict(mlp_ratio=1 / 16), 32),
}

PARITY: list[str] = []


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics/affines (fresh BatchNorms are identities, ResNet zero-inits the
    last BN of each block), so that every branch contributes to the logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def _build(family: str) -> tuple[nn.Module, tuple[int, int, int]]:
    name, kw, size = FAMILIES[family]
    model = _randomize_norms(create_model(name, num_classes=7, **kw)).eval()
    if size is not None:
        model.pretrained_cfg["input_size"] = (model.in_chans, size, size)
    return model, tuple(model.pretrained_cfg["input_size"])


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if PARITY:
        print("\n" + "\n".join(PARITY))


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_parity(family, tmp_path):
    model, size = _build(family)
    impls = {n: m.impl for n, m in model.named_modules() if isinstance(getattr(m, "impl", None), str)}
    t0 = time.perf_counter()
    path = export_onnx(model, tmp_path / f"{family}.onnx")
    t_export = time.perf_counter() - t0
    # the model is left as it was
    assert not model.training
    assert impls == {n: m.impl for n, m in model.named_modules() if isinstance(getattr(m, "impl", None), str)}
    assert [p.name for p in tmp_path.iterdir()] == [f"{family}.onnx"]  # no temporary left behind

    proto = onnx.load(str(path))
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert {d for d, _ in ops} <= {"", "ai.onnx"}, ops  # standard operators only
    assert "Attention" not in {o for _, o in ops}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "images" and out.name == "logits"
    assert isinstance(inp.shape[0], str) and list(inp.shape[1:]) == list(size)

    diffs = []
    g = torch.Generator().manual_seed(2)
    for b in (1, 3):
        x = torch.randn(b, *size, generator=g)
        res = check_onnx(model, path, x, tol_scale=TOL)
        assert res["shape"] == (b, 7)
        assert res["max_abs_diff"] <= TOL * max(1.0, res["max_abs_ref"])
        diffs.append(res["max_abs_diff"])
    PARITY.append(
        f"PARITY onnx    {family:<10} {FAMILIES[family][0]:<22} max|diff| b1={diffs[0]:.2e} b3={diffs[1]:.2e}"
        f" bound={res['bound']:.1e} export={t_export:.1f}s"
    )

    meta = read_onnx_metadata(path)
    assert meta["model"] == FAMILIES[family][0]
    assert meta["input_size"] == list(size) and meta["num_classes"] == 7
    assert meta["mean"] == list(model.pretrained_cfg["mean"]) and meta["std"] == list(model.pretrained_cfg["std"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_compile_parity(family):
    backend = "inductor" if os.environ.get("VITFER_TEST_INDUCTOR") == "1" else "aot_eager"
    model, size = _build(family)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, backend=backend)
        got = compiled(x)
        again = model(x)  # eager afterwards: compiling left no state behind
    torch._dynamo.reset()
    diff = (got - ref).abs().max().item()
    bound = TOL * max(1.0, ref.abs().max().item())
    PARITY.append(
        f"PARITY compile {family:<10} {FAMILIES[family][0]:<22} max|diff|={diff:.2e} bound={bound:.1e} ({backend})"
    )
    assert got.shape == ref.shape and diff <= bound
    torch.testing.assert_close(again, ref, rtol=0, atol=0)


def test_static_batch_and_options(tmp_path):
    model, size = _build("vit")
    path = export_onnx(model, tmp_path / "sub" / "static.onnx", batch_size=2, dynamic_batch=False,
                       metadata={"note": "x"}, class_names=["a", "b", "c", "d", "e", "f", "g"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [2, *size]
    res = check_onnx(model, path)  # default input: random batch of 2 at the file's size
    assert res["batch"] == 2
    meta = read_onnx_metadata(path)
    assert meta["class_names"] == list("abcdefg") and meta["note"] == "x"
    # input_size given explicitly as (H, W): the model's position embeddings fix it, so same size
    path2 = export_onnx(model, tmp_path / "hw.onnx", input_size=size[1:])
    assert read_onnx_metadata(path2)["input_size"] == list(size)


def test_check_onnx_detects_mismatch(tmp_path):
    model, _ = _build("vit")
    path = export_onnx(model, tmp_path / "m.onnx")
    with torch.no_grad():
        model.head.bias.add_(1.0)
    with pytest.raises(ONNXMismatchError, match="differs from eager"):
        check_onnx(model, path)


def test_export_checkpoint_records_preprocessing(tmp_path):
    model, size = _build("vit")
    names = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    ckpt = vitfer.save(model, tmp_path / "m.safetensors", class_names=names)
    path = export_checkpoint(ckpt, tmp_path / "m.onnx")
    meta = read_onnx_metadata(path)
    assert meta["class_names"] == names
    assert meta["input_size"] == list(size)
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.5, 0.5, 0.5]
    assert meta["checkpoint"] == "m.safetensors"
    check_onnx(vitfer.load(ckpt), path)


def test_errors(tmp_path, monkeypatch):
    model, _ = _build("vit")
    with pytest.raises(ValueError, match="channels"):
        export_onnx(model, tmp_path / "a.onnx", input_size=(1, 32, 32))
    with pytest.raises(ValueError, match="batch_size"):
        export_onnx(model, tmp_path / "a.onnx", batch_size=0)
    with pytest.raises(ValueError, match="folder"):
        export_onnx(model, tmp_path)
    bare = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(bare, tmp_path / "a.onnx")

    real = ex.importlib.util.find_spec
    monkeypatch.setattr(ex.importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a))
    with pytest.raises(ImportError, match=r"onnxscript.*pip install 'vitfer\[onnx\]'"):
        export_onnx(model, tmp_path / "a.onnx")
    assert not any(tmp_path.iterdir())


def test_failed_export_leaves_model_and_folder(tmp_path):
    model, _ = _build("vit")
    model.train()
    # a wrong spatial size makes the model's own input check fail inside the exporter
    with pytest.raises(RuntimeError, match="ONNX export of vit_tiny_patch16_224"):
        export_onnx(model, tmp_path / "bad.onnx", input_size=40)
    assert model.training
    assert all(m.impl == "auto" for m in model.modules() if isinstance(getattr(m, "impl", None), str))
    assert not any(tmp_path.iterdir())


def test_non_fp32_model_is_exported_from_a_copy(tmp_path):
    model, _ = _build("convit")
    model.double()
    path = export_onnx(model, tmp_path / "d.onnx")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)"
    check_onnx(model, path)  # float64 reference: fp32 graph within the same bound
