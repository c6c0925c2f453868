"""Export vitfer models to ONNX and check the exported graph against eager PyTorch.

    from vitfer.inference.export import export_onnx, export_checkpoint, check_onnx

    path = export_onnx(model, "model.onnx")          # input "images" (B, C, H, W), output "logits"
    check_onnx(model, path)                          # onnxruntime vs eager, raises on a mismatch
    export_checkpoint("run/best.safetensors", "model.onnx")   # + class names, mean/std in metadata

The export uses PyTorch's ``torch.export``-based exporter (``torch.onnx.export(dynamo=True)``),
which needs ``onnx`` and ``onnxscript``; checking needs ``onnxruntime``. They are the optional extra
``onnx`` (``pip install 'vitfer[onnx]'``) and are imported only when used.

Attention: during the export every attention layer is switched to ``impl="sdpa"`` (and restored
afterwards). The exporter decomposes PyTorch's fused kernel into plain ``MatMul`` / ``Softmax``
nodes (no ONNX ``Attention`` op below opset 23), so the graph runs on any ONNX runtime. The
hand-written CPU path (``impl="manual"``) is not exportable with a dynamic batch: it loops over the
images of the batch in Python to keep each chunk's scores in cache, so a traced graph would be
specialised to the example's batch size (the exporter silently makes the input static), and
the older TorchScript exporter mistranslates its in-place ``out=`` kernels. Numerically both paths
compute ``softmax(q k^T * scale) v`` in fp32.

The batch dimension is dynamic by default (named ``"batch"``). ``torch.export`` specialises a
dimension of size 1, so a dynamic export traces with an example batch of at least 2.

Every exported file records in its ``metadata_props`` what a consumer needs to preprocess:
``vitfer.model``, ``vitfer.num_classes``, ``vitfer.class_names`` (JSON list or ``null``),
``vitfer.input_size`` (JSON ``[C, H, W]``), ``vitfer.mean``, ``vitfer.std`` (JSON lists),
``vitfer.interpolation``, ``vitfer.crop_pct`` and ``vitfer.version``; :func:`read_onnx_metadata`
reads them back decoded.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ONNXMismatchError",
    "export_onnx",
    "export_checkpoint",
    "check_onnx",
    "onnx_metadata",
    "read_onnx_metadata",
]

PathLike = Union[str, os.PathLike]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
_MIN_TORCH = "2.6"
_EXTRA_HINT = "pip install 'vitfer[onnx]'"
_META_PREFIX = "vitfer."


class ONNXMismatchError(AssertionError):
    """onnxruntime's logits differ from eager PyTorch's by more than the tolerance."""


def _require(*modules: str, purpose: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"{purpose} needs the optional package(s) {', '.join(missing)}: {_EXTRA_HINT}"
        )


def _resolve_input_size(model: nn.Module, input_size: Any) -> tuple[int, int, int]:
    """(C, H, W) from ``input_size`` (int, (H, W) or (C, H, W)) or the model's pretrained_cfg."""
    in_chans = getattr(model, "in_chans", None)
    if input_size is None:
        pcfg = getattr(model, "pretrained_cfg", None) or {}
        input_size = pcfg.get("input_size")
        if input_size is None:
            raise ValueError(
                f"{type(model).__name__} has no pretrained_cfg['input_size']; pass input_size=(C, H, W)"
            )
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        if in_chans is None:
            raise ValueError(f"input_size {size} gives no channel count and the model has no in_chans; pass (C, H, W)")
        size = (int(in_chans), *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be an int, (H, W) or (C, H, W) of positive sizes, got {input_size!r}")
    if in_chans is not None and size[0] != int(in_chans):
        raise ValueError(f"input_size {size} has {size[0]} channels but the model takes {in_chans}")
    return size  # type: ignore[return-value]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Tensor):
        return v.tolist()
    return v


def onnx_metadata(model: nn.Module, input_size: Optional[Sequence[int]] = None,
                  class_names: Optional[Sequence[str]] = None) -> dict[str, str]:
    """The ``metadata_props`` that :func:`export_onnx` writes for ``model`` (strings; JSON where
    structured). ``class_names`` defaults to ``model.class_names`` (set by :func:`vitfer.load`)."""
    pcfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    size = list(input_size) if input_size is not None else _jsonable(pcfg.get("input_size"))
    try:
        from vitfer import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    num_classes = getattr(model, "num_classes", pcfg.get("num_classes"))
    fields = {
        "model": getattr(model, "model_name", "") or type(model).__name__,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "input_size": [int(s) for s in size] if size is not None else None,
        "mean": _jsonable(pcfg.get("mean")),
        "std": _jsonable(pcfg.get("std")),
        "interpolation": pcfg.get("interpolation"),
        "crop_pct": pcfg.get("crop_pct"),
        "version": str(version),
    }
    return {_META_PREFIX + k: json.dumps(v) for k, v in fields.items()}


def read_onnx_metadata(path: PathLike) -> dict[str, Any]:
    """The metadata of an exported file: vitfer's ``vitfer.*`` entries JSON-decoded, under their
    names without the prefix (``class_names``, ``input_size``, ``mean``, ...); any other entry
    (``metadata=`` of :func:`export_onnx`) as its string, under its own key."""
    _require("onnx", purpose="reading ONNX metadata")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in proto.metadata_props:
        if p.key.startswith(_META_PREFIX):
            try:
                out[p.key[len(_META_PREFIX):]] = json.loads(p.value)
            except ValueError:
                out[p.key[len(_META_PREFIX):]] = p.value
        else:
            out.setdefault(p.key, p.value)
    return out


def _attn_impls(model: nn.Module) -> dict[nn.Module, str]:
    return {m: m.impl for m in model.modules() if m is not model and isinstance(getattr(m, "impl", None), str)}


def _clear_caches(model: nn.Module) -> None:
    """Drop per-module caches (StdConv2d's standardised weight) so that nothing computed while
    tracing outlives the export and the graph derives everything from the parameters."""
    for m in model.modules():
        fn = getattr(m, "clear_cache", None)
        if callable(fn):
            fn()


def export_onnx(
    model: nn.Module,
    path: PathLike,
    *,
    input_size: Any = None,
    batch_size: int = 1,
    opset: Optional[int] = None,
    dynamic_batch: bool = True,
    class_names: Optional[Sequence[str]] = None,
    metadata: Optional[Mapping[str, str]] = None,
) -> Path:
    """Export ``model`` to an ONNX file: input ``"images"`` (B, C, H, W) float32, output
    ``"logits"`` (B, num_classes).

    The model is exported in eval mode on the CPU, in fp32, with its attention layers on
    ``impl="sdpa"`` (see the module docstring); its mode and attention settings are restored
    afterwards (a model on another device or in another dtype is exported from a CPU fp32 copy).
    The file is written atomically (a temporary file in the same folder, then ``os.replace``).

    Args:
        model: a vitfer model (any ``nn.Module`` taking one image batch works).
        path: the ``.onnx`` file to write (parent folders are created).
        input_size: int, (H, W) or (C, H, W); defaults to ``model.pretrained_cfg["input_size"]``.
        batch_size: the example batch (the fixed batch when ``dynamic_batch=False``).
        opset: ONNX opset (default :data:`DEFAULT_OPSET`, 18).
        dynamic_batch: make the batch dimension dynamic (named ``"batch"``).
        class_names: recorded in the metadata (default ``model.class_names`` when present).
        metadata: extra ``metadata_props`` (string keys and values), added after vitfer's own.

    Returns:
        the path written.

    Raises:
        ImportError: ``onnx`` / ``onnxscript`` are missing (``pip install 'vitfer[onnx]'``).
        ValueError: bad arguments.
        RuntimeError: the export failed, or the exported batch dimension is not dynamic.
    """
    _require("onnx", "onnxscript", purpose="ONNX export")
    if torch.__version__ < _MIN_TORCH:
        raise ImportError(
            f"ONNX export needs torch>={_MIN_TORCH} (its torch.export-based exporter), found {torch.__version__}"
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < 18:
        raise ValueError(f"opset must be >= 18 for PyTorch's ONNX exporter, got {opset}")
    size = _resolve_input_size(model, input_size)
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the .onnx file to write")
    path.parent.mkdir(parents=True, exist_ok=True)

    example_batch = max(batch_size, 2) if dynamic_batch else batch_size
    x = torch.randn(example_batch, *size, generator=torch.Generator().manual_seed(0))
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None

    # A model already on the CPU in fp32 is exported in place (its mode and attention settings
    # are restored afterwards); any other is exported from a CPU fp32 copy, leaving it untouched.
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors):
        work = model
    else:
        work = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    was_training = work.training
    impls = _attn_impls(work)
    try:
        work.eval()
        for m in impls:
            m.impl = "sdpa"
        _clear_caches(work)
        try:
            program = torch.onnx.export(
                work, (x,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamo=True, verbose=False, dynamic_shapes=dynamic_shapes, external_data=False,
            )
        except Exception as e:  # the exporter raises a variety of types
            name = getattr(model, "model_name", "") or type(model).__name__
            raise RuntimeError(f"ONNX export of {name} at input {size} failed: {type(e).__name__}: {e}") from e
        proto = program.model_proto
    finally:
        for m, impl in impls.items():
            m.impl = impl
        _clear_caches(work)
        work.train(was_training)

    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if dynamic_batch and not dim0.dim_param:
        raise RuntimeError(
            f"the exported batch dimension is static ({dim0.dim_value}): the model's forward depends on the batch size"
        )
    props = onnx_metadata(model, size, class_names)
    if metadata:
        props.update({str(k): str(v) for k, v in metadata.items()})
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)

    # A temporary file beside the target, moved into place: created with mode 0666 less the umask,
    # as a plain open() would (tempfile.mkstemp's 0600 would leave the model unreadable to others).
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def export_checkpoint(ckpt_path: PathLike, out_path: PathLike, **kw: Any) -> Path:
    """Load a vitfer checkpoint (:func:`vitfer.load`; a run folder: its ``model.safetensors``) and
    export it with :func:`export_onnx` (keyword arguments are passed on). The file's metadata records
    the checkpoint's class names, input size, mean / std, interpolation and crop_pct, so a consumer
    can preprocess."""
    from vitfer.weights import load

    from .checkpoint import resolve_checkpoint

    ckpt_path = resolve_checkpoint(ckpt_path)
    model = load(ckpt_path, map_location="cpu")
    meta = {"vitfer.checkpoint": json.dumps(Path(ckpt_path).name)}
    meta.update(kw.pop("metadata", None) or {})
    return export_onnx(model, out_path, metadata=meta, **kw)


def check_onnx(
    model: nn.Module,
    path: PathLike,
    x: Optional[Tensor] = None,
    *,
    tol_scale: float = 1e-4,
) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime (CPU) and compare its logits with ``model``'s (eager,
    eval mode, no grad).

    Args:
        model: the model that was exported, run where it is, in its own dtype (exact parity is
            expected for a CPU fp32 model; pass a larger ``tol_scale`` for others).
        path: the ONNX file.
        x: the input batch; default a random batch (seed 0) of the file's input size: of the file's
            batch size when it is static (``dynamic_batch=False``), else of 2.
        tol_scale: the bound is ``tol_scale * max(1, max|ref|)``.

    Returns:
        dict with ``max_abs_diff``, ``bound``, ``max_abs_ref``, ``batch`` and ``shape``.

    Raises:
        ImportError: onnxruntime is missing (``pip install 'vitfer[onnx]'``).
        ONNXMismatchError: shapes differ or the difference exceeds the bound.
    """
    _require("onnxruntime", purpose="checking an ONNX export")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if x is None:
        shape = [d if isinstance(d, int) else None for d in sess.get_inputs()[0].shape]
        if any(d is None for d in shape[1:]):
            raise ValueError(f"{path}: input shape {sess.get_inputs()[0].shape} is not static beyond the batch; pass x")
        batch = shape[0] if shape[0] is not None and shape[0] >= 1 else 2
        x = torch.randn(batch, *shape[1:], generator=torch.Generator().manual_seed(0))
    x = x.detach().float().cpu()
    was_training = model.training
    param = next(iter(model.parameters()), None)
    dev = param.device if param is not None else torch.device("cpu")
    dt = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            ref = model(x.to(dev, dt)).float().cpu().numpy()
    finally:
        model.train(was_training)
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != ref.shape:
        raise ONNXMismatchError(f"{path}: onnxruntime gives shape {got.shape}, eager {ref.shape}")
    import numpy as np

    max_ref = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    bound = float(tol_scale) * max(1.0, max_ref)
    res = {"max_abs_diff": diff, "bound": bound, "max_abs_ref": max_ref, "batch": int(x.shape[0]),
           "shape": tuple(got.shape)}
    if not np.isfinite(diff) or diff > bound:
        raise ONNXMismatchError(f"{path}: onnxruntime differs from eager by {diff:.3g} > {bound:.3g} ({res})")
    return res
