"""vitfer.demo.app: the Gradio page's handlers, and the server it launches (no browser here)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from demo_helpers import CLASSES, faces_canvas, noise_image, not_an_image
from PIL import Image

from vitfer.demo import build_app, launch, load_models

gr = pytest.importorskip("gradio", reason="the demo extra (gradio, in the test extra)")


@pytest.fixture(scope="module")
def app(demo_ckpts):
    return build_app(demo_ckpts)


def _upload(path) -> dict:
    """What the photo component hands the handler (its file data, not decoded by Gradio)."""
    return {"path": str(path), "url": None, "orig_name": path.name, "size": path.stat().st_size}


def _args(update) -> dict:
    return update.constructor_args


def test_a_photo_gives_every_model_its_column(app, data_root, tmp_path):
    photo = tmp_path / "three.png"
    faces_canvas(data_root, 3, photo)
    out = app.vitfer_handlers["photo"](_upload(photo))
    assert len(out) == 3 + 4 * 2
    state, face, message = out[:3]
    assert "3 faces found" in message and "vitfer-ok" in message
    assert _args(face) == {"choices": ["#1", "#2", "#3"], "value": "#1"}
    assert len(state["result"]["boxes"]) == 3
    for annotated, table, probs, attention in zip(*[iter(out[3:])] * 4, strict=True):
        assert isinstance(annotated, Image.Image) and annotated.size == Image.open(photo).size
        assert table.count("<tr class='vitfer-face") == 3 and "data-face='1'" in table
        assert set(_args(probs)["value"]) == set(CLASSES) and "face #1" in _args(probs)["label"]
        assert isinstance(attention, Image.Image)
    # choosing face 3, from the radio buttons or by a click inside its box
    message, *cols = app.vitfer_handlers["face"](state, "#3")
    assert "showing face #3" in message
    assert "vitfer-chosen' data-face='3'" in cols[1] and "face #3" in _args(cols[2])["label"]
    x, y, w, h = state["result"]["boxes"][1]
    click = gr.SelectData(None, {"index": [x + w // 2, y + h // 2], "value": None})
    assert app.vitfer_handlers["click"](state, click) == "#2"
    miss = gr.SelectData(None, {"index": [1, 1], "value": None})
    assert app.vitfer_handlers["click"](state, miss) == gr.skip()


def test_building_the_page_writes_nothing_into_the_package(app):
    import vitfer.demo

    folder = Path(vitfer.demo.__file__).parent
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".py", ".pyi")) == ["__init__.py", "app.py",
                                                                                        "core.py", "examples.py"]
    assert not [p for p in folder.iterdir() if p.suffix == ".png"]  # the examples are written elsewhere


def test_messages_in_the_page(app, tmp_path):
    out = app.vitfer_handlers["photo"](_upload(not_an_image(tmp_path / "fake.jpg")))
    assert out[0] is None and "vitfer-error" in out[2] and "fake.jpg is not an image" in out[2]
    assert out[3:] == [None, "", None, None] * 2
    out = app.vitfer_handlers["photo"](_upload(noise_image(tmp_path / "noise.png")))
    assert out[0] is None and "No face found" in out[2] and "vitfer-warn" in out[2]
    assert isinstance(out[3], Image.Image) and out[4] == "" and out[5] is None  # the photo itself, no boxes
    out = app.vitfer_handlers["photo"]({"path": None, "url": "data:image/png;base64,AAAA"})
    assert "vitfer-error" in out[2] and "sent no file" in out[2]
    out = app.vitfer_handlers["photo"](None)  # cleared
    assert out[2] == "" and out[3:] == [None, "", None, None] * 2
    assert app.vitfer_handlers["face"](None, "#1") == [gr.skip()] * 9


def test_a_big_photo_is_downscaled_with_a_note(demo_ckpts, data_root, tmp_path):
    photo = tmp_path / "two.png"
    faces_canvas(data_root, 2, photo)
    app = build_app(demo_ckpts[:1], max_side=400)
    out = app.vitfer_handlers["photo"](_upload(photo))
    assert "downscaled to 400x" in out[2] and "vitfer-warn" in out[2]
    assert max(out[3].size) == 400


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_launch_serves_on_localhost_without_telemetry_and_caps_uploads(demo_ckpts, tmp_path):
    app, url = launch(demo_ckpts, port=None, predictors=load_models(demo_ckpts), max_file_bytes=10_000)
    try:
        assert url.startswith("http://127.0.0.1:") and app.server_name == "127.0.0.1"
        assert app.analytics_enabled is False and app.share is False
        status, body = _get(url)
        assert status == 200 and b"vitfer demo" in body
        config = json.loads(_get(url.rstrip("/") + "/config")[1])
        assert config["max_file_size"] == 10_000 and config["analytics_enabled"] is False

        def upload(size: int) -> int:
            boundary = uuid.uuid4().hex
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
                    "Content-Type: image/png\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
            req = urllib.request.Request(url.rstrip("/") + "/gradio_api/upload", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            try:
                with urllib.request.urlopen(req, timeout=20) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert upload(1_000) == 200
        assert upload(20_000) == 413  # over max_file_size: refused before it reaches vitfer
    finally:
        app.close(verbose=False)


def test_missing_gradio_names_the_extra(monkeypatch):
    import sys

    from vitfer.demo import import_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ImportError, match=r"pip install 'vitfer\[demo\]'"):
        import_gradio()


def test_the_examples_run_with_one_click(app):
    """The page offers vitfer's synthetic examples; choosing one runs it like an upload."""
    examples = app.vitfer_examples
    assert examples[0].label == "7 synthetic faces" and len(examples) == 8
    config = app.get_config_file()
    (ds,) = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "vitfer-examples"]
    assert ds["props"]["sample_labels"] == [e.label for e in examples]
    out = app.vitfer_handlers["photo"](_upload(examples[0].path))
    assert "7 faces found" in out[2] and "vitfer-ok" in out[2]
    for annotated, table, probs, attention in zip(*[iter(out[3:])] * 4, strict=True):
        assert table.count("<tr class='vitfer-face") == 7 and isinstance(attention, Image.Image)
    out = app.vitfer_handlers["photo"](_upload(examples[4].path))  # one face: happy
    assert "1 face found" in out[2]
