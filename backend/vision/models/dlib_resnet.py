"""dlib's ResNet face descriptor (the model behind the face_recognition package): 128 numbers per face.

Each face is aligned the way the network was trained: dlib's 5-point shape predictor finds the eye
corners and nose in the face box, and dlib.get_face_chip rotates and scales the face onto a 150x150
chip from them. All chips of an image go through the network in one batch.
"""
from __future__ import annotations

from pathlib import Path

import dlib
import face_recognition_models
import numpy as np

from ..detections import Detections
from ..manifest import ModelSpec
from .base import Embedder, l2_normalise
from .dlib_shapes import FivePointShapes

# The chip side the network was trained on (dlib's documentation of compute_face_descriptor).
CHIP_SIZE = 150


class DlibResNet(Embedder):
    dim = 128

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.shapes = FivePointShapes()
        self.network = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
        # jitter > 1 averages the descriptors of that many randomly shifted copies: steadier, that many times slower.
        self.jitter = int(spec.options["jitter"])
        self.chip_padding = float(spec.options["chip_padding"])  # margin around the face, as a fraction of its size

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        if not len(faces):
            return np.zeros((0, self.dim), dtype=np.float32)
        image = np.ascontiguousarray(image, dtype=np.uint8)  # dlib refuses strided views
        shapes = self.shapes.predict(image, faces.boxes)
        chips = dlib.get_face_chips(image, shapes, size=CHIP_SIZE, padding=self.chip_padding)
        descriptors = np.array(self.network.compute_face_descriptor(chips, self.jitter), dtype=np.float32)
        return l2_normalise(descriptors)
