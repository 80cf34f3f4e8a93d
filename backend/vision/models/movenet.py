"""MoveNet.MultiPose Lightning (Google), as a PERSON detector that also gives each person's 17 COCO body
keypoints. The ONNX file is converted from the TF.js graph of TF Hub's movenet/multipose/lightning
(models/human/convert.sh).

The graph holds the whole model, its decoding included. It takes one RGB image as int32 0..255,
1 x H x W x 3 with H and W multiples of 32, and gives 1 x 6 x 56: six person slots, each 17 keypoints as
(y, x, score) in BODY_KEYPOINT_NAMES order, then the box (ymin, xmin, ymax, xmax) and the person's score;
coordinates are fractions of the input's height and width. Empty slots score about 0.

The image is letterboxed into a square input_size (256 in the manifest): MoveNet's model card asks for the
longer side at 256, and a larger input finds fewer people, not more (on tests/data/photos, 9 of the 14
people at 256, 8 at 384, 5 at 512): it is trained on people at that scale. Small people in a large image
are found by running it on tiles (DetectorEnsemble's tiling), not on a larger input.

Keypoints scoring below options["keypoint_threshold"] (default 0.3, the model card's advice) are NaN: not
visible, or not found.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detections import BODY_KEYPOINT_NAMES, PERSON, Detections
from ..manifest import ModelSpec
from .base import Detector, letterbox, network_input_size, onnx_session

NUM_KEYPOINTS = len(BODY_KEYPOINT_NAMES)
SLOT_WIDTH = NUM_KEYPOINTS * 3 + 5  # keypoints (y, x, score), then the box and its score


class MoveNetMultiPose(Detector):
    default_keypoint_threshold = 0.3  # MoveNet's model card

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.session = onnx_session(spec.path(self.models_dir))
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = network_input_size(self.session, spec)
        if any(side % 32 for side in self.input_size):
            raise ValueError(f"model {spec.name!r}: MoveNet's input sides must be multiples of 32, "
                             f"the manifest says {self.input_size}")
        self.keypoint_threshold = spec.options.get("keypoint_threshold", self.default_keypoint_threshold)

    def detect(self, image: np.ndarray) -> Detections:
        canvas, scale = letterbox(image, self.input_size)
        slots = self.session.run(None, {self.input_name: canvas.astype(np.int32)[None]})[0][0]
        if slots.shape[-1] != SLOT_WIDTH:
            raise ValueError(f"model {self.name!r}: {slots.shape[-1]} values per person, MoveNet.MultiPose "
                             f"gives {SLOT_WIDTH}")
        slots = slots[slots[:, -1] >= self.spec.score_threshold]
        to_pixels = np.array(self.input_size, np.float32) / scale  # fractions of the input -> image (x, y)
        keypoints = slots[:, : NUM_KEYPOINTS * 3].reshape(-1, NUM_KEYPOINTS, 3)
        points = keypoints[..., [1, 0]] * to_pixels
        points[keypoints[..., 2] < self.keypoint_threshold] = np.nan
        boxes = slots[:, [52, 51, 54, 53]] * np.tile(to_pixels, 2)  # (ymin, xmin, ymax, xmax) -> x1, y1, x2, y2
        height, width = image.shape[:2]
        return Detections(boxes, slots[:, -1], PERSON, points).clipped(width, height).valid()
