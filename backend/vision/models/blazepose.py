"""BlazePose's person detector (MediaPipe pose_detection.tflite, 224x224 input), run with LiteRT, as a
PERSON box detector.

The network is a BlazeFace-style SSD (see blazeface.py) whose rows hold a box and four keypoints:
0 the hip centre, 1 a point that encodes the full body's size and rotation, 2 the shoulder centre and
3 the same kind of point for the upper body. MediaPipe documents the box as the face's; in practice it
sits loosely around the lower face and neck. No row gives the body's extent, so the PERSON box is
derived from the keypoints (person_boxes below).
"""
from __future__ import annotations

import numpy as np

from ..detections import PERSON, Detections
from ..manifest import ModelSpec
from .mediapipe_ssd import MediaPipeSSD

# SsdAnchorsCalculator options of MediaPipe's pose detection graph: 28x28, 14x14 and three 7x7 layers,
# two anchors per location and layer, 2254 anchors.
POSE_ANCHOR_OPTIONS = {"strides": (8, 16, 32, 32, 32), "interpolated_scale_aspect_ratio": 1.0}

HIP, FULL_BODY_SCALE = 0, 1

# Body proportions in units of the full-body radius r = |scale point - hip centre| (see person_boxes),
# from typical human proportions; on the test photos any HALF_WIDTH from 0.3 to 0.5 matches the same people.
HEAD_REACH = 1.0  # the scale point lies about at the top of the head
LEG_REACH = 1.0  # feet about r below the hips
HALF_WIDTH = 0.35  # shoulders and arms: about 0.7 r across


def person_boxes(face_boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Axis-aligned body boxes (N, 4) from the detector's face boxes and keypoints, in the same pixels.

    MediaPipe crops a person for its landmark model from the circle around the hip centre through the
    full-body scale point (AlignmentPointsRectsCalculator: a square of side 2r centred on the hips,
    rotated so that hips -> scale point points up): the whole body fits in it, the head near the scale
    point and the feet about r below the hips. That square is far wider than a person, so the box here
    keeps the circle's vertical reach and takes its width from body proportions:
    - head and torso: a band from the hips to the scale point along the body's axis, HALF_WIDTH * r to
      each side (the axis leans with the torso, so a leaning person's box leans with it);
    - legs: straight down from the hips by LEG_REACH * r, as wide. Legs hang down in the picture whether
      a person stands or sits; continuing a leaning torso's axis below the hips would push the box
      sideways (seen on people seated at a table);
    - the face box, so the head stays inside when the scale point falls short of it.
    The box is the hull of these. People cut off by the frame get boxes running past the border;
    detect() clips them to the image.
    """
    hips = keypoints[:, HIP]
    axis = keypoints[:, FULL_BODY_SCALE] - hips
    radius = np.linalg.norm(axis, axis=1, keepdims=True)
    up = axis / np.maximum(radius, 1e-6)
    across = np.stack([-up[:, 1], up[:, 0]], axis=1) * HALF_WIDTH * radius
    head = hips + up * HEAD_REACH * radius
    feet = hips + np.array([0.0, LEG_REACH]) * radius  # image y grows downwards
    sideways = np.array([HALF_WIDTH, 0.0]) * radius
    corners = np.stack(
        [head - across, head + across, hips - across, hips + across,  # the (leaning) torso band
         hips - sideways, feet + sideways,  # opposite corners of the upright legs rectangle
         face_boxes[:, :2], face_boxes[:, 2:]],
        axis=1,
    )
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


class BlazePosePerson(MediaPipeSSD):
    """PERSON boxes from BlazePose's detector; landmarks stay NaN (its keypoints are body points, not
    the face's five)."""

    def __init__(self, spec: ModelSpec, models_dir):
        super().__init__(spec, models_dir, **POSE_ANCHOR_OPTIONS)

    def detect(self, image: np.ndarray) -> Detections:
        face_boxes, keypoints, scores = self.detect_keypoints(image)
        height, width = image.shape[:2]
        return Detections(person_boxes(face_boxes, keypoints), scores, PERSON).clipped(width, height).valid()
