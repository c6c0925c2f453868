"""``vitfer demo CKPT [CKPT ...]``: a local web page to try checkpoints on photos and the webcam."""
from __future__ import annotations

import argparse
import sys
import time

from vitfer.cli._common import positive_int


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {v}")
    return v


def add_demo(sub: argparse._SubParsersAction) -> None:
    from vitfer.demo.core import MAX_FACES, MAX_FILE_BYTES, MAX_SIDE

    p = sub.add_parser(
        "demo", help="a local web page (Gradio) to try checkpoints on photos and webcam snapshots",
        description="Serve a page where a photo or a webcam snapshot is classified by every CHECKPOINT, one "
        "column a model: each face found (OpenCV's Haar cascade) boxed and labelled, the chosen face's class "
        "probabilities as a bar chart, and its attention map (rollout for ViT and the hybrid, rollout through "
        "GPSA for ConViT, class-token cross-attention for CrossViT, Grad-CAM for CNNs). Example photos of synthetic "
        "faces drawn by vitfer run with one click. Binds 127.0.0.1, shares "
        f"nothing, sends no telemetry; uploads are capped at {MAX_FILE_BYTES // 2**20} MB. Needs the demo extra: "
        "pip install 'vitfer[demo]'. Ctrl+C stops it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoints written by vitfer finetune / vitfer.save (several: compared side by side)")
    p.add_argument("--port", type=_port, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but 127.0.0.1 / localhost makes the page reachable from other "
                   "machines")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    p.add_argument("--max-side", type=positive_int, default=MAX_SIDE,
                   help="photos with a longer side are downscaled to this many pixels")
    p.add_argument("--max-faces", type=positive_int, default=MAX_FACES, help="faces classified a photo (the largest)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from vitfer.demo import import_gradio, launch, load_models

    import_gradio()  # fail first, naming the extra, when Gradio is missing
    if args.max_side < 32:
        raise ValueError(f"--max-side must be at least 32 pixels, got {args.max_side}")
    predictors = load_models(args.checkpoints, device=args.device)  # a bad file fails before any server starts
    app, url = launch(args.checkpoints, host=args.host, port=args.port, predictors=predictors,
                      max_side=args.max_side, max_faces=args.max_faces)
    names = ", ".join(str(c) for c in args.checkpoints)
    print(f"vitfer demo: {len(predictors)} model(s) ({names}) on {url}  (Ctrl+C stops)", flush=True)
    try:
        while app.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("vitfer demo: stopping", file=sys.stderr)
    finally:
        app.close(verbose=False)
    return 0
