"""Classifying faces with a trained checkpoint: photos, folders and videos, in batches.

    from vitfer.inference import Predictor
    p = Predictor("runs/x", detect=True)     # a run folder (its model.safetensors) or a checkpoint file
    for record in p.predict(["photo.jpg", "folder/", "clip.mp4"]):
        print(record["file"], record["box"], record["label"])

Every face (or, without ``detect``, every image) gives one record::

    {"file": "photo.jpg", "frame": None, "box": [x, y, w, h] | None, "label": "happy",
     "probabilities": {"anger": 0.01, ...}}

An image without a face gives a record with ``"label": None`` and ``"note": "no face found"``;
a file that cannot be read gives ``{"file": ..., "error": "..."}`` and the others go on.
Files are decoded, and faces detected and preprocessed, in background threads while the model
runs on full batches of ``batch_size`` faces (``torch.inference_mode``; bf16 autocast with
``precision="bf16"``; the ResNets run channels-last). A video is streamed: its frames are decoded
while the model runs, at most about one batch ahead, so memory does not grow with its length.

Faces are cropped as the checkpoint's run cropped them for training (its ``face_margin``), and a
model trained on face crops (``crop_faces``) that is given whole images logs a warning naming
``detect``.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image

__all__ = ["VIDEO_EXTENSIONS", "Predictor", "annotate", "expand_inputs", "output_names"]

_logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
PRECISIONS = ("fp32", "bf16")
PathLike = Union[str, os.PathLike]

_DONE = object()  # a file's last item in its queue


class _Failed:
    """An exception raised while reading a file ahead, for the consumer to raise."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _expand(paths: Iterable[PathLike]) -> list[tuple[Path, Path]]:
    """``(file, name)`` of every file to classify; ``name`` is its path relative to the folder
    given, or for a file given itself that path when it is relative and stays below the current
    folder, else its name."""
    from vitfer.data.io import is_image_file

    out: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*")) if f.is_file() and not any(part.startswith(".") for part in
                     f.relative_to(p).parts) and (is_image_file(f) or _is_video(f))]
            if not found:
                _logger.warning("no image or video in %s", p)
            out += [(f, f.relative_to(p)) for f in found]
        else:
            below = not p.is_absolute() and ".." not in p.parts and p.name not in ("", ".")
            out.append((p, Path(os.path.normpath(p)) if below else Path(p.name or "input")))
    return out


def expand_inputs(paths: Iterable[PathLike]) -> list[Path]:
    """Files to classify: each path itself, or a folder's images and videos (recursive, sorted,
    hidden files left out). A path that does not exist is kept: reading it reports the error."""
    return [f for f, _ in _expand(paths)]


def output_names(paths: Iterable[PathLike]) -> dict[Path, Path]:
    """A distinct relative output name for every file of ``paths`` (as :func:`expand_inputs`
    finds them): its path relative to the folder given (``photos/`` -> ``a/face.jpg``), or for a
    file given itself the path as given (relative, below the current folder) or its name. Two
    different inputs never share a name: a later one that would gets ``~2``, ``~3`` ... added
    (``face.jpg~2``), with a warning."""
    names: dict[Path, Path] = {}
    taken: set[str] = set()
    for f, name in _expand(paths):
        if f in names:
            continue
        unique, k = name, 1
        while os.path.normcase(str(unique)) in taken:
            k += 1
            unique = name.with_name(f"{name.name}~{k}")
        if k > 1:
            _logger.warning("%s: %s is taken by another input, named %s instead", f, name, unique)
        taken.add(os.path.normcase(str(unique)))
        names[f] = unique
    return names


