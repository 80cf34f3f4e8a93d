"""YOLO face detectors with five landmarks: YOLOv7-face and YOLOv8-face ONNX exports.

Both exports decode their grids inside the graph: boxes are centre x, centre y, width, height in
network-input pixels, landmarks are (x, y, visibility) triples in network-input pixels with the
visibility already through the sigmoid. They differ in layout, told apart by the output's shape:

  YOLOv7-face (derronqi/yolov7-face, exported with --grid): (1, N, 21) = box, objectness, face-class
      score, then 5 x (x, y, visibility); the face score is objectness * class score.
  YOLOv8-face (ultralytics pose export, e.g. derronqi/yolov8-face): (1, 20, N) = box, face score, then
      5 x (x, y, visibility), with the candidates along the last axis.

The landmark order is the insightface one used here (left eye, right eye, nose, mouth left, mouth right).
Pre-processing as in training: letterbox with grey (114) padding, RGB / 255 (mean 0, std 255 in the
manifest entry). spec.options: "nms_iou" (default 0.45); "keypoint_threshold" (default 0.5, as the
yolov7-face demo draws them): a landmark whose visibility is below it is left unknown (NaN);
"pad_value" (default 114).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detections import FACE, NUM_LANDMARKS, Detections
from ..manifest import ModelSpec
from .base import LetterboxOnnxDetector, cxcywh_to_xyxy, finish_detections

YOLOV7_FACE_COLUMNS = 4 + 2 + 3 * NUM_LANDMARKS  # box, objectness, class score, landmarks
YOLOV8_FACE_CHANNELS = 4 + 1 + 3 * NUM_LANDMARKS  # box, face score, landmarks


class YoloFace(LetterboxOnnxDetector):
    default_pad_value = 114  # the grey YOLO exports are trained with

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.keypoint_threshold = spec.options.get("keypoint_threshold", 0.5)

    def detect(self, image: np.ndarray) -> Detections:
        outputs, scale = self.run_letterboxed(image)
        output = outputs[0][0]
        if output.shape[1] == YOLOV7_FACE_COLUMNS:
            scores = output[:, 4] * output[:, 5]
            keypoints = output[:, 6:]
        elif output.shape[0] == YOLOV8_FACE_CHANNELS:
            output = output.T
            scores = output[:, 4]
            keypoints = output[:, 5:]
        else:
            raise ValueError(
                f"model {self.name!r}: output shape {output.shape} is neither YOLOv7-face (N, {YOLOV7_FACE_COLUMNS}) "
                f"nor YOLOv8-face ({YOLOV8_FACE_CHANNELS}, N)"
            )
        keypoints = keypoints.reshape(-1, NUM_LANDMARKS, 3)
        visible = keypoints[..., 2:] >= self.keypoint_threshold
        landmarks = np.where(visible, keypoints[..., :2], np.nan)
        candidates = Detections(cxcywh_to_xyxy(output[:, :4]), scores, FACE, landmarks)
        return finish_detections(candidates, image.shape, (scale, scale), self.spec.score_threshold, self.nms_iou)
