"""Label Studio webhooks: annotations that annotators submitted or deleted, deleted tasks and projects, and
what the face store learns from them.

An annotation is read as the truth about its task's faces (see FaceStore.learn): the face boxes in it
are confirmed, boxes it lacks are forgotten, the text or choice on a box names its identity, and a box
drawn or moved by hand gets a descriptor from the task's image. START_TRAINING (the Start Training button)
re-clusters the project. Deleting it takes that truth back (FaceStore.unlearn);
deleting tasks or a project forgets their faces.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..storage import AnnotatedFace
from ..storage.review import face_thumbnails, save_thumbnails
from .context import AppContext
from .images import ImageError
from .label_config import LabelConfigError, OutputSpec, normalise_label
from .recluster import ReclusterError, start_job

logger = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
# Label Studio sends only the ids of what was deleted, under these keys.
DELETION_EVENTS = {"ANNOTATIONS_DELETED": "annotations", "ANNOTATION_DELETED": "annotations",
                   "TASKS_DELETED": "tasks", "PROJECT_DELETED": "project"}
IDENTITY_TYPES = {"textarea": "text", "choices": "choices"}  # result type -> the value key holding the id
DEFAULT_IMAGE_KEY = "image"  # the shipped label_config.xml's, for bodies that carry no label config
START_TRAINING = "START_TRAINING"  # the Start Training button (Label Studio's ML settings) sends it
# A stored face box that an annotation puts more than this many pixels away was moved by hand: Label Studio's
# percent coordinates bring a box back within a small fraction of a pixel.
MOVED_PIXELS = 0.5


class WebhookError(ValueError):
    pass


@dataclass
class _Box:
    region: str
    box: np.ndarray  # (4,) pixels
    name: str | None


def handle_event(context: AppContext, body) -> dict:
    """Check a webhook body and act on it; raises WebhookError saying what is malformed, before changing
    anything."""
    if not isinstance(body, dict):
        raise WebhookError("the body must be a JSON object")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise WebhookError("the body has no 'action'")
    if action in DELETION_EVENTS:
        return _deleted(context, body, action)
    if action == START_TRAINING:
        return _start_training(context, body, action)
    if action not in ANNOTATION_EVENTS:
        return {"action": action, "status": "ignored"}
    annotation = body.get("annotation")
    task = body.get("task")
    if not isinstance(annotation, dict) or not isinstance(annotation.get("result"), list):
        raise WebhookError(f"{action}: 'annotation' must be an object with a 'result' list")
    if len(annotation["result"]) > context.settings.max_result_items:
        raise WebhookError(f"{action}: {len(annotation['result'])} result items, over MAX_RESULT_ITEMS="
                           f"{context.settings.max_result_items}")
    if not isinstance(task, dict) or "id" not in task:
        raise WebhookError(f"{action}: 'task' must be an object with an 'id'")
    project = _project_id(body, action)
    spec = _output_spec(context, body)
    boxes = _face_boxes(context, annotation["result"], action, spec)
    logger.info("%s: project %s, task %s, annotation %s, %d result items, %d faces", action, project, task["id"],
                annotation.get("id"), len(annotation["result"]), len(boxes))
    answer = {"action": action, "status": "received", "task": task["id"], "regions": len(annotation["result"])}
    if project is None or annotation.get("was_cancelled"):  # nothing to learn: no project, or a skipped task
        return answer
    store = context.store
    task_key = str(task["id"])
    stored = store.boxes(project, task_key)
    # Boxes drawn by hand (the store does not know them) or moved by hand need a descriptor from the image.
    edited = [b for b in boxes if b.region not in stored or _moved(stored[b.region], b.box)]
    descriptors, thumbnails = _describe(context, edited, task, spec)
    faces = [AnnotatedFace(b.region, b.box, b.name, descriptors.get(b.region)) for b in boxes]
    learned = store.learn(project, task_key, faces, context.annotator.identity_distance,
                          annotation=_optional_id(annotation.get("id"), f"{action}: annotation id"))
    save_thumbnails(store, project, {(task_key, region): jpeg for region, jpeg in thumbnails.items()})
    return {**answer, "project": project, **learned}


def _moved(before: np.ndarray, after: np.ndarray) -> bool:
    return bool(np.abs(before - after).max() > MOVED_PIXELS)


def _start_training(context: AppContext, body: dict, action: str) -> dict:
    """Label Studio's *Start Training* button: re-cluster the project's identities in a recluster job."""
    project = _project_id(body, action)
    if project is None:
        raise WebhookError(f"{action}: the body has no project id")
    try:
        job = start_job(context, {"project": project})
    except ReclusterError as error:
        if error.status != 409:
            raise WebhookError(f"{action}: {error}") from None
        return {"action": action, "status": "running", "project": project, "detail": str(error)}
    return {"action": action, "status": "started", "project": project, "job": job["job"]}


def _deleted(context: AppContext, body: dict, action: str) -> dict:
    """ANNOTATIONS_DELETED, TASKS_DELETED and PROJECT_DELETED carry only the ids of what is gone."""
    key = DELETION_EVENTS[action]
    if key == "project":
        project = _project_id(body, action)
        if project is None:
            raise WebhookError(f"{action}: the body has no project id")
        return {"action": action, "status": "received", "project": project, **context.store.forget_project(project)}
    items = body.get(key)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise WebhookError(f"{action}: '{key}' must be a list of objects with an 'id'")
    if len(items) > context.settings.max_result_items:
        raise WebhookError(f"{action}: {len(items)} {key}, over MAX_RESULT_ITEMS={context.settings.max_result_items}")
    ids = [_optional_id(item.get("id"), f"{action}: {key} id") for item in items]
    if None in ids:
        raise WebhookError(f"{action}: every item of '{key}' needs its 'id'")
    project = _project_id(body, action) if body.get("project") is not None else None
    if project is None:
        raise WebhookError(f"{action}: the body has no project id")
    store = context.store
    done = store.unlearn(project, ids) if key == "annotations" else store.forget_tasks(project, ids)
    logger.info("%s: project %s, %d %s: %s", action, project, len(ids), key, done)
    return {"action": action, "status": "received", "project": project, **done}


def _optional_id(value, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise WebhookError(f"{what} must be a number, got {value!r}")
    return str(value)


def _project_id(body: dict, action: str) -> str | None:
    """Label Studio sends the project as an object; its id also sits in the task."""
    project = body.get("project")
    task = body.get("task") if isinstance(body.get("task"), dict) else {}
    return _optional_id(project.get("id") if isinstance(project, dict) else task.get("project"),
                        f"{action}: the project id")


def _output_spec(context: AppContext, body: dict) -> OutputSpec | None:
    """The project's label config as Label Studio sends it with annotation webhooks, or None without one."""
    config = body["project"].get("label_config") if isinstance(body.get("project"), dict) else None
    if not isinstance(config, str) or not config:
        return None
    try:
        return context.output_spec(config)
    except LabelConfigError as error:
        logger.warning("the project's label config cannot be used (%s): face boxes are told by their label", error)
        return None


