"""Weighted boxes fusion (Solovyev, Wang, Gabruseva: "Weighted boxes fusion: Ensembling boxes from
different object detection models", 2021), extended to fuse five-point landmarks the same way as boxes.

Unlike NMS, which keeps one box of a group and throws the others away, WBF averages the coordinates of
all boxes that overlap, weighted by their scores, and then lowers the fused score when only some of the
models voted for it: a box that every model found keeps its score, a box that one model in three found
keeps a third of it.
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

    predictions: one Detections per model, all in the same pixel coordinates.
    weights: one weight per model (default 1 each); a model's scores are multiplied by its weight.
    iou_thr: a box joins a cluster when its IoU with the cluster's fused box is above this.
    skip_box_thr: boxes scoring below this (before weighting) are ignored.
    conf_type: how the cluster score is formed, as named in the paper's reference implementation.
    """
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type must be one of {CONF_TYPES}, got {conf_type!r}")
    weights = np.ones(len(predictions), dtype=np.float32) if weights is None else np.asarray(weights, np.float32)
    if len(weights) != len(predictions):
        raise ValueError(f"{len(weights)} weights for {len(predictions)} predictions")

    members = []  # (Detections of one model above the threshold, model index)
    for model_index, det in enumerate(predictions):
        kept = det[det.scores >= skip_box_thr]
        members.append((kept, np.full(len(kept), model_index)))
    if not members:
        return Detections.empty()
    all_det = Detections.concat([m[0] for m in members])
    model_of = np.concatenate([m[1] for m in members]).astype(np.int64)
    weighted_scores = all_det.scores * weights[model_of]

    fused = []
    for label in np.unique(all_det.labels):
        idx = np.flatnonzero(all_det.labels == label)
        idx = idx[np.argsort(-weighted_scores[idx], kind="stable")]
        fused.append(_fuse_one_label(all_det, weighted_scores, model_of, idx, weights, iou_thr, conf_type, label))
    result = Detections.concat(fused)
    return result[np.argsort(-result.scores, kind="stable")]


def _fuse_one_label(det, weighted_scores, model_of, order, weights, iou_thr, conf_type, label) -> Detections:
    clusters: list[list[int]] = []
    fused_boxes = np.zeros((0, 4), dtype=np.float32)
    for i in order:
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

    n_models = len(weights)
    boxes, scores, landmarks = [], [], []
    for members in clusters:
        s = weighted_scores[members]
        boxes.append(_weighted_mean(det.boxes[members], s))
        landmarks.append(_fuse_landmarks(det.landmarks[members], s))
        member_models = np.unique(model_of[members])
        if conf_type == "max":
            score = s.max() / weights.max()
        elif conf_type == "box_and_model_avg":
            score = s.mean() * min(len(members), n_models) / weights.sum()
            score *= weights[member_models].sum() / weights.sum() * n_models / max(len(member_models), 1)
        elif conf_type == "absent_model_aware_avg":
            absent = np.setdiff1d(np.arange(n_models), member_models)
            score = s.sum() / (weights[member_models].sum() + weights[absent].sum())
        else:  # avg: the mean score, scaled down by the share of votes the cluster got
            score = s.mean() * min(len(members), n_models) / weights.sum()
        scores.append(min(float(score), 1.0))
    return Detections(np.array(boxes), np.array(scores), label, np.array(landmarks))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (values * weights.reshape(-1, *([1] * (values.ndim - 1)))).sum(axis=0) / max(weights.sum(), 1e-9)


def _fuse_landmarks(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average each landmark over the members that predict it; NaN where none does."""
    known = ~np.isnan(points[..., 0])  # (M, 5)
    w = weights[:, None] * known
    total = w.sum(axis=0)
    summed = (np.nan_to_num(points) * w[..., None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, summed / total[:, None], np.nan).astype(np.float32)
