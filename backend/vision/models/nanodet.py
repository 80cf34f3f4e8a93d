"""NanoDet-m (RangiLyu/nanodet, trained on COCO), used for its person class. The ONNX file is converted
from the TF.js graph of the 416 x 416 model (models/human/convert.sh).

The network is the first NanoDet's dense GFL head over strides 8, 16 and 32. For every cell of each
stride's feature map it gives, as two outputs per stride: (1, cells, 80) class scores, already through
the sigmoid, and (1, cells, 44) box distributions: for each side of the box (left, top, right, bottom) 11
logits over the distances 0..10 strides from the cell's centre, (column + 0.5, row + 0.5) * stride. A
side's distance is the mean of its softmax (the "integral" of Generalized Focal Loss). Which output is
which is told by its shape: 80 or 44 wide, and the number of cells gives the stride.

Pre-processing as NanoDet's own configs: the image resized to the input without keeping the aspect ratio
(the first NanoDet trained that way; a letterbox found 8 of the 14 people of tests/data/photos against
11), BGR, mean (103.53, 116.28, 123.675), std (57.375, 57.12, 58.395) (in the manifest entry).
spec.options: "nms_iou" (default 0.6, NanoDet's), "person_class" (default 0, COCO's person).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detections import PERSON, Detections
from ..manifest import ModelSpec
from .base import Detector, finish_detections, network_input_size, onnx_session, stride_grid, to_network_input

STRIDES = (8, 16, 32)
BINS = 11  # distances 0..10 strides


class NanoDet(Detector):
    default_nms_iou = 0.6  # NanoDet's own

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.session = onnx_session(spec.path(self.models_dir))
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = network_input_size(self.session, spec)
        height, width = self.session.get_inputs()[0].shape[2:4]
        if (width, height) != self.input_size:
            raise ValueError(f"model {spec.name!r}: the manifest's input_size {self.input_size} is not the "
                             f"model's input, {width}x{height}")
        self.nms_iou = spec.options.get("nms_iou", self.default_nms_iou)
        self.person_class = spec.options.get("person_class", 0)
        cells, strides = stride_grid(self.input_size, STRIDES)
        self.centres = (cells + 0.5) * strides[:, None]
        self.strides = strides
        self.cells_per_stride = [int((strides == s).sum()) for s in STRIDES]

    def detect(self, image: np.ndarray) -> Detections:
        blob = to_network_input(image, self.spec, self.input_size)  # resized to the input, ratio not kept
        outputs = [output[0] for output in self.session.run(None, {self.input_name: blob})]
        scores = self._by_stride(outputs, lambda o: o.shape[1] != BINS * 4)[:, self.person_class]
        kept = np.flatnonzero(scores >= self.spec.score_threshold)  # decode only the candidates
        logits = self._by_stride(outputs, lambda o: o.shape[1] == BINS * 4)[kept].reshape(-1, 4, BINS)
        odds = np.exp(logits - logits.max(axis=2, keepdims=True))
        distances = (odds / odds.sum(axis=2, keepdims=True)) @ np.arange(BINS, dtype=np.float32)
        distances *= self.strides[kept, None]
        centres = self.centres[kept]
        boxes = np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)
        scale = (self.input_size[0] / image.shape[1], self.input_size[1] / image.shape[0])
        return finish_detections(Detections(boxes, scores[kept], PERSON), image.shape, scale,
                                 self.spec.score_threshold, self.nms_iou)

    def _by_stride(self, outputs: list[np.ndarray], wanted) -> np.ndarray:
        """The outputs of one kind (scores or distributions), stacked stride by stride like the cells."""
        by_cells = {len(o): o for o in outputs if wanted(o)}
        if sorted(by_cells) != sorted(self.cells_per_stride):
            raise ValueError(f"model {self.name!r}: outputs for {sorted(by_cells)} cells, but a {self.input_size} "
                             f"input has {self.cells_per_stride} cells at strides {STRIDES}")
        return np.concatenate([by_cells[cells] for cells in self.cells_per_stride])
