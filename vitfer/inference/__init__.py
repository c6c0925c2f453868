"""Inference: classifying faces in photos, folders and videos (:class:`Predictor`), face
detection and cropping (:mod:`vitfer.data.faces`, shared with training), ONNX export (:mod:`vitfer.inference.export`).

OpenCV is optional (``pip install 'vitfer[detect]'``); it is imported only when a detector is
built, so importing this package never needs it.
"""
from vitfer.data.faces import (
    Box,
    FaceDetector,
    crop_face,
    crop_largest_face,
    largest_face,
)

from .checkpoint import DEFAULT_MARGIN, resolve_checkpoint, trained_face_crop
from .export import ONNXMismatchError, check_onnx, export_checkpoint, export_onnx, read_onnx_metadata
from .predict import Predictor, annotate, expand_inputs, output_names

__all__ = ["Box", "DEFAULT_MARGIN", "FaceDetector", "ONNXMismatchError", "Predictor", "annotate", "check_onnx",
           "crop_face", "crop_largest_face", "expand_inputs", "export_checkpoint", "export_onnx", "largest_face",
           "output_names", "read_onnx_metadata", "resolve_checkpoint", "trained_face_crop"]
