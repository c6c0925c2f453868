"""``vitfer export CKPT OUT.onnx``: ONNX export."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from vitfer.cli._common import positive_int


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX (dynamic batch), checked with onnxruntime",
        description="Write CKPT as an ONNX model (input 'images' (B, C, H, W), output 'logits', dynamic batch; "
        "class names, input size, mean and std in its metadata) and check it against the eager model with "
        "onnxruntime: logits within 1e-4 * max(1, max|ref|). Needs pip install 'vitfer[onnx]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint written by vitfer finetune / vitfer.save / vitfer convert, or a "
                   "run folder (its model.safetensors)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--static-batch", type=positive_int, default=None, metavar="N",
                   help="a fixed batch size instead of a dynamic one")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import vitfer
    from vitfer.inference import resolve_checkpoint
    from vitfer.inference.export import ONNXMismatchError, check_onnx, export_checkpoint

    kw: dict[str, Any] = {"opset": args.opset}
    if args.static_batch:
        kw.update(dynamic_batch=False, batch_size=args.static_batch)
    ckpt = resolve_checkpoint(args.checkpoint)
    out = export_checkpoint(ckpt, args.onnx, **kw)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if not args.no_check:
        try:
            res = check_onnx(vitfer.load(ckpt), out)
        except ONNXMismatchError as e:
            print(f"vitfer export: error: {e}", file=sys.stderr)
            return 1
        print(f"onnxruntime vs eager: max |diff| {res['max_abs_diff']:.2e} (bound {res['bound']:.2e}), "
              f"batch {res['batch']}")
    return 0
