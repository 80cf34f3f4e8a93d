"""Predictions for a batch of Label Studio tasks: fetch each image, run the vision pipeline, give every face
its identity, and write it all as Label Studio predictions. /predict and the command line both use it.

A task whose image cannot be read (or whose models fail) gets an empty prediction and a log line that names
the task and the reason; the rest of the batch is served.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid

from ..storage import batch_identity_names, project_identities
from ..storage.review import face_thumbnails, save_thumbnails
from ..vision.annotator import ImageAnnotation
from .context import AppContext
from .images import ImageError, LoadedImage
from .label_config import OutputSpec
from .predictions import empty_prediction, face_region_id, to_prediction

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BatchResult:
    predictions: list[dict]  # one per task answered, in the order of the tasks
    identities: list[list[str]]  # per task answered, the id shown for each of its faces
    failed: dict[int, str]  # index of a task -> why it has an empty prediction
    unanswered: int  # tasks at the end of the batch left for later because the deadline came


def predict_tasks(context: AppContext, tasks: list, spec: OutputSpec, project: str | None,
                  deadline: float | None = None, images=None, progress=None) -> BatchResult:
    """Predict `tasks` (Label Studio task objects). With a `project`, identities are the project's, kept in
    the face store; without one they hold within this batch only.

    deadline: a time.monotonic() past which no new task is started; the tasks not reached are left out of
    the answer (a prefix of the batch is answered), so that the caller can answer within its own time limit.
    images: the ImageLoader to read images with (default: the context's, which refuses paths outside
    LOCAL_FILES_ROOT; the command line passes one that reads the paths its user gives).
    progress: called with no argument after each task's image is annotated (or has failed).
    """
    vision = context.annotator
    images = images or context.images
    annotations: dict[int, ImageAnnotation] = {}
    keys: dict[int, str] = {}
    thumbnails: dict[int, list[bytes]] = {}  # index of a task -> a JPEG of each of its faces (review page)
    failed: dict[int, str] = {}
    reached = len(tasks)
    for index, task in enumerate(tasks):
        if deadline is not None and time.monotonic() > deadline:
            reached = index
            break
        task_id = task.get("id") if isinstance(task, dict) else None
        try:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise ImageError("the task is not an object with a 'data' object")
            image = images.load(task["data"].get(spec.image_key))
            with context.models_lock:
                annotations[index] = at_original_size(vision.annotate(image.pixels), image)
            # A task without an id cannot be annotated in Label Studio: its faces are stored under a key of
            # their own, so that they count for the identities but replace nothing.
            keys[index] = str(task_id) if task_id is not None else f"no-id-{uuid.uuid4().hex}"
            if project and context.settings.thumbnails:
                thumbnails[index] = face_thumbnails(image.pixels, annotations[index].faces.boxes * image.scale,
                                                    context.settings.thumbnail_size)
        except ImageError as error:
            failed[index] = str(error)
            logger.error("task %s: no prediction: %s", task_id, error)
        except Exception:  # a model failing on one image must not cost the batch its other predictions
            failed[index] = "the models failed on this image (see the backend log)"
            logger.exception("task %s: no prediction: the models failed on this image", task_id)
        if progress:
            progress()
    if reached < len(tasks):
        logger.warning("deadline reached: %d of %d tasks predicted, the other %d are left for a later call",
                       reached, len(tasks), len(tasks) - reached)

    done = list(annotations.values())
    with context.models_lock:
        identities = vision.identify(done)
    confidence = identities.confidence
    if project:
        names, confidence = project_identities(context.store, project, list(keys.values()), done,
                                                   identities.labels, face_region_id, vision.model_version,
                                                   vision.identity_distance)
        save_thumbnails(context.store, project, {(keys[index], face_region_id(i)): jpeg
                                                 for index, jpegs in thumbnails.items() for i, jpeg in enumerate(jpegs)})
    else:
        names = batch_identity_names(identities.labels)
    by_task = dict(zip(annotations, zip(done, names, confidence)))
    predictions = [
        to_prediction(*by_task[index], spec, vision.model_version) if index in by_task
        else empty_prediction(vision.model_version)
        for index in range(reached)
    ]
    shown = [by_task[index][1] if index in by_task else [] for index in range(reached)]
    return BatchResult(predictions, shown, failed, len(tasks) - reached)


def at_original_size(annotation: ImageAnnotation, image: LoadedImage) -> ImageAnnotation:
    """Large images are annotated reduced (images.LoadedImage); Label Studio and the store want the
    coordinates of the image as uploaded."""
    if (annotation.width, annotation.height) == (image.width, image.height):
        return annotation
    scale_x, scale_y = image.width / annotation.width, image.height / annotation.height
    return dataclasses.replace(annotation, width=image.width, height=image.height,
                               faces=annotation.faces.scaled(scale_x, scale_y),
                               persons=annotation.persons.scaled(scale_x, scale_y))
