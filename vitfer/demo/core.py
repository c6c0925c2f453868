"""What the demo page shows, computed without Gradio: photo in, faces and figures out.

    from vitfer.demo.core import load_models, read_photo, analyse
    models = load_models(["a.safetensors", "b.safetensors"])
    photo, note = read_photo("group.jpg")           # DemoError with a message for the page
    result = analyse(photo, models)                 # every face, for every model
    result["models"][0]["records"]                  # like vitfer predict --detect's records

Faces are found once, with the first model's :class:`~vitfer.data.faces.FaceDetector`,
so that face *k* is the same face in every model's column; each model then classifies the
faces exactly as :class:`~vitfer.inference.Predictor` does (same crop margin, transform and
forward), and the attention of each face is computed as the report draws it
(:func:`vitfer.analysis.attention_heatmaps`: rollout for ViT, the hybrid and ConViT, the class
tokens' cross-attention for CrossViT, Grad-CAM for the CNNs) and drawn with
:func:`vitfer.analysis.plot_attention`.

Limits: uploads are capped by :data:`MAX_FILE_BYTES` (Gradio's ``max_file_size``), decoding by
:data:`vitfer.data.io.MAX_DECODED_BYTES` and Pillow's decompression-bomb limit (an error, not a
warning, here), and a photo whose longer side exceeds ``max_side`` (:data:`MAX_SIDE`) is
downscaled to it, with a note saying so; at most :data:`MAX_FACES` faces (the largest) are
classified.
"""
from __future__ import annotations

import html
import io
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "MAX_FACES",
    "MAX_FILE_BYTES",
    "MAX_SIDE",
    "DemoError",
    "analyse",
    "attention_figure",
    "draw_faces",
    "faces_table",
    "load_models",
    "model_title",
    "read_photo",
]

#: The largest upload, in bytes (Gradio refuses bigger files before they reach vitfer).
MAX_FILE_BYTES = 20 * 2**20
#: Photos whose longer side is larger are downscaled to this many pixels (the page says so).
MAX_SIDE = 2048
#: At most this many faces (the largest) are classified in one photo.
MAX_FACES = 16

#: Box colours: the chosen face, the others.
CHOSEN, OTHER = (255, 48, 48), (255, 196, 0)

PathLike = str | os.PathLike


class DemoError(ValueError):
    """A photo the demo cannot use; the message is shown in the page as it is."""


def load_models(checkpoints: Sequence[PathLike], *, device: str = "cpu") -> list[Any]:
    """One :class:`~vitfer.inference.Predictor` (with face detection) a checkpoint, loaded now so
    that a bad file fails before any server starts (``CheckpointError`` / ``OSError`` naming it)."""
    from vitfer.inference import Predictor

    if not checkpoints:
        raise ValueError("the demo needs at least one checkpoint")
    return [Predictor(c, device=device, detect=True) for c in checkpoints]


def model_title(predictor: Any, checkpoint: PathLike) -> str:
    """``model name · file name``, the heading of a model's column."""
    return f"{getattr(predictor.model, 'model_name', type(predictor.model).__name__)} · {Path(checkpoint).name}"


