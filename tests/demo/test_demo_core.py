"""vitfer.demo.core: what the demo page shows, computed without Gradio."""
from __future__ import annotations

import numpy as np
import pytest
from demo_helpers import (
    CLASSES, FAMILIES_48, drawn_overlays, face_std, faces_canvas, noise_image, not_an_image, save_family_48, save_tiny,
)
from PIL import Image

from vitfer.demo.core import (
    CHOSEN,
    OTHER,
    DemoError,
    analyse,
    attention_figure,
    attention_plot,
    draw_faces,
    faces_table,
    load_models,
    model_title,
    model_titles,
    read_photo,
)
from vitfer.demo.examples import write_examples
from vitfer.inference import Predictor


@pytest.fixture(scope="module")
def models(demo_ckpts):
    return load_models(demo_ckpts)


def test_every_face_classified_by_every_model_as_vitfer_predict_does(models, demo_ckpts, data_root, tmp_path):
    photo = tmp_path / "three.png"
    pasted = faces_canvas(data_root, 3, photo)
    image, note = read_photo(photo)
    assert note is None and image.size == Image.open(photo).size
    result = analyse(image, models)
    boxes = result["boxes"]
    assert len(boxes) == 3 and result["note"] is None
    for (x, _, w, _), (px, _, pw, _) in zip(boxes, pasted, strict=True):  # left to right, one box a pasted face
        assert px < x + w / 2 < px + pw
    for m, ckpt in zip(result["models"], demo_ckpts, strict=True):
        assert [r["box"] for r in m["records"]] == boxes  # the same faces in every column
        for r in m["records"]:
            assert r["label"] in CLASSES and set(r["probabilities"]) == set(CLASSES)
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        # the records of `vitfer predict --detect` on the same photo, face for face
        expected = {tuple(r["box"]): r for r in Predictor(ckpt, detect=True).predict(str(photo))}
        for r in m["records"]:
            e = expected[tuple(r["box"])]
            assert r["label"] == e["label"]
            assert r["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)
        (name, maps), = m["maps"].items()
        # ViT at 32 px: 4x4 tokens; ResNet-D at 224 px: layer4 is 7x7
        assert name in ("attention rollout, 2 blocks (4x4)", "Grad-CAM, layer4 (7x7)") and maps.shape[0] == 3
        assert 0.0 <= maps.min() and maps.max() <= 1.0
        assert m["faces"].shape[0] == 3 and m["faces"].shape[-1] == 3


def test_drawings_of_the_chosen_face(models, data_root, tmp_path):
    photo = tmp_path / "two.png"
    faces_canvas(data_root, 2, photo)
    image, _ = read_photo(photo)
    result = analyse(image, models)
    recs = result["models"][0]["records"]
    drawn = np.asarray(draw_faces(image, result["boxes"], recs, chosen=1))
    assert drawn.shape == (image.height, image.width, 3)
    x0, y0, _, _ = result["boxes"][0]
    x1, y1, _, _ = result["boxes"][1]
    assert tuple(drawn[y0 + 5, x0]) == OTHER and tuple(drawn[y1 + 5, x1]) == CHOSEN  # left edges of the boxes
    table = faces_table(recs, chosen=1)
    assert table.count("<tr class='vitfer-face") == 2 and "vitfer-chosen' data-face='2'" in table
    assert all(f">{r['label']}<" in table for r in recs)
    fig = attention_figure(result["models"][1], 1)
    assert fig.mode == "RGB" and fig.height > fig.width > 100
    assert np.asarray(fig).std() > 20  # a face and a heat map, not a blank figure
    assert attention_figure(result["models"][1], 2) is None


@pytest.mark.parametrize("family", ["convit_tiny", "crossvit_tiny_240"])
def test_attention_of_the_other_families(family, data_root, tmp_path):
    ckpt = save_tiny(family, tmp_path / f"{family}.safetensors")
    photo = tmp_path / "one.png"
    faces_canvas(data_root, 1, photo, start=5)
    image, _ = read_photo(photo)
    (m,) = analyse(image, load_models([ckpt]))["models"]
    assert len(m["records"]) == 1
    assert len(m["maps"]) == (2 if family.startswith("crossvit") else 1)
    fig = attention_figure(m, 0)
    assert fig is not None and np.asarray(fig).std() > 20


def test_no_face(models, tmp_path):
    image, _ = read_photo(noise_image(tmp_path / "noise.png"))
    result = analyse(image, models)
    assert result["boxes"] == [] and all(m["records"] == [] for m in result["models"])
    assert attention_figure(result["models"][0], 0) is None and faces_table([]) == ""


def test_more_faces_than_the_cap(models, data_root, tmp_path):
    photo = tmp_path / "three.png"
    faces_canvas(data_root, 3, photo)
    result = analyse(read_photo(photo)[0], models, max_faces=2)
    assert len(result["boxes"]) == 2 and "3 faces found: the 2 largest" in result["note"]


def test_files_that_are_not_images(tmp_path):
    with pytest.raises(DemoError, match=r"fake\.jpg is not an image vitfer can read") as e:
        read_photo(not_an_image(tmp_path / "fake.jpg"))
    assert str(tmp_path) not in str(e.value)  # the server's upload folder is not shown
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DemoError, match="empty.png is not an image"):
        read_photo(tmp_path / "empty.png")
    truncated = tmp_path / "cut.png"
    Image.new("L", (64, 64), 7).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(DemoError, match="cut.png is not an image"):
        read_photo(truncated)


