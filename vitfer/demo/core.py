"""What the demo page shows, computed without Gradio: photo in, faces and figures out.

    from vitfer.demo.core import load_models, read_photo, analyse
    models = load_models(["a.safetensors", "b.safetensors"])
    photo, note = read_photo("group.jpg")           # DemoError with a message for the page
    result = analyse(photo, models)                 # every face, for every model
    result["models"][0]["records"]                  # like vitfer predict --detect's records

Faces are found once, with the first model's :class:`~vitfer.data.faces.FaceDetector`,
so that face *k* is the same face in every model's column; each model then classifies the
faces exactly as :class:`~vitfer.inference.Predictor` does (the crop margin the model was
trained with, ``predictor.margin``; same transform and forward), and the attention of each face
is computed and drawn as the report does it (:func:`vitfer.analysis.heatmaps`: rollout for ViT,
the hybrids and ConViT, the class tokens' cross-attention for CrossViT, Grad-CAM for the CNNs at
the deepest layer whose map is at least 6x6; :func:`vitfer.analysis.plot_attention`: upsampled
to the face, scaled per face, a colour bar, the layer named, a constant map said and not drawn).

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
    "attention_plot",
    "draw_faces",
    "faces_table",
    "load_models",
    "model_title",
    "model_titles",
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
    """``model name · run folder/file name``, the heading of a model's column (the run folder
    names a fine-tuned ``model.safetensors``, which every run calls its checkpoint)."""
    return model_titles([predictor], [checkpoint])[0]


def model_titles(predictors: Sequence[Any], checkpoints: Sequence[PathLike]) -> list[str]:
    """The columns' headings: ``model name · where``, where ``where`` is the checkpoint's file
    name, with as many parent folders as it takes to tell the checkpoints apart (at least the
    run folder of a ``model.safetensors``): two runs of one model get two headings."""
    paths = [Path(c).expanduser().absolute() for c in checkpoints]

    def tail(p: Path, k: int) -> str:
        return "/".join(p.parts[-k:])

    depth = [2 if p.name == "model.safetensors" and len(p.parts) > 1 else 1 for p in paths]
    for _ in range(max((len(p.parts) for p in paths), default=1)):
        names = [tail(p, k) for p, k in zip(paths, depth, strict=True)]
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            break
        depth = [k + 1 if n in clash and k < len(p.parts) else k for p, k, n in zip(paths, depth, names, strict=True)]
    return [f"{getattr(p.model, 'model_name', type(p.model).__name__)} · {tail(c, k)}"
            for p, c, k in zip(predictors, paths, depth, strict=True)]


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


def analyse(image: Image.Image, predictors: Sequence[Any], *, max_faces: int = MAX_FACES) -> dict[str, Any]:
    """Find the faces of ``image`` and classify each with every predictor.

    Returns ``{"boxes": [[x, y, w, h], ...] (left to right), "note": str | None (more faces than
    max_faces), "models": [{"records", "faces" (k, H, W, 3) model inputs shown in [0, 1],
    "heatmaps" [:class:`~vitfer.analysis.Heatmap`, ...] (k faces each), "maps" {title: (k, h, w)
    in [0, 1]}}, ...]}``; the records are those of ``vitfer predict --detect`` (file and frame None).
    """
    from vitfer.analysis import display_images, heatmaps
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
            out["models"].append({"records": [], "faces": None, "heatmaps": [], "maps": {}})
            continue
        crops = [crop_face(image, b, margin=p.margin) for b in found]
        x = torch.stack([p.transform(image_to_tensor(c).float() / 255.0) for c in crops])
        probs = p.logits(x).softmax(-1).cpu()
        records = []
        for box, pr in zip(boxes, probs.tolist(), strict=True):
            k = max(range(len(pr)), key=pr.__getitem__)
            records.append({"file": None, "frame": None, "box": box, "label": p.class_names[k],
                            "probabilities": dict(zip(p.class_names, pr, strict=True))})
        hms = heatmaps(p.model, x.to(p.device))
        out["models"].append({"records": records, "faces": display_images(x, p.model.pretrained_cfg),
                              "heatmaps": hms, "maps": {h.title: h.maps.numpy() for h in hms}})
    return out


def attention_plot(model_result: dict[str, Any], face: int) -> Any:
    """The attention figure of one face as a matplotlib Figure (:func:`vitfer.analysis.plot_attention`,
    as the report draws it): the model's input on top, each heat map over it below, labelled with
    its layer and grid, with a colour bar; a map constant over the face says so instead. ``None``
    when there is no such face."""
    from vitfer.analysis import plot_attention

    recs = model_result["records"]
    if not recs or not 0 <= face < len(recs):
        return None
    r = recs[face]
    maps = {h.title: h.subset(slice(face, face + 1)) for h in model_result["heatmaps"]}
    return plot_attention(model_result["faces"][face:face + 1], maps,
                          [f"#{face + 1}: {r['label']} {100 * r['probabilities'][r['label']]:.0f}%"])


def attention_figure(model_result: dict[str, Any], face: int, dpi: int = 140) -> Image.Image | None:
    """:func:`attention_plot` of one face as an RGB image (``None`` when there is no such face)."""
    fig = attention_plot(model_result, face)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    fig.clf()
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")
