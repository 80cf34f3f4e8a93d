"""How good are the pre-annotations? Detection, landmark and identity scores, and the fixes they leave.

Definitions (the report repeats them):

- A predicted box *matches* a ground-truth box at IoU >= 0.5 (`--match-iou`), greedily from the highest score down, each
  truth box matched once (COCO's rule). A box that matches nothing but lies on a "don't care" region
  (intersection over the box's own area >= 0.5, COCO's rule for crowd regions) is neither right nor wrong.
- AP50 and AP50:95 are COCO's (pycocotools), over every box the configuration outputs, whatever its score.
- Recall, precision and the fixes are taken at the shipped score threshold: what an annotator sees.
- Landmark error: for each matched face with ground-truth landmarks, the mean distance of the points
  known on both sides, divided by the diagonal of the ground-truth face box. The box diagonal and not the
  inter-ocular distance, because the latter shrinks towards zero on profile faces and blows the error up.
- Identity scores are over the matched faces whose truth has an identity: predicted clusters against true
  people, pairwise and BCubed precision / recall / F1.
- Fixes an annotator would make, summed:
  - missing: ground-truth boxes (not "don't care") that no shown box matches: draw them;
  - false: shown boxes that match nothing and lie on no "don't care" region: delete them. A box in the
    right place but framed too differently to reach IoU 0.5 costs one false plus one missing (delete and
    redraw);
  - splits: for each predicted identity, the number of true people among its faces minus one;
  - merges: for each true person, the number of predicted identities their faces are spread over minus
    one. (A single misplaced face can count once in each.)
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from sklearn.metrics.cluster import contingency_matrix

from ..vision.detections import box_iou
from .ground_truth import Objects

MATCH_IOU = 0.5
MAX_DETECTIONS = 1000  # per image, for AP (COCO's 100 is too few for crowd photos)
IGNORED = -2  # match_boxes: the box lies on a "don't care" region


@dataclass
class DetectionScores:
    ap50: float  # NaN without ground truth of this class
    ap50_95: float
    curve_recall: np.ndarray  # precision-recall curve at IoU 0.5 (COCO's interpolated precision)
    curve_precision: np.ndarray
    shown: int  # boxes at or above the shipped threshold
    true: int  # of them, matching a ground-truth box
    missing: int
    false: int

    @property
    def recall(self) -> float:
        return _ratio(self.true, self.true + self.missing)

    @property
    def precision(self) -> float:
        return _ratio(self.true, self.true + self.false)


@dataclass
class IdentityScores:
    faces: int  # matched faces with a true identity
    people: int  # true identities among them
    clusters: int  # predicted identities among them
    pairwise: tuple[float, float, float]  # precision, recall, F1
    bcubed: tuple[float, float, float]
    merges: int
    splits: int


def match_boxes(truth: Objects, boxes: np.ndarray, scores: np.ndarray, min_iou: float = MATCH_IOU) -> np.ndarray:
    """(D,) for each predicted box the index of the truth box it matches, -1 for none, IGNORED on a
    "don't care" region."""
    matched = np.full(len(boxes), -1, dtype=np.int64)
    if len(boxes) == 0 or len(truth) == 0:
        return matched
    iou = box_iou(boxes, truth.boxes)
    # Intersection over the predicted box's area, from the IoU: inter = iou * (A + B) / (1 + iou).
    area = lambda b: (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)  # noqa: E731
    pred_area, truth_area = area(np.asarray(boxes, np.float32)), area(truth.boxes)
    inside = iou * (pred_area[:, None] + truth_area[None, :]) / (1 + iou) / np.maximum(pred_area[:, None], 1e-9)
    taken = np.zeros(len(truth), dtype=bool)
    for d in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = np.where(truth.ignore | taken, -1.0, iou[d])
        best = int(np.argmax(candidates))
        if candidates[best] >= min_iou:
            matched[d] = best
            taken[best] = True
        elif (inside[d, truth.ignore] >= min_iou).any():
            matched[d] = IGNORED
    return matched


def detection_scores(truth: list[Objects], boxes: list[np.ndarray], scores: list[np.ndarray],
                     threshold: float, min_iou: float = MATCH_IOU) -> DetectionScores:
    """Scores of one class over all images: truth, boxes and scores hold one entry per image."""
    ap50, ap50_95, curve_recall, curve_precision = average_precision(truth, boxes, scores)
    shown = true = missing = false = 0
    for objects, image_boxes, image_scores in zip(truth, boxes, scores):
        keep = image_scores >= threshold
        matched = match_boxes(objects, image_boxes[keep], image_scores[keep], min_iou)
        shown += int(keep.sum())
        true += int((matched >= 0).sum())
        false += int((matched == -1).sum())
        missing += int((~objects.ignore).sum()) - int((matched >= 0).sum())
    return DetectionScores(ap50, ap50_95, curve_recall, curve_precision, shown, true, missing, false)


def average_precision(truth: list[Objects], boxes: list[np.ndarray], scores: list[np.ndarray]):
    """COCO AP at IoU 0.5 and averaged over IoU 0.50:0.05:0.95 with pycocotools, and the precision-recall
    curve at IoU 0.5: (ap50, ap50_95, recall points, precision at them)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    empty_curve = (np.zeros(0), np.zeros(0))
    if not any((~objects.ignore).any() for objects in truth):
        return (float("nan"), float("nan"), *empty_curve)
    annotations = [_coco_entry(i, box, iscrowd=int(ignore))
                   for i, objects in enumerate(truth) for box, ignore in zip(objects.boxes, objects.ignore)]
    for number, annotation in enumerate(annotations, start=1):
        annotation["id"] = number
    results = [_coco_entry(i, box, score=float(score))
               for i, (image_boxes, image_scores) in enumerate(zip(boxes, scores))
               for box, score in zip(image_boxes, image_scores)]
    if not results:
        return (0.0, 0.0, *empty_curve)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports its progress on stdout
        coco_truth = COCO()
        coco_truth.dataset = {"images": [{"id": i} for i in range(len(truth))],
                              "categories": [{"id": 1, "name": "object"}], "annotations": annotations}
        coco_truth.createIndex()
        evaluation = COCOeval(coco_truth, coco_truth.loadRes(results), "bbox")
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.params.maxDets = [MAX_DETECTIONS]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, 0, 0, 0]  # (IoU thresholds, recall points)
    reached = precision[0] > 0  # COCO leaves 0 at the recall points no score threshold reaches
    return (float(precision[0].mean()), float(precision.mean()),
            evaluation.params.recThrs[reached], precision[0][reached])


