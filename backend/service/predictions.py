"""Turn the vision core's annotations into Label Studio predictions (regions in percent of the image)."""
from __future__ import annotations

import numpy as np

from ..vision.annotator import ImageAnnotation
from .label_config import OutputSpec

# A landmark's drawn size, percent of the image width: a fraction of its face's width, so the points of a
# small face do not cover it, within what stays clickable.
KEYPOINT_SIZE_OF_FACE, KEYPOINT_SIZE_MIN, KEYPOINT_SIZE_MAX = 0.04, 0.1, 0.5


def face_region_id(index: int) -> str:
    """The region id of a image's index-th face: webhooks and the store find the face again by it."""
    return f"face{index + 1}"


def empty_prediction(model_version: str) -> dict:
    return {"result": [], "score": 0.0, "model_version": model_version}


def to_prediction(
    annotation: ImageAnnotation,
    identities: list[str],
    identity_scores: np.ndarray,
    spec: OutputSpec,
    model_version: str,
) -> dict:
    """identities: one display id per face of `annotation` (e.g. "person_3" or a confirmed name)."""
    size = {"original_width": annotation.width, "original_height": annotation.height, "image_rotation": 0}
    face_box = next((c for c in spec.boxes if c.face_label), None)
    person_box = next((c for c in spec.boxes if c.person_label), None)
    keypoints = spec.keypoints[0] if spec.keypoints else None
    identity = spec.identities[0] if spec.identities else None
    result = []

    for i in range(len(annotation.faces)):
        region_id = face_region_id(i)
        score = float(annotation.faces.scores[i])
        geometry = _percent_box(annotation.faces.boxes[i], annotation.width, annotation.height)
        if face_box and _passes(score, face_box.score_threshold):
            result.append(_region(region_id, face_box, "rectanglelabels", size, score,
                                  {**geometry, "rectanglelabels": [face_box.face_label]}))
            if identity and identity_value(identity, identities[i]):
                result.append(_region(region_id, identity, identity.kind, size, float(identity_scores[i]),
                                      {**geometry, **identity_value(identity, identities[i])}))
        if keypoints and _passes(score, keypoints.score_threshold):
            point_size = float(np.clip(geometry["width"] * KEYPOINT_SIZE_OF_FACE, KEYPOINT_SIZE_MIN, KEYPOINT_SIZE_MAX))
            for index, label in keypoints.labels.items():
                x, y = annotation.faces.landmarks[i, index]
                if np.isnan(x) or np.isnan(y):
                    continue
                point = _region(f"{region_id}-{label}", keypoints, "keypointlabels", size, score, {
                    "x": _pct(x, annotation.width), "y": _pct(y, annotation.height),
                    "width": point_size, "keypointlabels": [label],
                })
                if face_box and _passes(score, face_box.score_threshold):
                    point["parentID"] = region_id
                result.append(point)

    if person_box:
        for i in range(len(annotation.persons)):
            score = float(annotation.persons.scores[i])
            if _passes(score, person_box.score_threshold):
                geometry = _percent_box(annotation.persons.boxes[i], annotation.width, annotation.height)
                result.append(_region(f"person{i + 1}", person_box, "rectanglelabels", size, score,
                                      {**geometry, "rectanglelabels": [person_box.person_label]}))

    scores = [r["score"] for r in result if r["type"] == "rectanglelabels"]
    return {"result": result, "score": float(np.mean(scores)) if scores else 0.0, "model_version": model_version}


def _passes(score: float, threshold: float | None) -> bool:
    return threshold is None or score >= threshold


def identity_value(control, identity: str) -> dict | None:
    """The value of a per-region identity result for this control, or None where it cannot show the id."""
    if control.kind == "textarea":
        return {"text": [identity]}
    # Choices can only show values the config lists: an id that is not among them is left for the annotator.
    return {"choices": [identity]} if identity in control.choices else None


def _region(region_id, control, kind, size, score, value) -> dict:
    return {"id": region_id, "from_name": control.name, "to_name": control.to_name, "type": kind,
            **size, "value": value, "score": round(float(score), 4)}


def _pct(value: float, total: int) -> float:
    return float(np.clip(value / total * 100.0, 0.0, 100.0))


def _percent_box(box: np.ndarray, width: int, height: int) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"x": _pct(x1, width), "y": _pct(y1, height),
            "width": _pct(x2 - x1, width), "height": _pct(y2 - y1, height), "rotation": 0}
