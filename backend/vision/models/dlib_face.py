"""dlib's two face detectors: the HOG + linear SVM frontal detector and the MMOD CNN detector.

Neither predicts landmarks; the eye centres and the nose come from dlib's 5-point shape predictor run
on each found box (see dlib_shapes), the mouth corners stay unknown (NaN).

Scores. Both detectors are trained with the same max-margin objective (MMOD, King 2015: the HOG one
as a structural SVM, the CNN with the MMOD loss), so their raw scores share units: 0 is the decision
boundary, and dlib only reports boxes above it; 1 is the margin that training pushes true faces to.
Weighted box fusion weighs each box by its score next to the probabilities of the other detectors,
so the margin goes through a logistic curve anchored on those two points: 0 -> 0.5 (a face at dlib's
own threshold counts half) and 1 -> 0.95 (a face at the training margin counts like a confident
detection from MTCNN or BlazeFace). The curve is monotone, so dlib's ranking is kept. As dlib reports
nothing below its boundary, a score_threshold under 0.5 lets everything it finds through.
"""
from __future__ import annotations

from pathlib import Path

import dlib
import face_recognition_models
import numpy as np

from ..detections import FACE, Detections
from ..manifest import ModelSpec
from .base import Detector
from .dlib_shapes import FivePointShapes, box_from_rectangle

# The logistic slope that maps a margin of 1 to 0.95: 1 / (1 + exp(-log(19))) = 0.95.
MARGIN_SLOPE = np.log(19.0)


def margin_to_probability(margins: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-MARGIN_SLOPE * np.asarray(margins, dtype=np.float32)))


class DlibFaceDetector(Detector):
    """What the two dlib detectors share; subclasses only say how to get boxes and margins."""

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        # How often the image is doubled before detection: each time finds faces half as small, 4x slower.
        self.upsample = int(spec.options["upsample"])
        self.shapes = FivePointShapes()

    def find(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) xyxy boxes and (N,) raw margins."""
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> Detections:
        image = np.ascontiguousarray(image, dtype=np.uint8)  # dlib refuses strided views
        boxes, margins = self.find(image)
        scores = margin_to_probability(margins)
        keep = scores >= self.spec.score_threshold
        boxes = boxes.reshape(-1, 4)[keep]
        faces = Detections(boxes, scores[keep], FACE, self.shapes.landmarks(image, boxes))
        return faces.clipped(image.shape[1], image.shape[0]).valid()


class DlibHogFace(DlibFaceDetector):
    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.detector = dlib.get_frontal_face_detector()

    def find(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # run() rather than __call__ because only run() returns the SVM margins; threshold 0 is dlib's own.
        rectangles, margins, _ = self.detector.run(image, self.upsample, 0.0)
        return np.array([box_from_rectangle(r) for r in rectangles], dtype=np.float32), np.array(margins)


class DlibMmodFace(DlibFaceDetector):
    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.detector = dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())

    def find(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = self.detector(image, self.upsample)
        boxes = np.array([box_from_rectangle(d.rect) for d in found], dtype=np.float32)
        return boxes, np.array([d.confidence for d in found])
