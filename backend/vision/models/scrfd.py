"""SCRFD face detector (InsightFace), as exported to ONNX by insightface/detection/scrfd.

The network is a dense head over a pyramid of feature maps. For every cell of every stride it emits,
per anchor: a face score (already through the sigmoid), four distances from the cell's anchor point
(column * stride, row * stride) to the box's left, top, right and bottom edges, and (the "kps" models)
ten offsets from that point to the five landmarks; distances and offsets are in units of the stride.
The outputs come in three groups, one tensor per stride in each: all scores (N, 1), then all distances
(N, 4), then all landmark offsets (N, 10), each with or without a leading batch axis of 1 depending on
the exporter.

How many outputs there are says which model it is:
   6: strides 8, 16, 32, no landmarks        9: strides 8, 16, 32, with landmarks
  10: strides 8 ... 128, no landmarks        15: strides 8 ... 128, with landmarks
The anchors per cell (2 for the three-stride models, 1 for the five-stride ones) are read from the
output sizes rather than assumed.

Pre-processing as in insightface: letterbox into the input with black padding, mean 127.5, std 128,
RGB (set in the manifest entry). spec.options["nms_iou"] defaults to 0.4, insightface's value.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detections import FACE, NUM_LANDMARKS, Detections
from ..manifest import ModelSpec
from .base import LetterboxOnnxDetector, finish_detections, stride_grid

# number of outputs -> (strides, whether the model predicts landmarks)
OUTPUT_LAYOUTS = {
    6: ((8, 16, 32), False),
    9: ((8, 16, 32), True),
    10: ((8, 16, 32, 64, 128), False),
    15: ((8, 16, 32, 64, 128), True),
}


def anchor_points(input_size: tuple[int, int], strides, anchors_per_level: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's point in network pixels (N, 2) and its stride (N,), in the order of the outputs.

    A cell's point is (column * stride, row * stride), its top-left corner; a cell's anchors are consecutive.
    """
    points, point_strides = [], []
    for stride, anchors in zip(strides, anchors_per_level):
        cells, cell_strides = stride_grid(input_size, [stride])
        if anchors % len(cells):
            raise ValueError(
                f"SCRFD output for stride {stride} has {anchors} rows, not a multiple of the "
                f"{len(cells)} cells of a {input_size} input: is the manifest's input_size the model's?"
            )
        per_cell = anchors // len(cells)
        points.append(np.repeat(cells * stride, per_cell, axis=0))
        point_strides.append(np.repeat(cell_strides, per_cell))
    return np.concatenate(points), np.concatenate(point_strides)


class SCRFD(LetterboxOnnxDetector):
    default_nms_iou = 0.4  # insightface's value

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        num_outputs = len(self.session.get_outputs())
        if num_outputs not in OUTPUT_LAYOUTS:
            raise ValueError(
                f"model {spec.name!r}: an SCRFD export has {sorted(OUTPUT_LAYOUTS)} outputs, this one has {num_outputs}"
            )
        self.strides, self.has_landmarks = OUTPUT_LAYOUTS[num_outputs]

    def detect(self, image: np.ndarray) -> Detections:
        outputs, scale = self.run_letterboxed(image)
        outputs = [output[0] if output.ndim == 3 else output for output in outputs]  # drop the batch axis
        levels = len(self.strides)
        scores, distances, offsets = outputs[:levels], outputs[levels : 2 * levels], outputs[2 * levels :]
        points, strides = anchor_points(self.input_size, self.strides, [len(s) for s in scores])
        distances = np.concatenate(distances) * strides[:, None]
        boxes = np.concatenate([points - distances[:, :2], points + distances[:, 2:]], axis=1)
        landmarks = None
        if self.has_landmarks:
            offsets = np.concatenate(offsets).reshape(-1, NUM_LANDMARKS, 2) * strides[:, None, None]
            landmarks = points[:, None, :] + offsets
        candidates = Detections(boxes, np.concatenate(scores).ravel(), FACE, landmarks)
        return finish_detections(candidates, image.shape, (scale, scale), self.spec.score_threshold, self.nms_iou)