def read_photo(path: PathLike, *, max_side: int = MAX_SIDE) -> tuple[Image.Image, str | None]:
    """Decode an uploaded photo with vitfer's loader (:func:`vitfer.data.load_image`: ``L`` or
    ``RGB``, EXIF orientation applied, :data:`~vitfer.data.io.MAX_DECODED_BYTES` enforced).

    Returns ``(image, note)``: ``note`` says when the photo was downscaled to ``max_side``.
    Raises :class:`DemoError` with a message for the page when the file is not a usable image.
    """
    from vitfer.data import ImageDecodeError, load_image

    path = Path(path)
    name = path.name
    if max_side < 32:
        raise ValueError(f"max_side must be >= 32 pixels, got {max_side}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = load_image(path)
    except ImageDecodeError as e:
        reason = e.reason.replace(str(path), name)
        if "MAX_DECODED_BYTES" in reason or "DecompressionBomb" in reason:
            raise DemoError(f"{name} is too large to decode: {reason}") from None
        raise DemoError(f"{name} is not an image vitfer can read ({reason}). Upload a photo: JPEG, PNG, WebP, "
                        "BMP or TIFF.") from None
    note = None
    if max(im.size) > max_side:
        w, h = im.size
        s = max_side / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        note = (f"{name} is {w}x{h} pixels: downscaled to {im.width}x{im.height} (the demo's limit is {max_side} px "
                "a side).")
    return im, note


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def draw_faces(image: Image.Image, boxes: Sequence[Sequence[int]], records: Sequence[dict[str, Any]],
               chosen: int | None = None) -> Image.Image:
    """A colour copy of ``image`` with every face boxed and labelled ``#k label p%``; the chosen
    face (index into ``boxes``) in red, the others in amber."""
    im = image.convert("RGB")
    draw = ImageDraw.Draw(im)
    side = max(im.size)
    width = max(2, side // 300)
    face = int(np.mean([b[3] for b in boxes])) if len(boxes) else 0
    font = _font(min(64, max(14, side // 45, face // 8)))
    for k, (box, r) in enumerate(zip(boxes, records, strict=True)):
        x, y, w, h = box
        color = CHOSEN if k == chosen else OTHER
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=color, width=width)
        text = f"#{k + 1} {r['label']} {100 * r['probabilities'][r['label']]:.0f}%"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        th, tw = bottom - top, right - left
        ty = y - th - 2 * width if y - th - 2 * width >= 0 else y + h  # above the box, else below
        draw.rectangle([x, ty, x + tw + 2 * width, ty + th + 2 * width], fill=color)
        draw.text((x + width - left, ty + width - top), text, fill=(0, 0, 0) if color == OTHER else (255, 255, 255),
                  font=font)
    return im


def faces_table(records: Sequence[dict[str, Any]], chosen: int | None = None) -> str:
    """The faces of one model as an HTML table (face, label, confidence, box); ``""`` for none."""
    if not records:
        return ""
    rows = []
    for k, r in enumerate(records):
        cls = "vitfer-face vitfer-chosen" if k == chosen else "vitfer-face"
        box = ", ".join(map(str, r["box"]))
        rows.append(f"<tr class='{cls}' data-face='{k + 1}'><td>#{k + 1}</td>"
                    f"<td class='vitfer-label'>{html.escape(r['label'])}</td>"
                    f"<td>{100 * r['probabilities'][r['label']]:.1f}%</td><td>{box}</td></tr>")
    return ("<table class='vitfer-faces'><thead><tr><th>face</th><th>label</th><th>confidence</th>"
            "<th>box (x, y, w, h)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _display(x: torch.Tensor, pcfg: dict[str, Any]) -> np.ndarray:
    from vitfer.analysis.report import _display_images

    return _display_images(x, pcfg)


def analyse(image: Image.Image, predictors: Sequence[Any], *, max_faces: int = MAX_FACES) -> dict[str, Any]:
    """Find the faces of ``image`` and classify each with every predictor.

    Returns ``{"boxes": [[x, y, w, h], ...] (left to right), "note": str | None (more faces than
    max_faces), "models": [{"records", "faces" (k, H, W, 3) model inputs shown in [0, 1],
    "maps" {name: (k, h, w) in [0, 1]}}, ...]}``; the records are those of ``vitfer predict
    --detect`` (file and frame None).
    """
    from vitfer.analysis import attention_heatmaps
    from vitfer.data import image_to_tensor
    from vitfer.data.faces import crop_face

    if not predictors:
        raise ValueError("analyse needs at least one predictor")
    found = predictors[0].detector.detect(image)
    note = None
    if len(found) > max_faces:
        note = f"{len(found)} faces found: the {max_faces} largest are shown."
    found = sorted(found[:max_faces], key=lambda b: (b.x, b.y))
    boxes = [[b.x, b.y, b.w, b.h] for b in found]
    out: dict[str, Any] = {"boxes": boxes, "note": note, "models": []}
    for p in predictors:
        if not found:
            out["models"].append({"records": [], "faces": None, "maps": {}})
            continue
        crops = [crop_face(image, b, margin=p.margin) for b in found]
        x = torch.stack([p.transform(image_to_tensor(c).float() / 255.0) for c in crops])
        probs = p.logits(x).softmax(-1).cpu()
        records = []
        for box, pr in zip(boxes, probs.tolist(), strict=True):
            k = max(range(len(pr)), key=pr.__getitem__)
            records.append({"file": None, "frame": None, "box": box, "label": p.class_names[k],
                            "probabilities": dict(zip(p.class_names, pr, strict=True))})
        xd = x.to(p.device)
        maps = {name: m.detach().float().cpu().numpy() for name, m in attention_heatmaps(p.model, xd).items()}
        out["models"].append({"records": records, "faces": _display(x, p.model.pretrained_cfg), "maps": maps})
    return out


def attention_figure(model_result: dict[str, Any], face: int, dpi: int = 140) -> Image.Image | None:
    """The report's attention figure (:func:`vitfer.analysis.plot_attention`) of one face: the
    model's input on top, each attention map over it below; ``None`` when there is no such face."""
    from vitfer.analysis import plot_attention

    recs = model_result["records"]
    if not recs or not 0 <= face < len(recs):
        return None
    r = recs[face]
    maps = {_short(name): m[face:face + 1] for name, m in model_result["maps"].items()}
    fig = plot_attention(model_result["faces"][face:face + 1], maps,
                         [f"#{face + 1}: {r['label']} {100 * r['probabilities'][r['label']]:.0f}%"])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    fig.clf()
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def _short(name: str) -> str:
    """A map name short enough for a narrow column's y label."""
    return re.sub(r"\s*\(.*?\)\s*:?\s*", "\n", name).strip() if len(name) > 24 else name
