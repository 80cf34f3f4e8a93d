"""Interactive pre-annotation: answer the region an annotator has just drawn with a smart tool.

With *Auto-Annotation* on (the toggle under the image in Label Studio's editor) and a control marked
smart="true", Label Studio sends /predict for the open task with params.context = {"result": [regions]}: the
region just drawn and every other region of the annotation with its type and label, the new one last (its
editor's getConnectedDynamicRegions, Label Studio 1.23). The regions of the answer come back as suggestions;
accepting them (at once under *Auto-Accept Suggestions*) deletes the drawn region unless a suggestion carries its
id. So the answer always holds the drawn region, refined or as drawn:

- a rectangle with the face label: the face that the face models find in a crop around it and that overlaps it
  most (IoU at least MIN_OVERLAP), under the drawn region's id, with its landmarks (parentID: that id) and its
  identity. The identity is the project's nearest, by the face store's own matching (FaceStore.nearest_identity:
  what assign_with_confidence gives a face alone in its request, identity and confidence) without storing the
  face: the face is stored when the annotation is submitted (webhooks.py), under the name shown on it. A face
  that matches no identity gets none (the webhook founds its identity). Where no face overlaps enough, the box
  stays as drawn, scored 0, with its identity;
- a rectangle with the person label: the person found the same way, with its body joints where the config has
  body KeyPointLabels and the person models give joints; else the box as drawn;
- a point with a face landmark's label: the face containing it, searched in crops around it (a new box, id
  "<point id>_face"), its landmarks and identity, the clicked point becoming the landmark of its label; a point
  with a body joint's label: the person containing it in the whole image, alike. Nothing there: the point as
  drawn;
- any other region: as drawn.
The answer's regions are sent whatever their scores (no model_score_threshold): the annotator asked for them.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ..vision.annotator import ImageAnnotation
from ..vision.detections import FACE, PERSON, Detections, box_iou
from ..vision.ensemble import DetectorEnsemble
from ..vision.quality import face_quality
from .context import AppContext
from .images import ImageError, LoadedImage
from .label_config import BoxControl, KeypointControl, OutputSpec, normalise_label
from .predict import at_original_size
from .predictions import as_prediction, regions

# Where a drawn box's object is looked for: a crop around the box, `margin` box sizes wider on each side, scaled
# so that the box's longer side is about `side` pixels: faces at a size every face detector handles, in a crop
# small enough for the whole face ensemble to take a tenth of a second (bench/interactive.py); a tiny face is
# enlarged at most MAX_UPSCALE times.
CROP = {FACE: {"margin": 0.25, "side": 96}, PERSON: {"margin": 0.25, "side": 480}}
MAX_UPSCALE = 8.0
# Where a face around a clicked point is looked for: square boxes around the point of these fractions of the
# image's shorter side, each searched like a drawn box (so each finds faces from about a fifth of its size to
# one and a half times it), in this order until one holds a face containing the point: faces of a tenth of
# the image first, the commonest in photos of people. Persons are looked for in the whole image: their models
# take an image of any size down to their own input size, whole or cropped.
POINT_SEARCH_SIDES = (0.15, 0.04, 0.6)
# The least IoU between the drawn box and a found object for the object to replace the box: a loose box
# around a face (1.5 times its size each way) still overlaps it by 0.44.
MIN_OVERLAP = 0.25
DRAWN_TYPES = ("rectanglelabels", "keypointlabels")


class InteractiveError(ValueError):
    """An interactive request the backend cannot answer; the message says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class DrawnRegion:
    """The region an annotator drew, as its context item says."""

    item: dict  # the result item as Label Studio sent it
    control: BoxControl | KeypointControl | None  # the control we fill that it belongs to, if any
    owner: int | None  # FACE or PERSON: what it is drawn on; None: nothing we refine
    label: str
    box: np.ndarray | None  # (4,) x1, y1, x2, y2 in percent of the image, for a rectangle
    point: np.ndarray | None  # (2,) x, y in percent, for a point


def asks(body: dict) -> bool:
    """Whether a /predict body is an interactive request: params.context carries regions."""
    params = body.get("params")
    request_context = params.get("context") if isinstance(params, dict) else None
    return isinstance(request_context, dict) and bool(request_context.get("result"))