def test_large_photos_are_downscaled_and_huge_ones_refused(tmp_path, monkeypatch):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (3000, 900), (90, 90, 90)).save(wide)
    image, note = read_photo(wide, max_side=1000)
    assert image.size == (1000, 300)
    assert note == "wide.png is 3000x900 pixels: downscaled to 1000x300 (the demo's limit is 1000 px a side)."
    import vitfer.data.io as io_mod

    monkeypatch.setattr(io_mod, "MAX_DECODED_BYTES", 1_000_000)  # the loader's memory cap: 3000x900 RGB is over it
    with pytest.raises(DemoError, match=r"wide.png is too large to decode: .*MAX_DECODED_BYTES"):
        read_photo(wide)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow's bomb warning zone is an error here
    monkeypatch.setattr(io_mod, "MAX_DECODED_BYTES", None)
    with pytest.raises(DemoError, match="too large to decode: .*DecompressionBomb"):
        read_photo(wide)


def test_load_models_fails_on_a_bad_checkpoint(tmp_path):
    from vitfer.weights.errors import CheckpointError

    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a checkpoint")
    with pytest.raises((CheckpointError, OSError, ValueError), match="bad.safetensors"):
        load_models([bad])
    with pytest.raises(ValueError, match="at least one checkpoint"):
        load_models([])


@pytest.mark.parametrize("family", list(FAMILIES_48))
def test_attention_panel_at_48px_varies_over_the_face(family, tmp_path):
    """The demo's attention panel, family by family at 48 px, on the shipped synthetic example:
    a map at 6x6 cells or more (CrossViT-Ti's large patches: 5x5), drawn over the face, varying."""
    ckpt = save_family_48(family, tmp_path / f"{family}.safetensors")
    (ex, *_) = write_examples(tmp_path / "examples")
    image, _ = read_photo(ex.path)
    (m,) = analyse(image, load_models([ckpt]))["models"]
    assert len(m["records"]) == 7
    for h in m["heatmaps"]:
        assert min(h.grid) >= (5 if family == "crossvit" else 6), h.title
    for face in range(7):
        fig = attention_plot(m, face)
        drawn = drawn_overlays(fig)
        assert len(drawn) == len(m["heatmaps"])
        for d in drawn:
            assert d.shape == (48, 48)
            assert face_std(d) > 0.05, f"{family}, face {face + 1}: the drawn map is (nearly) constant over the face"
        labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
        assert all(any(h.source in lab for lab in labels) for h in m["heatmaps"])  # the layer is named
        assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == len(m["heatmaps"])


def test_the_demo_crops_with_the_predictors_margin(demo_ckpts, tmp_path):
    (ex, *_) = write_examples(tmp_path / "examples")
    image, _ = read_photo(ex.path)
    (p,) = load_models(demo_ckpts[:1])
    faces = {}
    for margin in (0.0, 0.4):
        p.margin = margin
        (m,) = analyse(image, [p])["models"]
        faces[margin] = m["faces"]
        expected = {tuple(r["box"]): r for r in p.predict(str(ex.path))}
        for r in m["records"]:
            assert r["probabilities"] == pytest.approx(expected[tuple(r["box"])]["probabilities"], abs=1e-5)
    assert np.abs(faces[0.0] - faces[0.4]).mean() > 0.02


def test_column_titles_tell_two_runs_of_one_model_apart(demo_ckpts, tmp_path):
    import shutil

    a, b = tmp_path / "runs" / "vit-a" / "model.safetensors", tmp_path / "runs" / "vit-b" / "model.safetensors"
    for p in (a, b):
        p.parent.mkdir(parents=True)
        shutil.copy(demo_ckpts[0], p)
    preds = load_models([a, b, demo_ckpts[1]])
    titles = model_titles(preds, [a, b, demo_ckpts[1]])
    assert titles == ["vit_tiny_patch16_224 · vit-a/model.safetensors",
                      "vit_tiny_patch16_224 · vit-b/model.safetensors",
                      "resnet18d · resnet.safetensors"]
    c = tmp_path / "other" / "vit-a" / "model.safetensors"  # same run folder name elsewhere: one more folder
    c.parent.mkdir(parents=True)
    shutil.copy(demo_ckpts[0], c)
    assert model_titles(preds[:2], [a, c]) == ["vit_tiny_patch16_224 · runs/vit-a/model.safetensors",
                                               "vit_tiny_patch16_224 · other/vit-a/model.safetensors"]
    assert model_title(preds[2], demo_ckpts[1]) == "resnet18d · resnet.safetensors"


def test_examples_are_synthetic_faces_the_detector_finds(tmp_path):
    from vitfer.data.faces import FaceDetector

    examples = write_examples(tmp_path / "ex")
    assert [e.path.name for e in examples] == ["synthetic_faces.png"] + [f"synthetic_{c}.png" for c in
                                                                         ["anger", "disgust", "fear", "happy",
                                                                          "neutral", "sad", "surprise"]]
    det = FaceDetector()
    for e in examples:  # OpenCV's Haar cascade finds every synthetic face, on the canvas too
        assert e.found == e.faces == len(det.detect(Image.open(e.path))) and e.note == ""
        assert e.path.stat().st_size < 300_000
    canvas = examples[0]
    assert canvas.faces == 7 and Image.open(canvas.path).size[0] > 500
    # the same bytes every time: an example is a function of vitfer's code, not of the run
    again = write_examples(tmp_path / "ex2")
    assert all(x.path.read_bytes() == y.path.read_bytes() for x, y in zip(examples, again, strict=True))