def _face_boxes(context: AppContext, result: list, action: str, spec: OutputSpec | None) -> list[_Box]:
    """The annotation's face boxes in pixels, each with the identity text or choice on its region.

    With the label config, a face box is a region of the first face-box control (the one whose regions the
    store holds; others repeat its boxes) with its face label, and identities come from its identity
    controls; without it, any box with a FACE_LABELS label is a face."""
    settings = context.settings
    face_control = spec.face_boxes[0] if spec and spec.face_boxes else None
    identity_controls = {c.name for c in spec.identities} if spec else None

    def is_face(item: dict, labels) -> bool:
        if face_control is not None:
            return item.get("from_name") == face_control.name and face_control.face_label in labels
        return any(normalise_label(str(label)) in settings.face_labels for label in labels)

    names, boxes = {}, []
    for index, item in enumerate(result):
        where = f"{action}: annotation result item {index}"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise WebhookError(f"{where} must be an object with a 'value' object")
        kind, value = item.get("type"), item["value"]
        if kind in IDENTITY_TYPES and item.get("id") is not None and (
                identity_controls is None or item.get("from_name") in identity_controls):
            texts = value.get(IDENTITY_TYPES[kind])
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise WebhookError(f"{where}: '{IDENTITY_TYPES[kind]}' must be a list of strings")
            name = next((t.strip() for t in texts if t.strip()), None)
            if name and len(name) > settings.max_name_length:
                raise WebhookError(f"{where}: an identity name of {len(name)} characters, over MAX_NAME_LENGTH="
                                   f"{settings.max_name_length}")
            names[str(item["id"])] = name
        elif kind == "rectanglelabels" and is_face(item, value.get("rectanglelabels") or ()):
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


def _describe(context: AppContext, drawn: list[_Box], task: dict,
              spec: OutputSpec | None) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
    """Descriptors of boxes drawn or moved by hand, from the task's image, and their thumbnails for the review
    page (THUMBNAILS); none when the image cannot be read: then boxes the store does not know are left out,
    moved ones keep their descriptor, as the log says."""
    if not drawn:
        return {}, {}
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    try:
        image = context.images.load(data.get(spec.image_key if spec else DEFAULT_IMAGE_KEY))
    except ImageError as error:
        logger.warning("task %s: %d face boxes drawn or moved by hand not described (drawn ones are left out of "
                       "the face store): %s", task["id"], len(drawn), error)
        return {}, {}
    # Boxes are in the uploaded image's pixels; a large image is loaded reduced by image.scale.
    boxes = np.stack([b.box for b in drawn]) * image.scale
    descriptors = context.describe_faces(image.pixels, boxes)
    settings = context.settings
    jpegs = face_thumbnails(image.pixels, boxes, settings.thumbnail_size) if settings.thumbnails else []
    return {b.region: d for b, d in zip(drawn, descriptors)}, {b.region: j for b, j in zip(drawn, jpegs)}
