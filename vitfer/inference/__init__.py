"""Inference helpers: face detection and cropping (:mod:`vitfer.inference.detect`).

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

__all__ = ["Box", "FaceDetector", "crop_face", "crop_largest_face", "largest_face"]
