"""Classifying faces with a trained checkpoint: photos, folders and videos, in batches.

    from vitfer.inference import Predictor
    p = Predictor("runs/x/model.safetensors", detect=True)      # faces found with OpenCV first
    for record in p.predict(["photo.jpg", "folder/", "clip.mp4"]):
        print(record["file"], record["box"], record["label"])

Every face (or, without ``detect``, every image) gives one record::

    {"file": "photo.jpg", "frame": None, "box": [x, y, w, h] | None, "label": "happy",
     "probabilities": {"anger": 0.01, ...}}

An image without a face gives a record with ``"label": None`` and ``"note": "no face found"``;
a file that cannot be read gives ``{"file": ..., "error": "..."}`` and the others go on.
Files are decoded, and faces detected and preprocessed, in background threads while the model
runs on full batches (``torch.inference_mode``; bf16 autocast with ``precision="bf16"``; the
ResNets run channels-last).
"""
from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image

__all__ = ["VIDEO_EXTENSIONS", "Predictor", "expand_inputs"]

_logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
PRECISIONS = ("fp32", "bf16")
PathLike = Union[str, os.PathLike]


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def expand_inputs(paths: Iterable[PathLike]) -> list[Path]:
    """Files to classify: each path itself, or a folder's images and videos (recursive, sorted,
    hidden files left out). A path that does not exist is kept: reading it reports the error."""
    from vitfer.data.io import is_image_file

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file() and not any(part.startswith(".") for part in
                     f.relative_to(p).parts) and (is_image_file(f) or _is_video(f))]
            if not found:
                _logger.warning("no image or video in %s", p)
            out += found
        else:
            out.append(p)
    return out


