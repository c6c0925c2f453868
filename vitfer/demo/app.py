"""The Gradio page of ``vitfer demo``: a photo or a webcam snapshot in, for every checkpoint a
column with the faces boxed and labelled, the chosen face's class probabilities (a bar chart) and
its attention map. Example photos drawn by vitfer (:mod:`vitfer.demo.examples`: synthetic faces,
one an expression and a canvas of all seven) run with one click, for a first look without a photo.

    from vitfer.demo import build_app, launch
    app = build_app(["a.safetensors", "b.safetensors"])     # gradio.Blocks, not started
    app, url = launch(["a.safetensors"], port=7860)          # served on 127.0.0.1, returns at once
    app.close()

Gradio is the optional extra ``demo`` (``pip install 'vitfer[demo]'``), imported only here.
Gradio's telemetry is switched off (``GRADIO_ANALYTICS_ENABLED=False``, ``analytics_enabled=False``),
nothing is shared (``share=False``), the server binds 127.0.0.1 unless told otherwise, and the
page loads no font or script from outside (Gradio's default theme ships its fonts).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core import (
    MAX_FACES,
    MAX_FILE_BYTES,
    MAX_SIDE,
    DemoError,
    analyse,
    attention_figure,
    draw_faces,
    faces_table,
    load_models,
    model_titles,
    read_photo,
)

__all__ = ["DEMO_HINT", "build_app", "import_gradio", "launch", "message_html"]

_logger = logging.getLogger(__name__)

#: What to run when Gradio is missing.
DEMO_HINT = "pip install 'vitfer[demo]'"

_CSS = """
#vitfer-message .vitfer-msg {padding: 0.6em 0.9em; border-radius: 6px; margin: 0.2em 0; font-size: 1.05em}
#vitfer-message .vitfer-error {background: #fde8e8; color: #8a1010; border: 1px solid #f5b5b5}
#vitfer-message .vitfer-warn {background: #fff6dd; color: #6b4b00; border: 1px solid #f0d890}
#vitfer-message .vitfer-ok {background: #e7f6ea; color: #17502a; border: 1px solid #a9dcb5}
.vitfer-annotated img {max-height: 440px; object-fit: contain}
table.vitfer-faces {border-collapse: collapse; width: 100%; font-size: 0.95em}
table.vitfer-faces th, table.vitfer-faces td {border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left}
table.vitfer-faces tr.vitfer-chosen td {background: #ffecec; font-weight: 600}
"""

_INTRO = ("## vitfer demo: facial expressions\n"
          "Upload a photo (or take one with the webcam), or click one of the examples below it. Every face that "
          "OpenCV's detector finds is boxed and classified by each checkpoint, one column a model. Choose a face, or "
          "click it in an image, to see its class probabilities and where the model looked ({what}).")


def import_gradio() -> Any:
    """Import Gradio with its telemetry off, or raise an ImportError naming the extra."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(f"vitfer demo needs Gradio, which is not installed: run {DEMO_HINT}") from e
    return gr


def message_html(text: str, kind: str = "ok") -> str:
    """The page's message line: ``kind`` is ``ok``, ``warn`` or ``error``."""
    import html

    return f"<div class='vitfer-msg vitfer-{kind}'>{html.escape(text)}</div>"


def _what(predictors: Sequence[Any]) -> str:
    from vitfer.analysis import model_kind

    names = {"vit": "attention rollout", "convit": "attention rollout through GPSA", "crossvit":
             "CrossViT's class-token cross-attention", "cnn": "Grad-CAM"}
    return ", ".join(dict.fromkeys(names[model_kind(p.model)] for p in predictors))


def build_app(checkpoints: Sequence[Any], *, predictors: Sequence[Any] | None = None, device: str = "cpu",
              max_side: int = MAX_SIDE, max_faces: int = MAX_FACES) -> Any:
    """The demo as a ``gradio.Blocks`` (not launched). ``predictors``: already loaded
    :class:`~vitfer.inference.Predictor` objects (with detection) of ``checkpoints``; loaded
    here when ``None``."""
    from .examples import write_examples

    gr = import_gradio()
    preds = list(predictors) if predictors is not None else load_models(checkpoints, device=device)
    n = len(preds)
    titles = model_titles(preds, checkpoints)
    example_dir = tempfile.mkdtemp(prefix="vitfer-demo-examples-")
    atexit.register(shutil.rmtree, example_dir, ignore_errors=True)
    examples = write_examples(example_dir, detector=preds[0].detector)
    example_notes = {e.path.name: e.note for e in examples if e.note}

    def empty_columns() -> list[Any]:
        return [None, "", None, None] * n

    def columns(result: dict[str, Any], image: Any, chosen: int) -> list[Any]:
        out: list[Any] = []
        for m in result["models"]:
            recs = m["records"]
            if not recs:
                out += [image.convert("RGB"), "", None, None]
                continue
            r = recs[chosen]
            out += [draw_faces(image, result["boxes"], recs, chosen), faces_table(recs, chosen),
                    gr.Label(value=r["probabilities"], label=f"face #{chosen + 1}: class probabilities"),
                    attention_figure(m, chosen)]
        return out

    def found_message(state: dict[str, Any], chosen: int) -> str:
        k = len(state["result"]["boxes"])
        text = " ".join([f"{k} face{'s' if k > 1 else ''} found; showing face #{chosen + 1}."] + state["notes"])
        return message_html(text, "warn" if state["notes"] else "ok")

    def on_photo(upload: dict[str, Any] | None) -> list[Any]:
        """Upload, webcam snapshot or clear. ``upload``: the photo component's file data, not
        decoded by Gradio (``preprocess=False``): vitfer decodes it with its own limits, so that a
        file that is not an image is a message in the page rather than a Gradio error."""
        if upload is None:
            return [None, gr.Radio(choices=[], value=None), ""] + empty_columns()
        try:
            path = upload.get("path") if isinstance(upload, dict) else None
            if not path:
                raise DemoError("the browser sent no file: upload the photo again.")
            image, note = read_photo(path, max_side=max_side)
            result = analyse(image, preds, max_faces=max_faces)
        except DemoError as e:
            return [None, gr.Radio(choices=[], value=None), message_html(str(e), "error")] + empty_columns()
        k = len(result["boxes"])
        name = upload.get("orig_name") or Path(str(path)).name
        notes = [s for s in (note, result["note"], example_notes.get(name)) if s]
        if not k:
            text = ("No face found in this photo. The detector (OpenCV's Haar cascade) looks for frontal, upright "
                    "faces of at least 30x30 pixels: try a photo with a face looking at the camera.")
            return ([None, gr.Radio(choices=[], value=None), message_html(" ".join([text] + notes), "warn")]
                    + columns(result, image, 0))
        state = {"image": image, "result": result, "notes": notes}
        choices = [f"#{i + 1}" for i in range(k)]
        return ([state, gr.Radio(choices=choices, value=choices[0]), found_message(state, 0)]
                + columns(result, image, 0))

    def on_face(state: dict[str, Any] | None, choice: str | None) -> list[Any]:
        if not state or not choice:
            return [gr.skip()] * (1 + 4 * n)
        k = int(choice.lstrip("#")) - 1
        return [found_message(state, k)] + columns(state["result"], state["image"], k)

    def on_click(state: dict[str, Any] | None, evt: gr.SelectData) -> Any:
        """A click in an annotated image chooses the face under it."""
        if not state or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
            return gr.skip()
        px, py = evt.index
        hits = [i for i, (x, y, w, h) in enumerate(state["result"]["boxes"]) if x <= px < x + w and y <= py < y + h]
        return f"#{hits[0] + 1}" if hits else gr.skip()

    on_click.__annotations__["evt"] = gr.SelectData  # Gradio finds the event data by its type

    with gr.Blocks(title="vitfer demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(_INTRO.format(what=_what(preds)))
        with gr.Row():
            photo = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="photo",
                           elem_id="vitfer-input", height=320, scale=2)
            with gr.Column(scale=1):
                message = gr.HTML(elem_id="vitfer-message")
                face = gr.Radio(choices=[], label="face", elem_id="vitfer-face", interactive=True)
                gr.Markdown(f"Limits: {MAX_FILE_BYTES // 2**20} MB a file, photos larger than {max_side} px a "
                            f"side are downscaled, at most {max_faces} faces.")
        gr.Examples(examples=[[str(e.path)] for e in examples], inputs=photo, label="Examples: synthetic faces "
                    "drawn by vitfer (no photo of a person); click one to run it",
                    example_labels=[e.label for e in examples], examples_per_page=len(examples),
                    elem_id="vitfer-examples", cache_examples=False)
        state = gr.State()
        outputs: list[Any] = []
        annotated_images = []
        with gr.Row(equal_height=False):
            for i, title in enumerate(titles):
                with gr.Column(elem_id=f"vitfer-model-{i}", elem_classes=["vitfer-model"]):
                    gr.Markdown(f"### {title}")
                    annotated = gr.Image(label="faces", type="pil", interactive=False, format="png",
                                         elem_id=f"vitfer-annotated-{i}", elem_classes=["vitfer-annotated"],
                                         buttons=["download", "fullscreen"])
                    table = gr.HTML(elem_id=f"vitfer-faces-{i}", elem_classes=["vitfer-faces-html"])
                    with gr.Row():
                        probs = gr.Label(label="class probabilities", elem_id=f"vitfer-probs-{i}",
                                         num_top_classes=len(preds[i].class_names))
                        attention = gr.Image(label="attention", type="pil", interactive=False, format="png",
                                             elem_id=f"vitfer-attention-{i}", buttons=["download", "fullscreen"])
                    outputs += [annotated, table, probs, attention]
                    annotated_images.append(annotated)
        photo.change(on_photo, inputs=photo, outputs=[state, face, message] + outputs, preprocess=False)
        face.change(on_face, inputs=[state, face], outputs=[message] + outputs)
        for im in annotated_images:
            im.select(on_click, inputs=state, outputs=face)
    app.vitfer_predictors = preds  # type: ignore[attr-defined]
    app.vitfer_examples = examples  # type: ignore[attr-defined]
    app.vitfer_handlers = {"photo": on_photo, "face": on_face, "click": on_click}  # type: ignore[attr-defined]
    return app


def launch(checkpoints: Sequence[Any], *, host: str = "127.0.0.1", port: int | None = None, device: str = "cpu",
           max_side: int = MAX_SIDE, max_faces: int = MAX_FACES, max_file_bytes: int = MAX_FILE_BYTES,
           predictors: Sequence[Any] | None = None) -> tuple[Any, str]:
    """Build the demo and serve it in background threads; returns ``(app, url)`` at once
    (``app.close()`` stops it). ``port=None``: the first free port from 7860."""
    gr = import_gradio()
    app = build_app(checkpoints, predictors=predictors, device=device, max_side=max_side, max_faces=max_faces)
    if host not in ("127.0.0.1", "localhost", "::1"):
        _logger.warning("vitfer demo: serving on %s, reachable from other machines", host)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
               inbrowser=False, show_error=False, max_file_size=max_file_bytes, ssr_mode=False, mcp_server=False,
               theme=gr.themes.Default(), css=_CSS, footer_links=["settings"],
               allowed_paths=[str(app.vitfer_examples[0].path.parent)], favicon_path=None)
    _logger.info("vitfer demo on %s (%s)", app.local_url, ", ".join(Path(str(c)).name for c in checkpoints))
    return app, str(app.local_url)
