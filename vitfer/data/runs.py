"""A run's data: the dataset and split that a run's resolved config names.

Training (:func:`vitfer.engine.finetune`), evaluation (``vitfer evaluate``) and the report
(``vitfer report``) all rebuild a run's images through :func:`run_data`, from the config the run
recorded (``config.json``, or the checkpoint's ``finetune_config``), so the three cannot drift
apart. A run also records which images its split put where (:func:`split_record`): a rebuild is
checked against it (:func:`check_split`), and a pretraining stage leaves out the images of its
main run's validation and test parts (``exclude_images``, :func:`image_digests`).

The config is a plain mapping (the JSON a run wrote), read for ``dataset``, ``data_dir``,
``labels``, ``subject_pattern``, ``crop_faces``, ``face_margin``, ``img_size``, ``synthetic_n``,
``seed``, ``split``, ``test_size``, ``val_size``, ``n_folds``, ``fold`` and ``exclude_images``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .io import DatasetError

__all__ = ["check_split", "face_cropper", "image_digests", "run_data", "run_dataset", "run_split", "split_record"]

_logger = logging.getLogger(__name__)


def face_cropper(margin: float):
    """The load-time step of ``crop_faces``: :class:`~vitfer.data.faces.FaceCropper` (the largest
    face the Haar cascade finds, with ``margin``: the crop ``vitfer predict --detect`` gives a
    model), whose ImportError without OpenCV also names ``--no-crop-faces``."""
    from .faces import FaceCropper

    try:
        return FaceCropper(margin)
    except ImportError as e:
        raise ImportError(f"--crop-faces (the scratch recipe's default on JAFFE): {e}; or pass --no-crop-faces to "
                          f"train on the whole photos") from e


def _size(config: Mapping[str, Any], image_size: Optional[int]) -> int:
    size = config.get("img_size")
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    if image_size is None:  # a config recorded before sizes were resolved ("auto" / None)
        raise ValueError(f"the run's img_size is {size!r}, not a size: pass image_size (the model's input size)")
    return int(image_size)


def run_dataset(config: Mapping[str, Any], *, image_size: Optional[int] = None):
    """The run's whole dataset (untransformed), without the images in ``exclude_images``.

    ``image_size`` stands in for ``config["img_size"]`` when the config predates resolved sizes
    (pass the model's input size)."""
    from . import SyntheticFaces, load_dataset

    kind = config.get("dataset", "synthetic")
    size = _size(config, image_size)
    if kind == "synthetic":
        data = SyntheticFaces(n=int(config.get("synthetic_n", 1000)), image_size=max(16, size),
                              seed=int(config.get("seed", 0)))
    else:
        root = config.get("data_dir")
        if not root and kind in ("ckplus48", "jaffe"):
            root = os.environ.get("VITFER_DATA_DIR")
        labels = config.get("labels")
        if not root and not labels:
            raise ValueError(f"dataset {kind!r} needs a folder: pass data_dir (--data-dir) or set VITFER_DATA_DIR")
        kwargs: dict[str, Any] = {}
        crop = bool(config.get("crop_faces"))
        if kind == "folder":
            # Photos of any size: each is resized at load time to the run's input size (shorter
            # side, then a centre crop), so memory stays bounded.
            kwargs.update(image_size=size, labels=labels, subject_pattern=config.get("subject_pattern"))
            if crop:
                kwargs.update(preprocess=face_cropper(float(config.get("face_margin", 0.2))), face_cropped=True)
        elif crop:  # JAFFE: head-and-shoulders photos; crops of each face, resized at load time
            kwargs.update(preprocess=face_cropper(float(config.get("face_margin", 0.2))), image_size=size)
        data = load_dataset(kind, root, **kwargs)
    exclude = set(config.get("exclude_images") or ())
    if exclude:
        digests = image_digests(data, range(len(data)))
        keep = [i for i, d in enumerate(digests) if d not in exclude]
        if len(keep) < len(data):
            _logger.info("%s: left out %d images of the main run's validation and test parts", data.name,
                         len(data) - len(keep))
            data = data.subset(keep)
    return data


def run_split(data, config: Mapping[str, Any]) -> dict[str, list[int]]:
    """The run's ``train`` / ``val`` / ``test`` indices into ``data``."""
    from .splits import make_split

    return make_split(data, config.get("split", "random"), seed=int(config.get("seed", 0)),
                      test_size=config.get("test_size"), val_size=config.get("val_size", 0.1),
                      n_folds=int(config.get("n_folds", 5)), fold=int(config.get("fold", 0)))


def run_data(config: Mapping[str, Any], *, image_size: Optional[int] = None):
    """``(dataset, split)`` of a run: :func:`run_dataset` and :func:`run_split`."""
    data = run_dataset(config, image_size=image_size)
    return data, run_split(data, config)


def image_digests(data, indices: Sequence[int]) -> list[str]:
    """A content digest of each image: SHA-256 of its file where it has one (two copies of a file
    in different folders match), else of its decoded pixels (FER-2013's CSV rows, synthetic faces)."""
    out = []
    for i in indices:
        p = data.paths[i]
        h = hashlib.sha256()
        if isinstance(p, (str, os.PathLike)) and Path(p).is_file():
            h.update(Path(p).read_bytes())
        else:
            h.update(data.uint8(i).numpy().tobytes())
        out.append(h.hexdigest()[:32])
    return out


def _name(data, i: int) -> str:
    p = data.paths[i]
    root = getattr(data, "root", None)
    try:
        return Path(p).relative_to(root).as_posix() if root else str(p)
    except ValueError:
        return str(p)


def split_record(data, split: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """What a run records of its split (``metrics.json``): the indices of every part and the file
    names (relative to the dataset folder) of its validation and test images."""
    return {"indices": {k: [int(i) for i in v] for k, v in split.items()},
            "files": {k: [_name(data, i) for i in split[k]] for k in ("val", "test") if k in split}}


def check_split(data, split: Mapping[str, Sequence[int]], recorded: Optional[Mapping[str, Any]], part: str = "test") -> None:
    """Raise ``DatasetError`` when the rebuilt ``part`` is not the one the run recorded (the data
    folder changed, or another folder was given): the number of images that differ and a few names."""
    if not recorded or part not in recorded.get("files", {}):
        return
    want = list(recorded["files"][part])
    got = [_name(data, i) for i in split[part]]
    if got == want:
        return
    missing = [f for f in want if f not in set(got)]
    extra = [f for f in got if f not in set(want)]
    raise DatasetError(
        f"the {part} part rebuilt from {getattr(data, 'root', None) or data.name} is not the run's: {len(want)} images "
        f"recorded, {len(got)} rebuilt, {len(missing)} missing (e.g. {', '.join(missing[:3]) or '-'}), {len(extra)} "
        f"new (e.g. {', '.join(extra[:3]) or '-'}); point --data-dir at the data the run was trained on"
    )
