"""Label Studio webhooks: annotations that annotators submitted, and what the face store learns from them.

An annotation is read as the truth about its task's faces (see FaceStore.learn): the face boxes in it
are confirmed, boxes it lacks are forgotten, the text or choice on a box names its identity, and a box
drawn by hand gets a descriptor from the task's image.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..storage import AnnotatedFace
from . import model
from .images import ImageError
from .label_config import LabelConfigError, normalise_label

logger = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
IDENTITY_TYPES = {"textarea": "text", "choices": "choices"}  # result type -> the value key holding the id
DEFAULT_IMAGE_KEY = "image"  # the shipped label_config.xml's, for bodies that carry no label config


class WebhookError(ValueError):
    pass


@dataclass
class _Box:
    region: str
    box: np.ndarray  # (4,) pixels
    name: str | None


def handle_event(body) -> dict:
    """Check a webhook body and act on it; raises WebhookError saying what is malformed, before changing
    anything."""
    if not isinstance(body, dict):
        raise WebhookError("the body must be a JSON object")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise WebhookError("the body has no 'action'")
    if action not in ANNOTATION_EVENTS:
        return {"action": action, "status": "ignored"}
    annotation = body.get("annotation")
    task = body.get("task")
    if not isinstance(annotation, dict) or not isinstance(annotation.get("result"), list):
        raise WebhookError(f"{action}: 'annotation' must be an object with a 'result' list")
    if not isinstance(task, dict) or "id" not in task:
        raise WebhookError(f"{action}: 'task' must be an object with an 'id'")
    project = _project_id(body, action)
    boxes = _face_boxes(annotation["result"], action)
    logger.info("%s: project %s, task %s, annotation %s, %d result items, %d faces", action, project, task["id"],
                annotation.get("id"), len(annotation["result"]), len(boxes))
    answer = {"action": action, "status": "received", "task": task["id"], "regions": len(annotation["result"])}
    if project is None or annotation.get("was_cancelled"):  # nothing to learn: no project, or a skipped task
        return answer
    store = model.face_store()
    task_key = str(task["id"])
    drawn = [b for b in boxes if b.region not in store.regions(project, task_key)]
    descriptors = _describe(drawn, task, body)
    faces = [AnnotatedFace(b.region, b.box, b.name, descriptors.get(b.region)) for b in boxes]
    vision = model.annotator()
    learned = store.learn(project, task_key, faces, vision.model_version, vision.identity_distance)
    return {**answer, "project": project, **learned}


def _project_id(body: dict, action: str) -> str | None:
    """Label Studio sends the project as an object; its id also sits in the task."""
    project = body.get("project")
    value = project.get("id") if isinstance(project, dict) else body["task"].get("project")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise WebhookError(f"{action}: the project id must be a number, got {value!r}")
    return str(value)


def _face_boxes(result: list, action: str) -> list[_Box]:
    """The annotation's face boxes in pixels, each with the identity text or choice on its region."""
    settings = model.settings()
    names, boxes = {}, []
    for index, item in enumerate(result):
        where = f"{action}: annotation result item {index}"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise WebhookError(f"{where} must be an object with a 'value' object")
        kind, value = item.get("type"), item["value"]
        if kind in IDENTITY_TYPES and item.get("id") is not None:
            texts = value.get(IDENTITY_TYPES[kind])
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise WebhookError(f"{where}: '{IDENTITY_TYPES[kind]}' must be a list of strings")
            names[str(item["id"])] = next((t.strip() for t in texts if t.strip()), None)
        elif kind == "rectanglelabels" and any(normalise_label(str(label)) in settings.face_labels
                                                for label in value.get("rectanglelabels") or ()):
            boxes.append(_Box(_region_id(item, where), _pixels(item, where), None))
    for box in boxes:
        box.name = names.get(box.region)
    return boxes


def _region_id(item: dict, where: str) -> str:
    region = item.get("id")
    if not isinstance(region, str) or not region:
        raise WebhookError(f"{where}: a face box needs its region 'id'")
    return region


def _pixels(item: dict, where: str) -> np.ndarray:
    """x1, y1, x2, y2 in pixels from Label Studio's percent box and the image size it records."""
    try:
        x, y, width, height = (float(item["value"][k]) for k in ("x", "y", "width", "height"))
        image_width, image_height = float(item["original_width"]), float(item["original_height"])
    except (KeyError, TypeError, ValueError):
        raise WebhookError(f"{where}: a face box needs numeric value.x/y/width/height and "
                           "original_width/original_height") from None
    if not (image_width > 0 and image_height > 0 and width > 0 and height > 0):
        raise WebhookError(f"{where}: a face box needs a positive size and image size")
    return np.array([x, y, x + width, y + height]) / 100.0 * np.tile([image_width, image_height], 2)


def _describe(drawn: list[_Box], task: dict, body: dict) -> dict[str, np.ndarray]:
    """Descriptors of boxes the store does not know (drawn by hand), from the task's image; none when the
    image cannot be read: those boxes are then left out, and said so in the log."""
    if not drawn:
        return {}
    config = body["project"].get("label_config") if isinstance(body.get("project"), dict) else None
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    try:
        key = model.output_spec(config).image_key if config else DEFAULT_IMAGE_KEY
        image = model.image_loader().load(data.get(key))
    except (ImageError, LabelConfigError) as error:
        logger.warning("task %s: %d hand-drawn face boxes left out of the face store: %s",
                       task["id"], len(drawn), error)
        return {}
    descriptors = model.hand_drawn_descriptors(image, np.stack([b.box for b in drawn]))
    return {b.region: d for b, d in zip(drawn, descriptors)}
