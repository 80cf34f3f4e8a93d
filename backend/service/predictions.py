"""Turn the vision core's annotations into Label Studio predictions (regions in percent of the image).

Every control of the spec is filled. The first face-box control is the face's own: its region id is the one
the face store and the webhooks know the face by (face_region_id), and the face's landmarks (parentID) and
identities (per-region results, one per identity control) hang on it; further face-box controls get the same
box under an id of their own. Persons alike, with their body joints.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..vision.annotator import ImageAnnotation
from ..vision.detections import BODY_KEYPOINT_NAMES, NUM_LANDMARKS
from .label_config import BoxControl, IdentityControl, OutputSpec

# A point's drawn size, percent of the image width: a fraction of its object's width, within what stays
# clickable. Label Studio draws a point at least 2 screen pixels in radius whatever its size, so this
# matters for large faces; see README "Landmarks".
KEYPOINT_SIZE_OF_FACE, KEYPOINT_SIZE_MIN, KEYPOINT_SIZE_MAX = 0.04, 0.1, 0.5


def face_region_id(index: int) -> str:
    """The region id of a image's index-th face: webhooks and the store find the face again by it."""
    return f"face{index + 1}"


def person_region_id(index: int) -> str:
    return f"person{index + 1}"


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
    return as_prediction(regions(annotation, identities, identity_scores, spec), model_version)


def as_prediction(result: list[dict], model_version: str) -> dict:
    """A prediction of these regions, scored by the mean score of its scored boxes."""
    scores = [r["score"] for r in result if r["type"] == "rectanglelabels" and "score" in r]
    return {"result": result, "score": float(np.mean(scores)) if scores else 0.0, "model_version": model_version}


def regions(
    annotation: ImageAnnotation,
    identities: list[str | None],
    identity_scores: np.ndarray,
    spec: OutputSpec,
    face_ids: list[str] | None = None,
    person_ids: list[str] | None = None,
) -> list[dict]:
    """The result items of every control in `spec` for the faces and persons of `annotation`.

    identities: per face, its display id, or None for none. face_ids / person_ids: the region id of each face
    and person (default face_region_id / person_region_id).
    """
    size = {"original_width": annotation.width, "original_height": annotation.height, "image_rotation": 0}
    face_ids = face_ids or [face_region_id(i) for i in range(len(annotation.faces))]
    person_ids = person_ids or [person_region_id(i) for i in range(len(annotation.persons))]
    result = []
    for i, region_id in enumerate(face_ids):
        score = float(annotation.faces.scores[i])
        boxes = _boxes(region_id, annotation.faces.boxes[i], score, spec.face_boxes, "face_label", annotation, size)
        result += boxes
        if boxes and boxes[0]["id"] == region_id and identities[i] is not None:  # the face's own box is shown
            for control in spec.identities:
                value = identity_value(control, identities[i])
                if value is not None:
                    result.append(_region(region_id, control, control.kind, size, float(identity_scores[i]),
                                          {**_geometry(boxes[0]), **value}))
        result += _points(region_id, boxes, annotation.faces.landmarks[i], NUM_LANDMARKS, "face_points",
                          annotation.faces.boxes[i], score, spec, annotation, size)
    for i, region_id in enumerate(person_ids):
        score = float(annotation.persons.scores[i])
        boxes = _boxes(region_id, annotation.persons.boxes[i], score, spec.person_boxes, "person_label", annotation,
                       size)
        result += boxes
        result += _points(region_id, boxes, annotation.persons.landmarks[i], len(BODY_KEYPOINT_NAMES), "body_points",
                          annotation.persons.boxes[i], score, spec, annotation, size)
    return result


def identity_value(control: IdentityControl, identity: str) -> dict | None:
    """The value of a per-region identity result for this control, or None where it cannot show the id."""
    if control.kind == "textarea":
        return {"text": [identity]}
    # Choices can only show values the config lists: an id that is not among them is left for the annotator.
    shown = control.choices.get(identity)
    return {"choices": [shown]} if shown is not None else None


def relabel_identities(result: list[dict], spec: OutputSpec, identity_of: Callable[[str], str | None]) -> list[dict]:
    """`result` with the identity results of every identity control rewritten: identity_of(region id) gives a
    face's display id now, or None to leave its results as they are. A result that its control cannot show the
    new id in (a Choices control without it) is dropped: its old id is wrong and the annotator sets it."""
    controls = {c.name: c for c in spec.identities}
    relabelled = []
    for item in result:
        control = controls.get(item.get("from_name"))
        identity = identity_of(str(item.get("id"))) if control is not None else None
        if identity is not None:
            value = identity_value(control, identity)
            if value is None:
                continue
            item = {**item, "value": {**item["value"], **value}}
        relabelled.append(item)
    return relabelled


def _boxes(region_id: str, box: np.ndarray, score: float, controls: list[BoxControl], label: str,
           annotation: ImageAnnotation, size: dict) -> list[dict]:
    """The object's box in each box control whose threshold it passes; the first control's is `region_id`."""
    geometry = _percent_box(box, annotation.width, annotation.height)
    return [
        _region(region_id if n == 0 else f"{region_id}-{control.name}", control, "rectanglelabels", size, score,
                {**geometry, "rectanglelabels": [getattr(control, label)]})
        for n, control in enumerate(controls) if _passes(score, control.score_threshold)
    ]


def _points(region_id: str, boxes: list[dict], points: np.ndarray, count: int, kind: str, box: np.ndarray,
            score: float, spec: OutputSpec, annotation: ImageAnnotation, size: dict) -> list[dict]:
    """The object's points (face landmarks or body joints, by `kind`) in every keypoint control that has them,
    linked to the object's own box when that is shown."""
    if points.shape[0] != count:  # the models gave this kind of object no such points
        return []
    width = _pct(box[2] - box[0], annotation.width)
    point_size = float(np.clip(width * KEYPOINT_SIZE_OF_FACE, KEYPOINT_SIZE_MIN, KEYPOINT_SIZE_MAX))
    parent = region_id if boxes and boxes[0]["id"] == region_id else None
    result = []
    for control in spec.keypoints:
        if not _passes(score, control.score_threshold):
            continue
        for index, label in getattr(control, kind).items():
            x, y = points[index]
            if np.isnan(x) or np.isnan(y):
                continue
            point = _region(f"{region_id}-{control.name}-{label}", control, "keypointlabels", size, score, {
                "x": _pct(x, annotation.width), "y": _pct(y, annotation.height),
                "width": point_size, "keypointlabels": [label],
            })
            if parent:
                point["parentID"] = parent
            result.append(point)
    return result


def _passes(score: float, threshold: float | None) -> bool:
    return threshold is None or score >= threshold


def _region(region_id, control, kind, size, score, value) -> dict:
    return {"id": region_id, "from_name": control.name, "to_name": control.to_name, "type": kind,
            **size, "value": value, "score": round(float(score), 4)}


def _geometry(box_region: dict) -> dict:
    return {key: box_region["value"][key] for key in ("x", "y", "width", "height", "rotation")}


def _pct(value: float, total: int) -> float:
    return float(np.clip(value / total * 100.0, 0.0, 100.0))


def _percent_box(box: np.ndarray, width: int, height: int) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"x": _pct(x1, width), "y": _pct(y1, height),
            "width": _pct(x2 - x1, width), "height": _pct(y2 - y1, height), "rotation": 0}
