"""RT-DETR (COCO) used for its person class, from either of its two ONNX exports.

  lyuwenyu/RT-DETR (rtdetr_pytorch / rtdetrv2_pytorch tools/export_onnx.py): inputs "images" and
      "orig_target_sizes" (1, 2) int64 = (image width, image height); outputs "labels" (1, K) contiguous
      COCO class indices (0 = person; the export returns them before any COCO category-id remapping),
      "boxes" (1, K, 4) x1, y1, x2, y2 already scaled by orig_target_sizes, i.e. in image pixels, and
      "scores" (1, K).
  ultralytics (RTDETR(...).export(format="onnx")): input "images", one output (1, K, 4 + classes):
      centre x, centre y, width, height as fractions of the input, then each class's score.

Both are fed a plain resize of the whole image to the square input (no letterbox, as both were trained
and are run upstream), RGB / 255 (mean 0, std 255 in the manifest entry). DETR-style models need no NMS;
a light one (spec.options["nms_iou"], default 0.5) still merges the rare duplicate queries.
spec.options["person_class"] (default 0) is the class index of "person".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detections import PERSON, Detections
from ..manifest import ModelSpec
from .base import Detector, cxcywh_to_xyxy, finish_detections, network_input_size, onnx_session, to_network_input

LABELLED_OUTPUTS = ["labels", "boxes", "scores"]


class RTDETR(Detector):
    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.session = onnx_session(spec.path(self.models_dir))
        inputs = [i.name for i in self.session.get_inputs()]
        self.image_input = "images" if "images" in inputs else inputs[0]
        self.takes_image_size = "orig_target_sizes" in inputs
        self.labelled_outputs = set(LABELLED_OUTPUTS) <= {o.name for o in self.session.get_outputs()}
        if self.labelled_outputs and not self.takes_image_size:
            raise ValueError(
                f"model {spec.name!r}: outputs labels/boxes/scores but has no orig_target_sizes input, "
                "so the scale of its boxes is unknown"
            )
        self.input_size = network_input_size(self.session, spec)
        self.nms_iou = spec.options.get("nms_iou", 0.5)
        self.person_class = spec.options.get("person_class", 0)

    def detect(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        feed = {self.image_input: to_network_input(image, self.spec, self.input_size)}
        if self.takes_image_size:
            feed["orig_target_sizes"] = np.array([[width, height]], dtype=np.int64)
        if self.labelled_outputs:
            labels, boxes, scores = (output[0] for output in self.session.run(LABELLED_OUTPUTS, feed))
            person = labels == self.person_class
            boxes, scores = boxes[person], scores[person]
        else:
            queries = self.session.run(None, feed)[0][0]
            boxes = cxcywh_to_xyxy(queries[:, :4]) * np.array([width, height, width, height], dtype=np.float32)
            scores = queries[:, 4 + self.person_class]
        # both branches are already in image pixels
        candidates = Detections(boxes, scores, PERSON)
        return finish_detections(candidates, image.shape, (1.0, 1.0), self.spec.score_threshold, self.nms_iou)
