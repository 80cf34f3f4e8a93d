"""Ensembles: several detectors (and their mirrored runs) fused into one set of boxes, and several
descriptor networks joined into one descriptor."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from .detections import Detections
from .fusion import fuse_boxes
from .models.base import Detector, Embedder


class DetectorEnsemble:
    """Runs each detector, optionally on the horizontally flipped image too, and fuses all runs with WBF.

    A flipped run is one more voter with its model's weight, so a box that a model finds in both
    orientations counts twice, and a box found only once is scored down.
    """

    def __init__(self, detectors: list[Detector], flip_tta: bool, iou_thr: float, conf_type: str = "avg"):
        self.detectors = detectors
        self.flip_tta = flip_tta
        self.iou_thr = iou_thr
        self.conf_type = conf_type
        self.seconds = defaultdict(float)  # model name -> time spent, for the benchmarks

    @property
    def name(self) -> str:
        return "+".join(d.name for d in self.detectors) + ("+flip" if self.flip_tta and self.detectors else "")

    def detect(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        runs, weights = [], []
        for detector in self.detectors:
            started = time.perf_counter()
            runs.append(detector.detect(image))
            weights.append(detector.spec.weight)
            if self.flip_tta:
                runs.append(detector.detect(np.ascontiguousarray(image[:, ::-1])).flipped(width))
                weights.append(detector.spec.weight)
            self.seconds[detector.name] += time.perf_counter() - started
        if not runs:
            return Detections.empty()
        fused = fuse_boxes(runs, weights, iou_thr=self.iou_thr, conf_type=self.conf_type)
        return fused.clipped(width, height).valid()


class DescriptorEnsemble:
    """Joins the descriptors of several networks into one unit vector.

    Each network's unit descriptor is scaled by the square root of its weight and the parts are
    concatenated, so the cosine similarity of two joined descriptors is the weighted mean of the networks'
    own cosine similarities: networks with descriptors of any size can be combined.
    """

    def __init__(self, embedders: list[Embedder]):
        self.embedders = embedders
        self.seconds = defaultdict(float)
        weights = np.array([e.spec.weight for e in embedders], dtype=np.float32)
        self.scales = np.sqrt(weights / max(weights.sum(), 1e-9))

    @property
    def name(self) -> str:
        return "+".join(e.name for e in self.embedders)

    @property
    def identity_distance(self) -> float:
        """The cosine distance that separates people for the joined descriptor: since its cosine similarity is
        the weighted mean of the networks' own, so is this threshold of the networks' thresholds."""
        thresholds = [e.spec.options.get("identity_distance") for e in self.embedders]
        if not thresholds or None in thresholds:
            raise ValueError("every descriptor model needs options.identity_distance in the manifest")
        return float(np.dot(self.scales**2, thresholds))

    @property
    def dim(self) -> int:
        return sum(e.dim for e in self.embedders)

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        if not self.embedders or len(faces) == 0:
            return np.zeros((len(faces), self.dim), dtype=np.float32)
        parts = []
        for embedder, scale in zip(self.embedders, self.scales):
            started = time.perf_counter()
            parts.append(embedder.embed(image, faces) * scale)
            self.seconds[embedder.name] += time.perf_counter() - started
        joined = np.concatenate(parts, axis=1)
        return joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-9)
