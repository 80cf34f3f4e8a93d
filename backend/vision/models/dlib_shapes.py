"""dlib's 5-point face shape predictor and the box conversions, shared by the dlib detectors (which
report its points as landmarks) and the dlib descriptor (which aligns faces with it).

The predictor needs only an image and a face box. Its five points are, in dlib's order: the outer and
inner corner of the image-right eye, the outer and inner corner of the image-left eye, the bottom of
the nose (checked on photos).
"""
from __future__ import annotations

import dlib
import face_recognition_models
import numpy as np

from ..detections import LANDMARK_NAMES, NUM_LANDMARKS

DLIB_POINT_COUNT = 5
# Which dlib points make up each of our landmarks (left_eye, right_eye, nose); dlib has no mouth corners.
DLIB_POINTS_OF_LANDMARK = {"left_eye": (2, 3), "right_eye": (0, 1), "nose": (4,)}


def rectangle_from_box(box: np.ndarray) -> dlib.rectangle:
    """xyxy with exclusive right/bottom edges -> dlib.rectangle, whose right/bottom are inclusive pixels."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    return dlib.rectangle(int(x1), int(y1), int(max(x2 - 1, x1)), int(max(y2 - 1, y1)))


def box_from_rectangle(rectangle: dlib.rectangle) -> list[int]:
    return [rectangle.left(), rectangle.top(), rectangle.right() + 1, rectangle.bottom() + 1]


class FivePointShapes:
    """Loads the predictor once; predict() gives one dlib shape per box."""

    def __init__(self):
        self.predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> dlib.full_object_detections:
        shapes = dlib.full_object_detections()
        for box in boxes:
            shapes.append(self.predictor(image, rectangle_from_box(box)))
        return shapes

    def landmarks(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(N, 5, 2) in our landmark order: eye centres (mean of the two corners), nose; mouth corners NaN."""
        points = np.array(
            [[(p.x, p.y) for p in shape.parts()] for shape in self.predict(image, boxes)], dtype=np.float32
        ).reshape(len(boxes), DLIB_POINT_COUNT, 2)
        landmarks = np.full((len(boxes), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        for name, dlib_points in DLIB_POINTS_OF_LANDMARK.items():
            landmarks[:, LANDMARK_NAMES.index(name)] = points[:, list(dlib_points)].mean(axis=1)
        return landmarks
