"""Ensembles: several detectors (and their mirrored runs) fused into one set of boxes, and several
descriptor networks joined into one descriptor."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from .detections import Detections, nms
from .fusion import fuse_boxes
from .models.base import Detector, Embedder, l2_normalise


# Tiling: tiles overlap by this share of their side, so that anyone up to that size lies whole in a tile;
# an image is tiled only when its longer side is at least TILE_FROM tiles long: below that a tile magnifies
# too little to be worth its runs (at 1.5, the ~1100-px shipped photos were tiled by 640-px tiles and
# gained one or two false boxes, no person). A box within CUT_MARGIN of a tile's side (a share of the
# tile) counts as touching it.
TILE_OVERLAP = 0.25
TILE_FROM = 2.0
CUT_MARGIN = 0.01


class DetectorEnsemble:
    """Runs each detector, optionally on the horizontally flipped image too, and fuses all runs with WBF.

    A flipped run is one more voter with its model's weight, so a box that a model finds in both
    orientations counts twice, and a box found only once is scored down.

    Guided search: detectors made for one prominent object (MediaPipe's pose detector) miss people in a
    crowd that they find once the crop holds little else. Given crops (each with an anchor point that the
    object must contain, e.g. a face centre for its person), a run also searches every crop and adds what
    it finds around the anchor, unless the whole image gave a box there already; duplicates within a run
    are merged by NMS, so a crop adds no extra vote.

    Tiling: a detector sees the image resized to its small input, where a person of a few dozen pixels
    vanishes. A detector whose manifest entry has options.tile_size (pixels) also runs on overlapping
    square tiles of that size when the image is large enough for them to magnify (see tiles()). A box that
    touches a tile's side inside the image belongs to someone the tile cuts off: it is dropped, since the
    overlap (or the whole image) holds that person whole. The rest joins the run's boxes by NMS, like a crop's.
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
            tile_size = detector.spec.options.get("tile_size")
            detector_tiles = tiles(width, height, tile_size) if tile_size else np.zeros((0, 4), int)
            for flip in (False, True) if self.flip_tta else (False,):
                found = [_run(detector, image, flip)]
                for tile in detector_tiles:
                    in_tile = _run_in_crop(detector, image, tile, flip)
                    found.append(in_tile[~cut_by_tile(in_tile.boxes, tile, width, height)])
                for crop, anchor in guides:
                    if any(_contains(f.boxes, anchor).any() for f in found[: 1 + len(detector_tiles)]):
                        continue  # this object was found in the whole image (or a tile) already
                    in_crop = _run_in_crop(detector, image, crop, flip)
                    found.append(in_crop[_contains(in_crop.boxes, anchor)])
                runs.append(nms(Detections.concat(found), self.iou_thr) if len(found) > 1 else found[0])
                weights.append(detector.spec.weight)
            self.seconds[detector.name] += time.perf_counter() - started
        if not runs:
            return Detections.empty()
        fused = fuse_boxes(runs, weights, iou_thr=self.iou_thr, conf_type=self.conf_type)
        # WBF clusters greedily, best box first, and never merges two clusters: where members frame one object
        # differently (BlazeFace's box of a low-resolution face sits higher than MTCNN's), the boxes that miss
        # the first cluster found a second one, and the two fused boxes can end up overlapping above iou_thr.
        # By the fusion's own criterion they are one object: the better one stays.
        return nms(fused, self.iou_thr).clipped(width, height).valid()


def tiles(width: int, height: int, size: int) -> np.ndarray:
    """(T, 4) integer x1, y1, x2, y2: squares of `size` pixels covering the image, neighbours overlapping by
    at least TILE_OVERLAP of a side, spread evenly; none when the image is under TILE_FROM tiles long."""
    if max(width, height) < TILE_FROM * size:
        return np.zeros((0, 4), int)
    step = size * (1 - TILE_OVERLAP)

    def starts(length: int) -> np.ndarray:
        if length <= size:
            return np.zeros(1, int)
        count = int(np.ceil((length - size) / step)) + 1
        return np.round(np.linspace(0, length - size, count)).astype(int)

    xs, ys = np.meshgrid(starts(width), starts(height))
    x1, y1 = xs.ravel(), ys.ravel()
    return np.stack([x1, y1, np.minimum(x1 + size, width), np.minimum(y1 + size, height)], axis=1)


def cut_by_tile(boxes: np.ndarray, tile: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N,) True where a box touches a side of the tile that lies inside the image."""
    margin = CUT_MARGIN * max(tile[2] - tile[0], tile[3] - tile[1])
    inner = np.array([tile[0] > 0, tile[1] > 0, tile[2] < width, tile[3] < height])
    touches = np.concatenate([boxes[:, :2] <= tile[:2] + margin, boxes[:, 2:] >= tile[2:] - margin], axis=1)
    return (touches & inner).any(axis=1)


def _contains(boxes: np.ndarray, point: np.ndarray) -> np.ndarray:
    return ((boxes[:, :2] <= point) & (point <= boxes[:, 2:])).all(axis=1)


def _run_in_crop(detector: Detector, image: np.ndarray, crop: np.ndarray, flip: bool) -> Detections:
    """The detector's boxes in a crop (x1, y1, x2, y2) of the image, in the image's pixels."""
    x1, y1, x2, y2 = crop
    return _run(detector, image[y1:y2, x1:x2], flip).scaled(1, 1, x1, y1)


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
