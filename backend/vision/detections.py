"""Detections: the one container that boxes travel in between models, fusion and the service."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FACE, PERSON = 0, 1
CLASS_NAMES = ("face", "person")

# The five-point landmark order used everywhere (insightface / ArcFace convention, image left/right).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
NUM_LANDMARKS = len(LANDMARK_NAMES)
# COCO's 17 body keypoints, in COCO's order (as multi-person pose models such as MoveNet give them).
BODY_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# The point sets a Detections can carry, told apart by their size: faces have 5 landmarks, persons 17 keypoints.
POINT_NAMES = {NUM_LANDMARKS: LANDMARK_NAMES, len(BODY_KEYPOINT_NAMES): BODY_KEYPOINT_NAMES}


def mirrored_order(names: tuple[str, ...]) -> list[int]:
    """For each point after a horizontal flip, the index of the point it was: left and right swap names."""
    swap = {"left": "right", "right": "left"}
    mirrored = ["_".join(swap.get(part, part) for part in name.split("_")) for name in names]
    return [names.index(name) for name in mirrored]


def _no_landmarks(n: int, count: int = NUM_LANDMARKS) -> np.ndarray:
    return np.full((n, count, 2), np.nan, dtype=np.float32)


def _checked(name: str, value, expected: str, shape_ok) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if not shape_ok(array.shape):
        raise ValueError(f"Detections.{name}: expected shape {expected}, got {array.shape}")
    return array


@dataclass
class Detections:
    """Parallel arrays for N objects in one image, in pixels of that image.

    boxes: (N, 4) x1, y1, x2, y2; scores: (N,); labels: (N,) FACE or PERSON (or one label for all);
    landmarks: (N, K, 2) x, y of K points per object, NaN where a model does not predict a point (so
    detectors with different point sets can be fused point by point): faces have the 5 LANDMARK_NAMES,
    persons may have the 17 BODY_KEYPOINT_NAMES. Left out, it is (N, 5, 2) NaN.

    Arrays of any other shape are refused with a ValueError rather than reshaped: a (4,) box or an (N, 10)
    landmark array is a bug in the model adapter, which a reshape would hide or turn into wrong coordinates.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray = field(default=None)

    def __post_init__(self):
        self.boxes = _checked("boxes", self.boxes, "(N, 4)", lambda shape: len(shape) == 2 and shape[1] == 4)
        n = len(self.boxes)
        self.scores = _checked("scores", self.scores, f"({n},) for {n} boxes", lambda shape: shape == (n,))
        labels = np.asarray(self.labels)
        if labels.shape not in ((), (n,)):
            raise ValueError(f"Detections.labels: expected shape ({n},) for {n} boxes or one label, got {labels.shape}")
        self.labels = np.broadcast_to(labels.astype(np.int64), (n,)).copy()
        if self.landmarks is None:
            self.landmarks = _no_landmarks(n)
        self.landmarks = _checked("landmarks", self.landmarks, f"({n}, K, 2) for {n} boxes",
                                  lambda shape: len(shape) == 3 and shape[0] == n and shape[2] == 2)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    @classmethod
    def concat(cls, parts: list["Detections"]) -> "Detections":
        """All objects of the parts, in order. Parts must carry the same number of points per object, except
        parts that know none of their points (a detector without landmarks): they take the others' count."""
        if not parts:
            return cls.empty()
        known = {p.landmarks.shape[1] for p in parts if not np.isnan(p.landmarks).all()}
        if len(known) > 1:
            raise ValueError(f"cannot concatenate detections with {' and '.join(map(str, sorted(known)))} points "
                             "per object")
        count = known.pop() if known else parts[0].landmarks.shape[1]
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.landmarks if p.landmarks.shape[1] == count else _no_landmarks(len(p), count)
                            for p in parts]),
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
        """(N,) True where all the points (the five landmarks of a face) are known."""
        return ~np.isnan(self.landmarks).any(axis=(1, 2))

    def scaled(self, scale_x: float, scale_y: float, offset_x: float = 0.0, offset_y: float = 0.0) -> "Detections":
        """Map coordinates: new = old * scale + offset (for undoing a resize or a crop)."""
        scale = np.array([scale_x, scale_y], dtype=np.float32)
        offset = np.array([offset_x, offset_y], dtype=np.float32)
        boxes = self.boxes * np.tile(scale, 2) + np.tile(offset, 2)
        return Detections(boxes, self.scores, self.labels, self.landmarks * scale + offset)

    def flipped(self, width: int) -> "Detections":
        """Mirror horizontally in an image of the given width; left and right points swap names."""
        boxes = self.boxes.copy()
        boxes[:, [0, 2]] = width - self.boxes[:, [2, 0]]
        count = self.landmarks.shape[1]
        if count in POINT_NAMES:
            landmarks = self.landmarks[:, mirrored_order(POINT_NAMES[count])].copy()
        elif np.isnan(self.landmarks).all():
            landmarks = self.landmarks.copy()
        else:
            raise ValueError(f"cannot mirror {count} points per object: which are left and right is known for "
                             f"{sorted(POINT_NAMES)} points")
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
