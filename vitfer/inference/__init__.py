"""Inference: classifying faces in photos, folders and videos (:class:`Predictor`), face
detection and cropping (:mod:`vitfer.inference.detect`).

OpenCV is optional (``pip install 'vitfer[detect]'``); it is imported only when a detector is
built, so importing this package never needs it.
"""
from .detect import (
    Box,
    FaceDetector,
    crop_face,
    crop_largest_face,
    largest_face,
)

from .predict import Predictor, annotate, expand_inputs

__all__ = ["Box", "FaceDetector", "Predictor", "annotate", "crop_face", "crop_largest_face", "expand_inputs",
           "largest_face"]
