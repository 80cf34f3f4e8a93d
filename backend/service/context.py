"""The service's application context: everything a request, webhook, job or page needs, built once per
worker process and passed explicitly to whoever needs it (never looked up through module-level singletons).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ..config import Settings
from ..storage import FaceStore
from ..vision.annotator import Annotator
from ..vision.detections import FACE, Detections
from .images import ImageLoader
from .label_config import OutputSpec, parse_label_config
from .label_studio import LabelStudioClient


@dataclass
class AppContext:
    settings: Settings
    annotator: Annotator  # the vision pipeline: seconds to load and hundreds of MB, so once per process
    store: FaceStore  # one database connection per thread
    label_studio: LabelStudioClient
    images: ImageLoader
    # LiteRT interpreters and dlib detectors are not safe to call from several threads at once; gunicorn's
    # threads still let /health and the job endpoints answer while one request runs the models.
    models_lock: threading.Lock = field(default_factory=threading.Lock)
    # Projects whose re-clustering is being considered after a /predict (recluster.check_after_predict).
    recluster_checks: set = field(default_factory=set)
    recluster_checks_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings, annotator: Annotator | None = None) -> "AppContext":
        label_studio = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key,
                                         timeout=settings.fetch_timeout)
        return cls(
            settings=settings,
            annotator=annotator or Annotator.from_settings(settings),
            store=FaceStore.open(settings.database_url, settings.data_dir, settings.index_dir,
                                 settings.index_cache_mb),
            label_studio=label_studio,
            images=ImageLoader(settings, label_studio),
        )

    def output_spec(self, label_config: str) -> OutputSpec:
        """What to send for a project with this label config (LabelConfigError when it cannot be used)."""
        return parse_label_config(label_config, self.settings.face_labels, self.settings.person_labels)

    def describe_faces(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Descriptors of face boxes that people drew, under the same lock as the models' other uses."""
        with self.models_lock:
            return self.annotator.descriptors.embed(image, Detections(boxes, np.ones(len(boxes)), FACE))
