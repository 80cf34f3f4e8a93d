"""The Label Studio ML backend: label-studio-ml's LabelStudioMLBase, filled with our vision pipeline."""
from __future__ import annotations

import logging
import threading
import uuid
from functools import lru_cache

import numpy as np
from flask import has_request_context, request
from label_studio_ml.model import LabelStudioMLBase

from ..config import Settings
from ..storage import FaceStore, NewFace
from ..vision.annotator import Annotator, Identities, ImageAnnotation
from ..vision.detections import FACE, Detections
from .images import ImageError, ImageLoader
from .label_config import LabelConfigError, OutputSpec, parse_label_config
from .label_studio import LabelStudioClient
from .predictions import empty_prediction, face_region_id, to_prediction

logger = logging.getLogger(__name__)

# LiteRT interpreters and dlib detectors are not safe to call from several threads at once; gunicorn's
# threads still let /health and /setup answer while one request runs the models.
_models_lock = threading.Lock()


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


@lru_cache(maxsize=1)
def annotator() -> Annotator:
    """Loaded once per process: the models take seconds to load and hundreds of MB of memory."""
    return Annotator.from_settings(settings())


@lru_cache(maxsize=1)
def image_loader() -> ImageLoader:
    s = settings()
    return ImageLoader(s, LabelStudioClient(s.label_studio_url, s.label_studio_api_key, timeout=s.fetch_timeout))


@lru_cache(maxsize=1)
def face_store() -> FaceStore:
    """Opened once per process: it holds one database connection per thread."""
    s = settings()
    return FaceStore.open(s.database_url, s.data_dir)


def hand_drawn_descriptors(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Descriptors of face boxes that annotators drew (webhooks), under the same lock as predict's models."""
    with _models_lock:
        return annotator().descriptors.embed(image, Detections(boxes, np.ones(len(boxes)), FACE))


def output_spec(label_config: str) -> OutputSpec:
    s = settings()
    return parse_label_config(label_config, s.face_labels, s.person_labels)


def identity_names(labels: list) -> list[list[str]]:
    """Cluster indices -> readable ids (person_1, person_2, ...) numbered in order of first appearance."""
    order: dict[int, str] = {}
    names = []
    for image_labels in labels:
        names.append([order.setdefault(int(label), f"person_{len(order) + 1}") for label in image_labels])
    return names


def stored_identity_names(store: FaceStore, vision: Annotator, project: str, tasks: list[str],
                          annotations: list[ImageAnnotation], identities: Identities) -> list[list[str]]:
    """Project-wide ids: the faces of these tasks' annotations join the project's identities in the store.

    Region ids are the ones to_prediction gives faces, so that the annotation Label Studio later sends back
    names the same faces.
    """
    faces = [
        NewFace(task, face_region_id(i), a.faces.boxes[i], a.faces.landmarks[i], a.descriptors[i], int(labels[i]))
        for task, a, labels in zip(tasks, annotations, identities.labels) for i in range(len(a.faces))
    ]
    ids = iter(store.assign(project, faces, vision.model_version, vision.identity_distance))
    return [[next(ids) for _ in range(len(a.faces))] for a in annotations]


class AutoAnnotatorModel(LabelStudioMLBase):
    def __init__(self, label_config=None, train_output=None, **kwargs):
        super().__init__(label_config=label_config, train_output=train_output, **kwargs)
        # An unusable config is refused at /setup, when the user connects the backend, not at the first task.
        self.spec = output_spec(label_config) if label_config else None

    @property
    def model_version(self) -> str:
        return annotator().model_version

    def predict(self, tasks, **kwargs):
        spec = self._spec_for_request()
        vision = annotator()
        loader = image_loader()
        project = self._project_for_request()
        annotations, keys = {}, {}
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            try:
                if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                    raise ImageError("the task is not an object with a 'data' object")
                url = task["data"].get(spec.image_key)
                image = loader.load(url)
                with _models_lock:
                    annotations[id(task)] = vision.annotate(image)
                # A task without an id cannot be annotated in Label Studio: its faces are stored under a key of
                # their own, so that they count for the identities but replace nothing.
                keys[id(task)] = str(task_id) if task_id is not None else f"no-id-{uuid.uuid4().hex}"
            except ImageError as error:
                logger.error("task %s: no prediction: %s", task_id, error)
            except Exception:  # a model failing on one image must not cost the batch its other predictions
                logger.exception("task %s: no prediction: the models failed on this image", task_id)

        done = list(annotations.values())
        with _models_lock:
            identities = vision.identify(done)
        if project:
            names = iter(stored_identity_names(face_store(), vision, project, list(keys.values()), done, identities))
        else:  # no project to remember them in: ids that hold within this request only
            names = iter(identity_names(identities.labels))
        confidence = iter(identities.confidence)
        predictions = []
        for task in tasks:
            annotation = annotations.get(id(task))
            if annotation is None:
                predictions.append(empty_prediction(vision.model_version))
            else:
                predictions.append(to_prediction(annotation, next(names), next(confidence), spec, vision.model_version))
        return predictions

    # label-studio-ml 1.0.9 passes predict() only the tasks and params; the project and its current label
    # config are in the /predict body, which Label Studio sends with every call.
    @staticmethod
    def _request_body() -> dict:
        body = request.get_json(silent=True) if has_request_context() else None
        return body if isinstance(body, dict) else {}

    def _project_for_request(self) -> str | None:
        """The Label Studio project id of this /predict request, or None. label-studio-ml sends "project" as
        "<id>.<created at>"; the id alone is what webhooks and the REST API call the project."""
        project = self._request_body().get("project")
        if not isinstance(project, (str, int)) or isinstance(project, bool):
            return None
        return str(project).split(".")[0] or None

    def _spec_for_request(self) -> OutputSpec:
        # The config of the last /setup is kept per process; the request's own config wins when several
        # projects share the backend.
        config = self._request_body().get("label_config")
        if config:
            return output_spec(config)
        if self.spec is None:
            raise LabelConfigError("no label config: call /setup first or send label_config with /predict")
        return self.spec