class Predictor:
    """A checkpoint ready to classify faces (see the module docstring).

    Args:
        checkpoint: a vitfer checkpoint (``vitfer finetune`` / ``vitfer.save``).
        device: ``auto`` (CUDA when there is a GPU), ``cpu``, ``cuda``.
        precision: ``fp32`` or ``bf16`` (autocast; on CPUs with AVX-512 BF16 much faster).
        detect: find faces with OpenCV's Haar cascade first (the ``detect`` extra) and classify
            each, cropped with ``margin``; else the whole image is the face.
        batch_size: faces per forward.
        every: for videos, classify every ``every``-th frame.
        workers: background threads that decode, detect and preprocess.
    """

    def __init__(
        self, checkpoint: PathLike, *, device: str = "auto", precision: str = "fp32", detect: bool = False,
        margin: float = 0.2, batch_size: int = 64, every: int = 10, workers: int = 2,
    ) -> None:
        import vitfer
        from vitfer.data import build_transforms
        from vitfer.runtime import resolve_device

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        if batch_size < 1 or every < 1 or workers < 1:
            raise ValueError("batch_size, every and workers must be >= 1")
        self.device = resolve_device(device)
        self.model = vitfer.load(checkpoint, map_location=self.device)  # eval mode; ResNets run channels-last
        self.precision, self.batch_size, self.every, self.workers = precision, batch_size, every, workers
        self.margin = margin
        self.class_names = [str(c) for c in (self.model.class_names or range(self.model.num_classes))]
        self.transform = build_transforms(self.model.pretrained_cfg, train=False)
        self.detector = None
        if detect:
            from vitfer.data.faces import FaceDetector

            self.detector = FaceDetector()

    # -- the model ----------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of a preprocessed batch (B, C, H, W)."""
        x = x.to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                     enabled=self.precision == "bf16"):
            return self.model(x).float()

    def _preprocess(self, im: Image.Image) -> torch.Tensor:
        from vitfer.data import image_to_tensor

        return self.transform(image_to_tensor(im).float() / 255.0)

    # -- images to faces ------------------------------------------------------------------------
    def _faces(self, im: Image.Image, file: Optional[str], frame: Optional[int]) -> list[dict[str, Any]]:
        """Records (without results yet) of one image's faces, each with its ``_x`` tensor."""
        if self.detector is None:
            return [{"file": file, "frame": frame, "box": None, "_x": self._preprocess(im)}]
        from vitfer.data.faces import crop_face

        boxes = self.detector.detect(im)
        if not boxes:
            return [{"file": file, "frame": frame, "box": None, "label": None, "probabilities": None,
                     "note": "no face found"}]
        return [{"file": file, "frame": frame, "box": [b.x, b.y, b.w, b.h],
                 "_x": self._preprocess(crop_face(im, b, margin=self.margin))} for b in boxes]

    def _read(self, path: Path) -> list[dict[str, Any]]:
        """All face records of one file (decode, detect, preprocess), or one error record."""
        from vitfer.data import DatasetError, load_image

        try:
            if _is_video(path):
                out = []
                for frame, im in self._frames(path):
                    out += self._faces(im, str(path), frame)
                return out
            return self._faces(load_image(path), str(path), None)
        except (DatasetError, OSError, ValueError) as e:
            return [{"file": str(path), "error": str(e)}]

    def _frames(self, path: Path) -> Iterator[tuple[int, Image.Image]]:
        from vitfer.data.faces import import_cv2

        cv2 = import_cv2()
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise ValueError(f"{path}: OpenCV cannot open this video")
        try:
            index, read = 0, 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                if index % self.every == 0:
                    read += 1
                    yield index, Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
            if index == 0:
                raise ValueError(f"{path}: no frame could be decoded")
        finally:
            cap.release()

    # -- records ----------------------------------------------------------------------------------
    def _finish(self, pending: list[dict[str, Any]]) -> None:
        """Run the model on the pending faces and fill in their labels and probabilities."""
        if not pending:
            return
        probs = self.logits(torch.stack([r.pop("_x") for r in pending])).softmax(-1).cpu()
        for r, p in zip(pending, probs.tolist()):
            k = max(range(len(p)), key=p.__getitem__)
            r["label"] = self.class_names[k]
            r["probabilities"] = dict(zip(self.class_names, p))

    def _stream(self, items: Iterator[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """Records in input order, the model running on full batches."""
        queue: list[dict[str, Any]] = []  # records in order, some waiting for the model
        pending: list[dict[str, Any]] = []
        for recs in items:
            for r in recs:
                queue.append(r)
                if "_x" in r:
                    pending.append(r)
            if len(pending) >= self.batch_size:
                self._finish(pending)
                pending = []
                while queue and "_x" not in queue[0]:
                    yield queue.pop(0)
        self._finish(pending)
        yield from queue

    def predict_files(self, paths: Iterable[PathLike]) -> Iterator[dict[str, Any]]:
        """Records of every face in ``paths`` (images, folders, videos), in order; decoding runs
        ``workers`` files ahead in background threads."""
        files = expand_inputs(paths)

        def ahead() -> Iterator[list[dict[str, Any]]]:
            with ThreadPoolExecutor(self.workers) as pool:
                window: deque[Future] = deque()
                for f in files:
                    window.append(pool.submit(self._read, f))
                    if len(window) > 2 * self.workers + self.batch_size:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()

        return self._stream(ahead())

    def predict(self, inputs: Any) -> list[dict[str, Any]]:
        """Records for ``inputs``: a PIL image, a path (image, folder, video), a list of those,
        or a float tensor (C, H, W) / (B, C, H, W) of images in [0, 1] (preprocessed here, no
        detection)."""
        if isinstance(inputs, torch.Tensor):
            x = inputs.unsqueeze(0) if inputs.ndim == 3 else inputs
            if x.ndim != 4:
                raise ValueError(f"expected a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(inputs.shape)}")
            recs = [[{"file": None, "frame": None, "box": None, "_x": self.transform(img.float())}] for img in x]
            return list(self._stream(iter(recs)))
        items: Sequence[Any] = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if all(isinstance(i, (str, os.PathLike)) for i in items):
            return list(self.predict_files(items))
        out: list[list[dict[str, Any]]] = []
        for i in items:
            if isinstance(i, Image.Image):
                from vitfer.data.io import _to_l_or_rgb

                out.append(self._faces(_to_l_or_rgb(i, 0), None, None))
            elif isinstance(i, (str, os.PathLike)):
                out.append(list(self.predict_files([i])))
            else:
                raise TypeError(f"cannot classify a {type(i).__name__}: give images, paths or a tensor")
        return list(self._stream(iter(out)))


def annotate(image_path: PathLike, records: Sequence[dict[str, Any]], out_dir: PathLike) -> Optional[Path]:
    """A copy of the image with each record's box and label drawn, as ``out_dir/<name>.png``."""
    from PIL import ImageDraw

    from vitfer.data import load_image
    from vitfer.weights.io import atomic_write

    im = load_image(image_path).convert("RGB")
    draw = ImageDraw.Draw(im)
    for r in records:
        if r.get("label") is None:
            continue
        x, y, w, h = r["box"] or [0, 0, im.width, im.height]
        p = r["probabilities"][r["label"]]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 64, 64), width=max(1, min(im.size) // 150))
        text = f"{r['label']} {100 * p:.0f}%"
        tw = draw.textlength(text)
        draw.rectangle([x, max(0, y - 12), x + tw + 4, max(12, y)], fill=(255, 64, 64))
        draw.text((x + 2, max(0, y - 12)), text, fill=(255, 255, 255))
    out = Path(out_dir) / (Path(image_path).stem + ".png")
    atomic_write(out, lambda tmp: im.save(tmp, format="PNG"))
    return out
