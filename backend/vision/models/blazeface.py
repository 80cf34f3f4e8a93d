"""BlazeFace, MediaPipe's face detector: the short-range and full-range .tflite models of the mediapipe wheel
(run with LiteRT) and the back-camera model (converted from TF.js to ONNX, models/human/).

All three are SSD-style: one score and one regression row per anchor. The regression row is a box
(x centre, y centre, width, height) and six keypoints, all in input-tensor pixels relative to the anchor
centre. Anchor options from mediapipe/modules/face_detection/face_detection_*.pbtxt; decoding in mediapipe_ssd.py.
"""
from __future__ import annotations

import numpy as np

from ..detections import FACE, NUM_LANDMARKS, Detections
from ..manifest import ModelSpec
from .mediapipe_ssd import MediaPipeSSD

# Anchor layouts of the two face models (SsdAnchorsCalculator options in MediaPipe's face detection graphs).
# A second anchor per location exists when interpolated_scale_aspect_ratio > 0.
FACE_ANCHOR_OPTIONS = {
    "short_range": {"strides": (8, 16, 16, 16), "interpolated_scale_aspect_ratio": 1.0},  # 128 px: 896 anchors
    "full_range": {"strides": (4,), "interpolated_scale_aspect_ratio": 0.0},  # 192 px: 2304 anchors
    # face_detection_back_desktop_live.pbtxt (MediaPipe 0.8): 256 px, 896 anchors
    "back": {"strides": (16, 32, 32, 32), "interpolated_scale_aspect_ratio": 1.0},
}

# BlazeFace's six keypoints are named from the subject's view: keypoint 0 ("right eye") is the subject's
# right eye, which appears on the image's left. So keypoint 0 is our left_eye (image-left), 1 our
# right_eye, 2 the nose tip. 3 is the mouth centre and 4, 5 the ear tragions, which our five-point set
# lacks; the mouth corners stay NaN.
KEYPOINT_TO_LANDMARK = {0: 0, 1: 1, 2: 2}  # BlazeFace keypoint index -> LANDMARK_NAMES index


class BlazeFace(MediaPipeSSD):
    """spec.options["variant"]: "short_range" (128x128 input, faces within about 2 m of the camera),
    "full_range" (192x192, also small faces, up to about 5 m) or "back" (256x256, the back camera's model:
    faces from about a tenth of the input's side).

    The boxes are kept as the model gives them: square, from the forehead (above the eyebrows, no hair)
    to just below the chin and from cheek to cheek; a bit tighter at the top than most detectors' boxes.
    """

    def __init__(self, spec: ModelSpec, models_dir):
        variant = spec.options.get("variant")
        if variant not in FACE_ANCHOR_OPTIONS:
            raise ValueError(f"model {spec.name!r}: options.variant must be one of {sorted(FACE_ANCHOR_OPTIONS)}")
        super().__init__(spec, models_dir, **FACE_ANCHOR_OPTIONS[variant])

    def detect(self, image: np.ndarray) -> Detections:
        boxes, keypoints, scores = self.detect_keypoints(image)
        landmarks = np.full((len(boxes), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        for keypoint, landmark in KEYPOINT_TO_LANDMARK.items():
            landmarks[:, landmark] = keypoints[:, keypoint]
        height, width = image.shape[:2]
        return Detections(boxes, scores, FACE, landmarks).clipped(width, height).valid()