def answer(context: AppContext, spec: OutputSpec, tasks: list, project: str | None, request_context: dict) -> dict:
    """The prediction answering the drawn region of an interactive /predict (see the module's docstring)."""
    if len(tasks) != 1 or not isinstance(tasks[0], dict) or not isinstance(tasks[0].get("data"), dict):
        raise InteractiveError("an interactive request must carry one task, an object with a 'data' object")
    spec = spec.without_thresholds()
    drawn = drawn_region(request_context, spec)
    model_version = context.annotator.model_version
    if drawn.owner is None:
        return as_prediction([drawn.item], model_version)
    try:
        image = context.images.load(tasks[0]["data"].get(spec.image_key))
    except ImageError as error:
        raise InteractiveError(f"task {tasks[0].get('id')}: {error}", 422) from None
    if drawn.box is not None:
        result = _refined_box(context, image, drawn, spec, project)
    else:
        result = _object_at_point(context, image, drawn, spec, project)
    return as_prediction(result or [drawn.item], model_version)


def drawn_region(request_context: dict, spec: OutputSpec) -> DrawnRegion:
    """The region just drawn: the last rectangle or point of the context (Label Studio sends it last)."""
    items = request_context.get("result")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InteractiveError("params.context.result must be a list of result items")
    drawn = [item for item in items if item.get("type") in DRAWN_TYPES]
    if not drawn:
        raise InteractiveError(f"params.context.result holds no drawn region (a result item of type "
                               f"{' or '.join(DRAWN_TYPES)})")
    item = drawn[-1]
    kind, value = item["type"], item.get("value")
    if not isinstance(value, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise InteractiveError("the drawn region needs an 'id' and a 'value' object")
    labels = value.get(kind)
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise InteractiveError(f"the drawn region's value.{kind} must be a list of labels")
    try:
        x, y = float(value["x"]), float(value["y"])
        size = (float(value["width"]), float(value["height"])) if kind == "rectanglelabels" else None
    except (KeyError, TypeError, ValueError):
        raise InteractiveError("the drawn region needs numeric value.x and value.y (and width and height for a "
                               "rectangle), in percent of the image") from None
    if not np.isfinite([x, y, *(size or ())]).all() or (size is not None and min(size) <= 0):
        raise InteractiveError("the drawn region's coordinates must be finite, and a rectangle's size positive")
    if not (0 <= x < 100 and 0 <= y < 100):
        raise InteractiveError("the drawn region must start inside the image (x and y in percent, 0 to 100)")
    control = spec.control(str(item.get("from_name")))
    label = labels[0] if labels else ""
    owner = _owner(control, label) if control is not None and item.get("to_name") == spec.image_name else None
    box = np.array([x, y, min(x + size[0], 100.0), min(y + size[1], 100.0)]) if size is not None else None
    point = np.array([x, y]) if size is None else None
    return DrawnRegion(item, control, owner, label, box, point)


def _owner(control, label: str) -> int | None:
    """FACE or PERSON: what a region of this control and label is drawn on, or None."""
    if isinstance(control, BoxControl):
        for owner, own_label in ((FACE, control.face_label), (PERSON, control.person_label)):
            if own_label is not None and normalise_label(own_label) == normalise_label(label):
                return owner
    elif isinstance(control, KeypointControl):
        if label in control.face_points.values():
            return FACE
        if label in control.body_points.values():
            return PERSON
    return None


def _refined_box(context: AppContext, image: LoadedImage, drawn: DrawnRegion, spec: OutputSpec,
                 project: str | None) -> list[dict]:
    """The drawn rectangle's object: found again in a crop around it, or the box as drawn (faces only)."""
    pixels = image.pixels
    box = drawn.box / 100.0 * np.tile([pixels.shape[1], pixels.shape[0]], 2)
    ensemble = context.annotator.faces if drawn.owner == FACE else context.annotator.persons
    with context.models_lock:
        found = search_box(ensemble, pixels, box, **CROP[drawn.owner])
    overlap = box_iou(box, found.boxes)[0]
    if len(found) and overlap.max() >= MIN_OVERLAP:
        found = found[int(np.argmax(overlap))]
    elif drawn.owner == FACE:  # the annotator says a face is there: describe the box as drawn
        found = Detections(box[None], np.zeros(1), FACE).valid()
    else:
        found = Detections.empty()
    if not len(found):
        return []
    spec = dataclasses.replace(spec, boxes=[drawn.control])
    return _answer(context, image, found, drawn.owner, drawn.item["id"], spec, project)


def _object_at_point(context: AppContext, image: LoadedImage, drawn: DrawnRegion, spec: OutputSpec,
                     project: str | None) -> list[dict]:
    """The face or person containing the clicked point, in the whole image; the point becomes its own."""
    pixels = image.pixels
    point = drawn.point / 100.0 * np.array([pixels.shape[1], pixels.shape[0]])
    with context.models_lock:
        if drawn.owner == FACE:
            found = search_point(context.annotator.faces, pixels, point)
        else:
            found = _containing(context.annotator.persons.detect(pixels), point)
    if not len(found):
        return []
    found = found[int(np.argmax(found.scores))]
    box_id = f"{drawn.item['id']}_{'face' if drawn.owner == FACE else 'person'}"
    box_controls = spec.face_boxes if drawn.owner == FACE else spec.person_boxes
    result = _answer(context, image, found, drawn.owner, box_id, dataclasses.replace(spec, boxes=box_controls[:1]),
                     project)
    clicked = [r for r in result if r["from_name"] == drawn.control.name
               and r["value"].get("keypointlabels") == [drawn.label]]
    if clicked:
        clicked[0]["id"] = drawn.item["id"]
    else:  # the models give no point of this label: the click stays where it was, on its object
        point_item = {**drawn.item}
        if any(r["id"] == box_id for r in result):
            point_item["parentID"] = box_id
        result.append(point_item)
    return result


def _answer(context: AppContext, image: LoadedImage, found: Detections, owner: int, region_id: str,
            spec: OutputSpec, project: str | None) -> list[dict]:
    """The result items of one found face (with its identity) or person, under `region_id`."""
    vision = context.annotator
    pixels = image.pixels
    height, width = pixels.shape[:2]
    if owner == PERSON:
        annotation = ImageAnnotation(width, height, Detections.empty(), np.zeros((0, vision.descriptors.dim)),
                                     np.zeros(0), found)
        return regions(at_original_size(annotation, image), [], np.zeros(0), spec, person_ids=[region_id])
    with context.models_lock:
        descriptors = vision.descriptors.embed(pixels, found)
        quality = face_quality(pixels, found, vision.identity_min_face)
    annotation = ImageAnnotation(width, height, found, descriptors, quality, Detections.empty())
    identity = None
    if project is not None and descriptors.shape[1]:
        identity = context.store.nearest_identity(project, descriptors[0], float(quality[0]), vision.identity_distance)
    return regions(at_original_size(annotation, image), [identity and identity.identity],
                   np.array([identity.confidence if identity else 0.0]), spec, face_ids=[region_id])


def search_point(ensemble: DetectorEnsemble, image: np.ndarray, point: np.ndarray) -> Detections:
    """The faces containing `point` that `ensemble` finds in the first of the POINT_SEARCH_SIDES boxes around it
    that holds any."""
    found = Detections.empty()
    for side in np.array(POINT_SEARCH_SIDES) * min(image.shape[:2]):
        found = _containing(search_box(ensemble, image, np.concatenate([point - side / 2, point + side / 2]),
                                       **CROP[FACE]), point)
        if len(found):
            break
    return found


def _containing(found: Detections, point: np.ndarray) -> Detections:
    return found[((found.boxes[:, :2] <= point) & (point <= found.boxes[:, 2:])).all(axis=1)]


def search_box(ensemble: DetectorEnsemble, image: np.ndarray, box: np.ndarray, margin: float,
               side: float) -> Detections:
    """The objects `ensemble` finds in a crop around `box` (x1, y1, x2, y2 pixels of `image`), `margin` box
    sizes wider on each side and scaled so that the box's longer side is `side` pixels; in `image`'s pixels."""
    height, width = image.shape[:2]
    size = box[2:] - box[:2]
    x1, y1 = np.floor(np.maximum(box[:2] - margin * size, 0)).astype(int)
    x2, y2 = np.ceil(np.minimum(box[2:] + margin * size, [width, height])).astype(int)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return Detections.empty()
    scale = min(side / max(size.max(), 1.0), MAX_UPSCALE)
    crop_width, crop_height = max(round((x2 - x1) * scale), 1), max(round((y2 - y1) * scale), 1)
    crop = cv2.resize(image[y1:y2, x1:x2], (crop_width, crop_height),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    found = ensemble.detect(crop)
    return found.scaled((x2 - x1) / crop_width, (y2 - y1) / crop_height, x1, y1).clipped(width, height)
