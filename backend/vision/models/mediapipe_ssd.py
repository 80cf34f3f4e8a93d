"""What MediaPipe's SSD-style detectors share (BlazeFace and the BlazePose person detector), run with LiteRT
(the .tflite files of the mediapipe wheel) or ONNX Runtime (BlazeFace back-camera, converted from TF.js).

One score and one regression row per anchor; the row is a box (x centre, y centre, width, height) and
keypoints, all in input-tensor pixels relative to the anchor centre. The decoding follows what MediaPipe's
SsdAnchorsCalculator and TensorsToDetectionsCalculator do for these models.
"""
from __future__ import annotations

from itertools import groupby
from typing import Sequence

import numpy as np

from ..detections import box_iou
from ..manifest import ModelSpec
from .base import Detector, OnnxModel, letterbox, to_network_input
from .litert import LiteRTModel

# MediaPipe merges detections overlapping by more than this IoU (face and pose graphs alike).
MEDIAPIPE_NMS_IOU = 0.3

def ssd_anchor_centres(input_size: int, strides: Sequence[int], interpolated_scale_aspect_ratio: float) -> np.ndarray:
    """(N, 2) anchor centres (x, y) normalised to the square input, in the order of the model's outputs.

    MediaPipe's SsdAnchorsCalculator with one aspect ratio (1.0), anchor offset 0.5 and fixed_anchor_size:
    every anchor is a unit box, so only its centre matters (the network regresses absolute sizes).
    Consecutive layers with the same stride share one feature map: their anchors stack at each location.
    Each layer has one anchor per location, plus one more when interpolated_scale_aspect_ratio > 0.
    """
    anchors_per_layer = 1 + (interpolated_scale_aspect_ratio > 0)
    centres = []
    for stride, layers in groupby(strides):
        grid = int(np.ceil(input_size / stride))
        ys, xs = np.mgrid[0:grid, 0:grid]
        cells = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) / grid  # row by row, as the model flattens
        centres.append(np.repeat(cells, anchors_per_layer * len(list(layers)), axis=0))
    return np.concatenate(centres).astype(np.float32)


def decode_ssd(regressors: np.ndarray, anchors: np.ndarray, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Regression rows (N, 4 + 2K) -> boxes (N, 4) xyxy and keypoints (N, K, 2), normalised to the input.

    Offsets and sizes are in input pixels (MediaPipe's x/y/w/h_scale equal the input size) and, with unit
    anchors, simply add to the anchor centre.
    """
    offsets = regressors / input_size
    centres = anchors + offsets[:, 0:2]
    half_sizes = offsets[:, 2:4] / 2
    boxes = np.concatenate([centres - half_sizes, centres + half_sizes], axis=1)
    num_keypoints = (regressors.shape[1] - 4) // 2
    keypoints = anchors[:, None, :] + offsets[:, 4:].reshape(len(offsets), num_keypoints, 2)
    return boxes, keypoints


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED suppression: each cluster of boxes overlapping the best remaining one by more
    than iou_threshold becomes one detection, its box and keypoints the score-weighted mean of the
    cluster, its score the best one's.

    Chosen over plain NMS because it is what these models were tuned with: their anchors are dense (a face
    fires on many neighbouring anchors), and averaging those hits gives steadier, better centred boxes and
    keypoints than keeping the single best (the BlazeFace paper's "blending" tie resolution).
    """
    overlaps = box_iou(boxes, boxes)
    remaining = np.argsort(-scores, kind="stable")
    kept_boxes, kept_keypoints, kept_scores = [], [], []
    while remaining.size:
        best = remaining[0]
        in_cluster = overlaps[best, remaining] > iou_threshold
        in_cluster[0] = True  # a degenerate box has IoU 0 with itself but still forms its own cluster
        cluster = remaining[in_cluster]
        weights = scores[cluster] / scores[cluster].sum()
        kept_boxes.append(weights @ boxes[cluster])
        kept_keypoints.append(np.tensordot(weights, keypoints[cluster], axes=1))
        kept_scores.append(scores[best])
        remaining = remaining[~in_cluster]
    num_keypoints = keypoints.shape[1]
    return (
        np.asarray(kept_boxes, np.float32).reshape(-1, 4),
        np.asarray(kept_keypoints, np.float32).reshape(-1, num_keypoints, 2),
        np.asarray(kept_scores, np.float32),
    )


class MediaPipeSSD(Detector):
    """What BlazeFace and the BlazePose detector share: a model with a square NHWC input (a .tflite file run
    by LiteRT, or an .onnx file), its anchors, and detect_keypoints(), which returns the model's boxes and
    keypoints in the image's pixels.
    """

    def __init__(self, spec: ModelSpec, models_dir, strides: Sequence[int], interpolated_scale_aspect_ratio: float):
        super().__init__(spec, models_dir)
        path = spec.path(self.models_dir)
        self.model = OnnxModel(path) if path.suffix == ".onnx" else LiteRTModel(path)
        width, height = spec.input_size
        if width != height or self.model.input_shape[1:3] != (height, width):
            raise ValueError(f"model {spec.name!r}: manifest input_size {spec.input_size} does not match "
                             f"the model's input {self.model.input_shape}")
        self.input_size = width
        self.anchors = ssd_anchor_centres(width, strides, interpolated_scale_aspect_ratio)
        by_width = {}
        for shape in self.model.output_shapes:
            by_width[shape[-1]] = by_width.get(shape[-1], 0) + shape[1]
        if any(anchors != len(self.anchors) for anchors in by_width.values()):
            raise ValueError(f"model {spec.name!r}: {len(self.anchors)} anchors for outputs shaped "
                             f"{self.model.output_shapes}; wrong anchor options for this file?")

    def detect_keypoints(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) and keypoints (N, K, 2) in the RGB image's pixels, and scores, after the score
        threshold and weighted NMS.

        The image is letterboxed into the square input (aspect ratio kept, like MediaPipe's
        ImageToTensorCalculator with keep_aspect_ratio), so undoing the resize is a single scale.
        """
        canvas, scale = letterbox(image, (self.input_size, self.input_size))
        tensor = to_network_input(canvas, self.spec).transpose(0, 2, 3, 1)  # LiteRT models take NHWC
        # The outputs are the regressors (1, N, 4 + 2K) and the score logits (1, N, 1), told apart by width;
        # a model converted from TF.js gives each per stride: the finer stride has more anchors and comes first.
        outputs = sorted((output[0] for output in self.model(tensor)), key=lambda o: (-o.shape[-1], -o.shape[0]))
        regressors = np.concatenate([o for o in outputs if o.shape[-1] > 1])
        logits = np.concatenate([o for o in outputs if o.shape[-1] == 1])
        # MediaPipe clips the logits to +-100 before the sigmoid (score_clipping_thresh).
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0].astype(np.float64), -100.0, 100.0)))
        keep = scores >= self.spec.score_threshold
        boxes, keypoints = decode_ssd(regressors[keep], self.anchors[keep], self.input_size)
        boxes, keypoints, scores = weighted_nms(boxes, keypoints, scores[keep], MEDIAPIPE_NMS_IOU)
        to_pixels = self.input_size / scale
        return boxes * to_pixels, keypoints * to_pixels, scores