class Predictor:
    """A checkpoint ready to classify faces (see the module docstring).

    Args:
        checkpoint: a vitfer checkpoint (``vitfer finetune`` / ``vitfer.save``), or a run folder
            (its ``model.safetensors``).
        device: ``auto`` (CUDA when there is a GPU), ``cpu``, ``cuda``.
        precision: ``fp32`` or ``bf16`` (autocast; on CPUs with AVX-512 BF16 much faster); ``None``:
            the precision the checkpoint's run tested in (its resolved ``amp``: ``bf16`` or fp32),
            so predictions are the run's; fp32 for a checkpoint that records none.
        detect: find faces with OpenCV's Haar cascade first (the ``detect`` extra) and classify
            each, cropped with ``margin``; else the whole image is the face.
        margin: the margin around a detected face, as a fraction of its size (as
            :func:`vitfer.data.faces.crop_face`); ``None``: as the checkpoint was trained (its run's
            ``face_margin``; 0.2 for a checkpoint that records none).
        batch_size: faces per forward.
        every: for videos, classify every ``every``-th frame.
        workers: background threads that decode, detect and preprocess.

    Attributes:
        checkpoint: the checkpoint file read.
        margin: the face margin in use (resolved from the checkpoint when ``margin=None``).
        trained_on_crops: whether the checkpoint's run trained on detected face crops
            (``crop_faces``); such a model given whole images (``detect=False``) logs a warning,
            once per Predictor.
    """

    def __init__(
        self, checkpoint: PathLike, *, device: str = "auto", precision: Optional[str] = None, detect: bool = False,
        margin: Optional[float] = None, batch_size: int = 64, every: int = 10, workers: int = 2,
    ) -> None:
        import vitfer
        from vitfer.data import build_transforms
        from vitfer.runtime import resolve_device

        from .checkpoint import resolve_checkpoint, trained_face_crop

        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        if batch_size < 1 or every < 1 or workers < 1:
            raise ValueError("batch_size, every and workers must be >= 1")
        if margin is not None and not (isinstance(margin, numbers.Real) and not isinstance(margin, bool)
                                       and math.isfinite(margin) and margin > -0.5):
            raise ValueError(f"margin must be a finite number > -0.5 (a fraction of the face's size), got {margin!r}")
        self.device = resolve_device(device)
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.model = vitfer.load(self.checkpoint, map_location=self.device)  # eval mode; ResNets run channels-last
        if precision is None:
            trained = ((getattr(self.model, "checkpoint_info", None) or {}).get("finetune_config") or {}).get("amp")
            precision = "bf16" if trained == "bf16" else "fp32"
        self.precision, self.batch_size, self.every, self.workers = precision, batch_size, every, workers
        self.trained_on_crops, trained_margin = trained_face_crop(self.model)
        self.margin = trained_margin if margin is None else float(margin)
        self._warned_whole = False
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

    def _warn_whole_images(self) -> None:
        """Warn (once) that a model trained on face crops is given whole images."""
        if self.detector is None and self.trained_on_crops and not self._warned_whole:
            self._warned_whole = True
            _logger.warning(
                "%s was trained on face crops (crop_faces, margin %g) but is given whole images: pass --detect "
                "(Predictor(detect=True)) to classify each face cropped as in training",
                self.checkpoint, self.margin)

    def _read(self, path: Path, emit: Callable[[list[dict[str, Any]]], None]) -> None:
        """Decode, detect and preprocess one file, handing the records of each image (each
        sampled frame of a video, as it is decoded) to ``emit``; a failure ends with an error
        record."""
        from vitfer.data import DatasetError, load_image

        try:
            if _is_video(path):
                for frame, im in self._frames(path):
                    emit(self._faces(im, str(path), frame))
            else:
                emit(self._faces(load_image(path), str(path), None))
        except (DatasetError, OSError, ValueError) as e:
            emit([{"file": str(path), "error": str(e)}])

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

    def _stream(self, items: Iterable[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """Records in input order, the model running on batches of exactly ``batch_size`` faces
        (the last one smaller); each record is yielded as soon as it and those before it are done."""
        waiting: deque[dict[str, Any]] = deque()  # records in order, some waiting for the model
        pending: list[dict[str, Any]] = []
        for recs in items:
            for r in recs:
                waiting.append(r)
                if "_x" in r:
                    pending.append(r)
            while len(pending) >= self.batch_size:
                self._finish(pending[: self.batch_size])
                pending = pending[self.batch_size:]
            while waiting and "_x" not in waiting[0]:
                yield waiting.popleft()
        self._finish(pending)
        yield from waiting

    def _ahead(self, files: Sequence[Path]) -> Iterator[list[dict[str, Any]]]:
        """The records of each image and each sampled video frame of ``files``, in order.

        Up to ``2 * workers + batch_size`` files are read ahead by ``workers`` threads; each file
        hands its records to its own queue of at most ``batch_size`` images / frames, so a video
        being read ahead waits there and memory stays bounded by about one batch per worker."""
        stop = threading.Event()

        class Stopped(Exception):
            pass

        def produce(path: Path, q: queue.Queue) -> None:
            def put(item: Any) -> None:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.05)
                        return
                    except queue.Full:
                        pass
                raise Stopped

            try:
                self._read(path, put)
                put(_DONE)
            except Stopped:
                pass
            except BaseException as e:  # handed to the consumer, which raises it
                try:
                    put(_Failed(e))
                except Stopped:
                    pass

        window: deque[queue.Queue] = deque()
        todo, ahead = iter(files), 2 * self.workers + self.batch_size + 1
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vitfer-predict")
        try:
            while True:
                while len(window) < ahead and (f := next(todo, None)) is not None:
                    window.append(queue.Queue(maxsize=self.batch_size))
                    pool.submit(produce, f, window[-1])
                if not window:
                    return
                q = window.popleft()
                while (item := q.get()) is not _DONE:
                    if isinstance(item, _Failed):
                        raise item.error
                    yield item
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def predict_files(self, paths: Iterable[PathLike]) -> Iterator[dict[str, Any]]:
        """Records of every face in ``paths`` (images, folders, videos), in order; decoding runs
        ahead in ``workers`` background threads, at most about one batch of frames a video."""
        files = expand_inputs(paths)
        self._warn_whole_images()
        return self._stream(self._ahead(files))

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
                from vitfer.data.io import to_l_or_rgb

                self._warn_whole_images()
                out.append(self._faces(to_l_or_rgb(i, 0), None, None))
            elif isinstance(i, (str, os.PathLike)):
                out.append(list(self.predict_files([i])))
            else:
                raise TypeError(f"cannot classify a {type(i).__name__}: give images, paths or a tensor")
        return list(self._stream(iter(out)))


def annotate(image_path: PathLike, records: Sequence[dict[str, Any]], out_dir: PathLike,
             name: Optional[PathLike] = None) -> Path:
    """A copy of the image with each record's box and label drawn, as ``out_dir/<name>.png``.

    ``name``: the image's relative output name (:func:`output_names` gives one to each input, its
    path relative to the folder given, suffix kept: ``a/face.jpg`` -> ``out_dir/a/face.jpg.png``);
    default the image's file name."""
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
    rel = Path(name) if name is not None else Path(Path(image_path).name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"annotate: the output name {str(rel)!r} must be a relative path below {out_dir}")
    out = Path(out_dir) / rel.with_name(rel.name + ".png")
    atomic_write(out, lambda tmp: im.save(tmp, format="PNG"))
    return out
