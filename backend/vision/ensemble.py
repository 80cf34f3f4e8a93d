"""Ensembles: several detectors (and their mirrored runs) fused into one set of boxes, and several
descriptor networks joined into one descriptor."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from .detections import Detections, nms
from .fusion import fuse_boxes
from .models.base import Detector, Embedder, l2_normalise


class DetectorEnsemble:
    """Runs each detector, optionally on the horizontally flipped image too, and fuses all runs with WBF.

    A flipped run is one more voter with its model's weight, so a box that a model finds in both
    orientations counts twice, and a box found only once is scored down.

    Guided search: detectors made for one prominent object (MediaPipe's pose detector) miss people in a
    crowd that they find once the crop holds little else. Given crops (each with an anchor point that the
    object must contain, e.g. a face centre for its person), a run also searches every crop and adds what
    it finds around the anchor, unless the whole image gave a box there already; duplicates within a run
    are merged by NMS, so a crop adds no extra vote.
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

    def detect(self, image: np.ndarray, crops: np.ndarray | None = None, anchors: np.ndarray | None = None) -> Detections:
        """crops: (G, 4) integer boxes to search as well; anchors: (G, 2) a point each crop's object contains."""
        height, width = image.shape[:2]
        guides = [] if crops is None else list(zip(np.asarray(crops, int), np.asarray(anchors, np.float32)))
        runs, weights = [], []
        for detector in self.detectors:
            started = time.perf_counter()
            for flip in (False, True) if self.flip_tta else (False,):
                found = [_run(detector, image, flip)]
                for (x1, y1, x2, y2), anchor in guides:
                    if _contains(found[0].boxes, anchor).any():
                        continue  # this object was found in the whole image already
                    in_crop = _run(detector, image[y1:y2, x1:x2], flip).scaled(1, 1, x1, y1)
                    found.append(in_crop[_contains(in_crop.boxes, anchor)])
                runs.append(nms(Detections.concat(found), self.iou_thr) if guides else found[0])
                weights.append(detector.spec.weight)
            self.seconds[detector.name] += time.perf_counter() - started
        if not runs:
            return Detections.empty()
        fused = fuse_boxes(runs, weights, iou_thr=self.iou_thr, conf_type=self.conf_type)
        return fused.clipped(width, height).valid()


def _contains(boxes: np.ndarray, point: np.ndarray) -> np.ndarray:
    return ((boxes[:, :2] <= point) & (point <= boxes[:, 2:])).all(axis=1)


def _run(detector: Detector, image: np.ndarray, flip: bool) -> Detections:
    """The detector's boxes in `image`'s pixels, found in the image itself or in its mirror image."""
    if not flip:
        return detector.detect(np.ascontiguousarray(image))
    return detector.detect(np.ascontiguousarray(image[:, ::-1])).flipped(image.shape[1])


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
        return l2_normalise(joined)
