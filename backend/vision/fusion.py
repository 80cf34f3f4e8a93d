"""Weighted boxes fusion (Solovyev, Wang, Gabruseva: "Weighted boxes fusion: Ensembling boxes from
different object detection models", 2021), extended to fuse landmarks (or body keypoints) the same way as
boxes.

Unlike NMS, which keeps one box of a group and throws the others away, WBF averages the coordinates of
all boxes that overlap, weighted by their scores, and then lowers the fused score when only some of the
models voted for it: a box that every model found keeps its score, a box that one model in three found
keeps a third of it.

The scores are those of the paper's reference implementation (the `ensemble-boxes` package, checked
against it in tests/test_fusion.py) for every conf_type, with one difference: a score is capped at 1. The
reference lets an `avg` score pass 1 when one model with a weight above the others puts several boxes
into one cluster; a confidence above 1 means nothing to an annotator.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .detections import Detections, box_iou

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def fuse_boxes(
    predictions: Sequence[Detections],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
) -> Detections:
    """Fuse the detections of several models (or test-time augmentations) of one image.

    predictions: one Detections per model, all in the same pixel coordinates; each label is fused apart from
      the others (faces with their 5 landmarks, persons with their keypoints).
    weights: one positive weight per model (default 1 each); a model's scores are multiplied by its weight.
    iou_thr: a box joins a cluster when its IoU with the cluster's fused box is above this.
    skip_box_thr: boxes scoring below this (before weighting) are ignored, and so are boxes of no area.
    conf_type: how a cluster's score is formed from its members' weighted scores s (model weight times
      score), as the reference implementation names them; n boxes in the cluster, M models, W the sum of
      all model weights:
      - avg: mean(s) * min(n, M) / W: a box found by few models is scored down;
      - max: max(s) / the largest model weight;
      - box_and_model_avg: sum(s) / (the weights of the cluster's boxes) * (the weights of the distinct
        models among them) / W: the weighted mean score, scaled by the share of the models' weight that
        voted;
      - absent_model_aware_avg: sum(s) / ((the weights of the cluster's boxes) + (the weights of the
        models with no box in it)): a missing model counts as a vote of score 0.
    """
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type must be one of {CONF_TYPES}, got {conf_type!r}")
    weights = np.ones(len(predictions), dtype=np.float64) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(predictions),):
        raise ValueError(f"{weights.size} weights for {len(predictions)} predictions")
    if (weights <= 0).any():
        raise ValueError(f"weights must be positive, got {weights.tolist()}")

    kept = [det[(det.scores >= skip_box_thr) & (det.areas > 0)] for det in predictions]
    fused = []
    for label in np.unique(np.concatenate([np.zeros(0, np.int64), *(det.labels for det in kept)])):
        parts = [det[det.labels == label] for det in kept]
        model_of = np.concatenate([np.full(len(part), index) for index, part in enumerate(parts)])
        fused.append(_fuse_one_label(Detections.concat(parts), model_of, weights, iou_thr, conf_type, label))
    result = Detections.concat(fused)
    return result[np.argsort(-result.scores, kind="stable")]


def _fuse_one_label(det: Detections, model_of: np.ndarray, weights: np.ndarray, iou_thr: float, conf_type: str,
                    label: int) -> Detections:
    box_weights = weights[model_of]
    weighted_scores = det.scores * box_weights
    clusters: list[list[int]] = []
    fused_boxes = np.zeros((0, 4), dtype=np.float32)
    # Each box, best first, joins the cluster whose fused box it overlaps most, or starts one. (Equal scores
    # keep the models' order; the reference leaves their order to numpy's unstable sort.)
    for i in np.argsort(-weighted_scores, kind="stable"):
        match = -1
        if len(fused_boxes):
            ious = box_iou(det.boxes[i], fused_boxes)[0]
            best = int(np.argmax(ious))
            if ious[best] > iou_thr:
                match = best
        if match < 0:
            clusters.append([i])
            fused_boxes = np.vstack([fused_boxes, det.boxes[i]])
        else:
            clusters[match].append(i)
            fused_boxes[match] = _weighted_mean(det.boxes[clusters[match]], weighted_scores[clusters[match]])

    scores = [_cluster_score(weighted_scores[m], box_weights[m], np.unique(model_of[m]), weights, conf_type)
              for m in clusters]
    landmarks = [_fuse_landmarks(det.landmarks[m], weighted_scores[m]) for m in clusters]
    return Detections(fused_boxes, np.minimum(scores, 1.0), label, np.stack(landmarks))


def _cluster_score(scores: np.ndarray, box_weights: np.ndarray, models: np.ndarray, weights: np.ndarray,
                   conf_type: str) -> float:
    """scores: the members' weighted scores; box_weights: their models' weights; models: the distinct models
    among them. See fuse_boxes for the formulas."""
    if conf_type == "max":
        return float(scores.max() / weights.max())
    if conf_type == "box_and_model_avg":
        return float(scores.sum() / box_weights.sum() * weights[models].sum() / weights.sum())
    if conf_type == "absent_model_aware_avg":
        absent = weights.sum() - weights[models].sum()
        return float(scores.sum() / (box_weights.sum() + absent))
    return float(scores.mean() * min(len(scores), len(weights)) / weights.sum())


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of values along the first axis, weighted; the plain mean when every weight is 0."""
    total = weights.sum()
    if total <= 0:
        return values.mean(axis=0)
    return (values * weights.reshape(-1, *([1] * (values.ndim - 1)))).sum(axis=0) / total


def _fuse_landmarks(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average each point over the members that predict it; NaN where none does. points: (M, K, 2)."""
    known = ~np.isnan(points[..., 0])  # (M, K)
    w = weights[:, None] * known
    total = w.sum(axis=0)
    summed = (np.nan_to_num(points) * w[..., None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, summed / total[:, None], np.nan).astype(np.float32)
