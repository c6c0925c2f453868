"""Kept importable for code written against it: the loaders now live one module a dataset
(:mod:`vitfer.data.ckplus48`, :mod:`~vitfer.data.jaffe`, :mod:`~vitfer.data.folder`,
:mod:`~vitfer.data.labels`, :mod:`~vitfer.data.fer2013`), with :mod:`~vitfer.data.base`
(:class:`FERDataset`), :mod:`~vitfer.data.sizes` (the size policy, :func:`fit_image`),
:mod:`~vitfer.data.loading` (decoding and the load report), :mod:`~vitfer.data.messages` and
:mod:`~vitfer.data.registry` (:func:`load_dataset`, :func:`find_dataset`). Import from
:mod:`vitfer.data`.
"""
from __future__ import annotations

from .base import STUDY_TEST_SIZE, FERDataset, SkippedFilesWarning
from .ckplus48 import load_ckplus48
from .expressions import CKPLUS48_CLASSES, JAFFE_CLASSES, JAFFE_CODES
from .fer2013 import load_fer2013
from .folder import PART_FOLDERS, load_image_folder
from .io import DatasetError, ImageDecodeError
from .jaffe import load_jaffe
from .labels import load_label_file
from .registry import DATASET_KINDS, find_dataset, load_dataset
from .sizes import DOMINANT_SIZE_SHARE, fit_image

__all__ = [
    "CKPLUS48_CLASSES",
    "JAFFE_CLASSES",
    "JAFFE_CODES",
    "STUDY_TEST_SIZE",
    "FERDataset",
    "SkippedFilesWarning",
    "DatasetError",
    "ImageDecodeError",
    "load_dataset",
    "find_dataset",
    "load_ckplus48",
    "load_jaffe",
    "load_image_folder",
    "load_label_file",
    "load_fer2013",
    "fit_image",
    "DATASET_KINDS",
    "PART_FOLDERS",
    "DOMINANT_SIZE_SHARE",
]
