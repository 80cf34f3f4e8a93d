"""Detections: the one container that boxes travel in between models, fusion and the service."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FACE, PERSON = 0, 1
CLASS_NAMES = ("face", "person")

# The five-point landmark order used everywhere (insightface / ArcFace convention, image left/right).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# Which landmark a point becomes after a horizontal flip: the eyes and mouth corners swap.
FLIP_LANDMARK_ORDER = (1, 0, 2, 4, 3)
NUM_LANDMARKS = len(LANDMARK_NAMES)


def _no_landmarks(n: int) -> np.ndarray:
    return np.full((n, NUM_LANDMARKS, 2), np.nan, dtype=np.float32)


@dataclass
class Detections:
    """Parallel arrays for N objects in one image, in pixels of that image.

    boxes: (N, 4) x1, y1, x2, y2; scores: (N,); labels: (N,) FACE or PERSON;
    landmarks: (N, 5, 2) x, y in LANDMARK_NAMES order, NaN where a model does not predict a point
    (so detectors with different landmark sets can be fused point by point).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray = field(default=None)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        self.labels = np.broadcast_to(np.asarray(self.labels, dtype=np.int64), (n,)).copy()
        if self.landmarks is None:
            self.landmarks = _no_landmarks(n)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(n, NUM_LANDMARKS, 2)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    @classmethod
    def concat(cls, parts: list["Detections"]) -> "Detections":
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.landmarks for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index) -> "Detections":
        """Select with a boolean mask, an index array or a slice."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(self.boxes[index], self.scores[index], self.labels[index], self.landmarks[index])

    @property
    def has_landmarks(self) -> np.ndarray:
        """(N,) True where all five landmarks are known."""
        return ~np.isnan(self.landmarks).any(axis=(1, 2))

    def scaled(self, scale_x: float, scale_y: float, offset_x: float = 0.0, offset_y: float = 0.0) -> "Detections":
        """Map coordinates: new = old * scale + offset (for undoing a resize or a crop)."""
        scale = np.array([scale_x, scale_y], dtype=np.float32)
        offset = np.array([offset_x, offset_y], dtype=np.float32)
        boxes = self.boxes * np.tile(scale, 2) + np.tile(offset, 2)
        return Detections(boxes, self.scores, self.labels, self.landmarks * scale + offset)

    def flipped(self, width: int) -> "Detections":
        """Mirror horizontally in an image of the given width; left and right landmarks swap names."""
        boxes = self.boxes.copy()
        boxes[:, [0, 2]] = width - self.boxes[:, [2, 0]]
        landmarks = self.landmarks[:, FLIP_LANDMARK_ORDER].copy()
        landmarks[..., 0] = width - landmarks[..., 0]
        return Detections(boxes, self.scores, self.labels, landmarks)

    def clipped(self, width: int, height: int) -> "Detections":
        boxes = self.boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return Detections(boxes, self.scores, self.labels, self.landmarks)

    @property
    def areas(self) -> np.ndarray:
        return (self.boxes[:, 2] - self.boxes[:, 0]).clip(0) * (self.boxes[:, 3] - self.boxes[:, 1]).clip(0)

    def valid(self, min_size: float = 1.0) -> "Detections":
        """Drop degenerate boxes (after clipping a box can collapse to a line)."""
        w = self.boxes[:, 2] - self.boxes[:, 0]
        h = self.boxes[:, 3] - self.boxes[:, 1]
        return self[(w >= min_size) & (h >= min_size) & np.isfinite(self.boxes).all(axis=1)]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def nms_indices(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes that OpenCV's NMS keeps, best first (for callers that carry other arrays along)."""
    import cv2

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    xywh = np.hstack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), np.asarray(scores, dtype=np.float32).tolist(), 0.0, iou_threshold)
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def nms(detections: Detections, iou_threshold: float) -> Detections:
    """Class-aware non-maximum suppression."""
    keep = [
        idx[nms_indices(detections.boxes[idx], detections.scores[idx], iou_threshold)]
        for idx in (np.flatnonzero(detections.labels == label) for label in np.unique(detections.labels))
    ]
    keep = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    return detections[keep[np.argsort(-detections.scores[keep], kind="stable")]]
