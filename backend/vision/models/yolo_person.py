"""COCO-trained YOLO detectors used for their person class: YOLOX and YOLOv8 ONNX exports.

  YOLOX (Megvii-BaseDetection/YOLOX, tools/export_onnx.py, the release .onnx files): (1, N, 5 + classes)
      with one row per cell of the stride 8, 16, 32 feature maps. The grid is NOT decoded in the graph:
      x, y are offsets within the cell, w, h are log sizes, both in units of the stride; objectness and
      class scores are already through the sigmoid. Person score = objectness * person class score.
      Trained on BGR 0..255 without normalisation (color "bgr", mean 0, std 1), letterboxed top-left.
  YOLOv8 (ultralytics export): (1, 4 + classes, N), boxes already decoded (centre x, centre y, width,
      height in network-input pixels), class scores through the sigmoid, no objectness. Trained on
      RGB / 255 (mean 0, std 255).

The two are told apart by which axis is the short one: the attributes (tens) against the candidates
(thousands). Both are fed a letterbox with grey (114) padding, as both were trained with it.
spec.options: "nms_iou" (default 0.45), "person_class" (default 0, COCO's person), "strides" of the
YOLOX grid (default [8, 16, 32]), "pad_value" (default 114).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detections import PERSON, Detections
from ..manifest import ModelSpec
from .base import LetterboxOnnxDetector, cxcywh_to_xyxy, finish_detections, stride_grid


class YoloPerson(LetterboxOnnxDetector):
    default_pad_value = 114  # the grey YOLO exports are trained with

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.person_class = spec.options.get("person_class", 0)
        self.cells, self.cell_strides = stride_grid(self.input_size, spec.options.get("strides", (8, 16, 32)))

    def detect(self, image: np.ndarray) -> Detections:
        outputs, scale = self.run_letterboxed(image)
        output = outputs[0][0]
        if output.shape[0] < output.shape[1]:  # YOLOv8: attributes first
            rows = output.T
            boxes = cxcywh_to_xyxy(rows[:, :4])
            scores = rows[:, 4 + self.person_class]
        else:
            boxes = self._decode_yolox_grid(output[:, :4])
            scores = output[:, 4] * output[:, 5 + self.person_class]
        candidates = Detections(boxes, scores, PERSON)
        return finish_detections(candidates, image.shape, (scale, scale), self.spec.score_threshold, self.nms_iou)

    def _decode_yolox_grid(self, raw: np.ndarray) -> np.ndarray:
        if len(raw) != len(self.cells):
            raise ValueError(
                f"model {self.name!r}: {len(raw)} YOLOX rows, but a {self.input_size} input has {len(self.cells)} "
                "grid cells: check the manifest's input_size and options.strides"
            )
        strides = self.cell_strides[:, None]
        centres = (raw[:, :2] + self.cells) * strides
        sizes = np.exp(raw[:, 2:4]) * strides
        return cxcywh_to_xyxy(np.concatenate([centres, sizes], axis=1))
