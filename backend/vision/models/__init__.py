"""Model adapters: one module and one class per model family, each owning its session,
its pre-processing and its decoding. FAMILIES routes a manifest entry's `family` to its class."""
from __future__ import annotations

import importlib
from pathlib import Path

from ..manifest import ModelSpec
from .base import Detector, Embedder

# family name -> "module:Class"; imported lazily so that a family's optional runtime (dlib, LiteRT)
# is only needed when a preset uses it.
FAMILIES = {
    "scrfd": "scrfd:SCRFD",
    "yolo_face": "yolo_face:YoloFace",
    "rtdetr": "rtdetr:RTDETR",
    "yolo_person": "yolo_person:YoloPerson",
    "arcface": "arcface:ArcFace",
    "mtcnn": "mtcnn:MTCNN",
    "dlib_hog": "dlib_face:DlibHogFace",
    "dlib_mmod": "dlib_face:DlibMmodFace",
    "dlib_resnet": "dlib_resnet:DlibResNet",
    "faceres": "faceres:FaceRes",
    "blazeface": "blazeface:BlazeFace",
    "blazepose": "blazepose:BlazePosePerson",
    "movenet": "movenet:MoveNetMultiPose",
    "nanodet": "nanodet:NanoDet",
}


def load_model(spec: ModelSpec, models_dir: Path) -> Detector | Embedder:
    if spec.family not in FAMILIES:
        raise ValueError(f"model {spec.name!r}: unknown family {spec.family!r}; known: {sorted(FAMILIES)}")
    module_name, class_name = FAMILIES[spec.family].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(spec, Path(models_dir))
