"""The Label Studio ML backend: label-studio-ml's LabelStudioMLBase, filled with our vision pipeline."""
from __future__ import annotations

import logging
import threading
from functools import lru_cache

from flask import has_request_context, request
from label_studio_ml.model import LabelStudioMLBase

from ..config import Settings
from ..vision.annotator import Annotator
from .images import ImageError, ImageLoader
from .label_config import LabelConfigError, OutputSpec, parse_label_config
from .label_studio import LabelStudioClient
from .predictions import empty_prediction, to_prediction

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
        annotations = {}
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            try:
                if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                    raise ImageError("the task is not an object with a 'data' object")
                url = task["data"].get(spec.image_key)
                image = loader.load(url)
                with _models_lock:
                    annotations[id(task)] = vision.annotate(image)
            except ImageError as error:
                logger.error("task %s: no prediction: %s", task_id, error)
            except Exception:  # a model failing on one image must not cost the batch its other predictions
                logger.exception("task %s: no prediction: the models failed on this image", task_id)

        done = list(annotations.values())
        with _models_lock:
            identities = vision.identify(done)
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

    def _spec_for_request(self) -> OutputSpec:
        # label-studio-ml 1.0.9 keeps the config of the last /setup; Label Studio sends the project's
        # current config with every /predict, which wins when several projects share the backend.
        payload = request.get_json(silent=True) if has_request_context() else None
        config = (payload or {}).get("label_config") if isinstance(payload, dict) else None
        if config:
            return output_spec(config)
        if self.spec is None:
            raise LabelConfigError("no label config: call /setup first or send label_config with /predict")
        return self.spec