def _coco_entry(image_id: int, box, **fields) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1), **fields}


def landmark_errors(predicted: np.ndarray, truth: np.ndarray, truth_boxes: np.ndarray) -> np.ndarray:
    """(N,) mean point distance over the landmarks known on both sides, divided by the truth box diagonal;
    NaN for a face with no such point. predicted, truth: (N, 5, 2) with NaN where unknown."""
    distances = np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64), axis=2)  # (N, 5)
    boxes = np.asarray(truth_boxes, np.float64).reshape(-1, 4)
    diagonals = np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    known = ~np.isnan(distances)
    with np.errstate(invalid="ignore"):
        mean = np.where(known, distances, 0.0).sum(axis=1) / known.sum(axis=1)
    return mean / np.maximum(diagonals, 1e-9)


def identity_scores(true_people, clusters) -> IdentityScores:
    """true_people: (N,) true identity of each face; clusters: (N,) the predicted identity of the same faces."""
    table = contingency_matrix(np.asarray(true_people), np.asarray(clusters))  # (people, clusters)
    return IdentityScores(
        faces=int(table.sum()), people=table.shape[0], clusters=table.shape[1],
        pairwise=pairwise_scores(table), bcubed=bcubed_scores(table),
        merges=int(((table > 0).sum(axis=1) - 1).sum()), splits=int(((table > 0).sum(axis=0) - 1).sum()),
    )


def pairwise_scores(table: np.ndarray) -> tuple[float, float, float]:
    """Over pairs of faces: precision = pairs put together that are one person / pairs put together; recall =
    the same / pairs that are one person. With no pair on one side, nothing was wrong there: 1."""
    pairs = lambda counts: (counts * (counts - 1) / 2).sum()  # noqa: E731
    together_and_same = pairs(table)
    precision = _ratio(together_and_same, pairs(table.sum(axis=0)), empty=1.0)
    recall = _ratio(together_and_same, pairs(table.sum(axis=1)), empty=1.0)
    return precision, recall, _f1(precision, recall)


def bcubed_scores(table: np.ndarray) -> tuple[float, float, float]:
    """BCubed (Bagga and Baldwin 1998): per face, the share of its predicted cluster that is its person
    (precision) and the share of its person that is in its cluster (recall), averaged over faces."""
    table = table.astype(np.float64)
    faces = max(table.sum(), 1.0)
    precision = float((table**2 / np.maximum(table.sum(axis=0, keepdims=True), 1)).sum() / faces)
    recall = float((table**2 / np.maximum(table.sum(axis=1, keepdims=True), 1)).sum() / faces)
    return precision, recall, _f1(precision, recall)


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall, empty=0.0)


def _ratio(numerator: float, denominator: float, empty: float = float("nan")) -> float:
    return float(numerator / denominator) if denominator else empty
