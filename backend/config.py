"""Every setting of the backend, read from environment variables in this one place.

The README's "Environment variables" table lists the same names and defaults.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _bool(value: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


@dataclass(frozen=True)
class Settings:
    # Models
    models_dir: Path = REPO_ROOT / "models"  # MODELS_DIR: weight files and manifest.json
    model_manifest: Path | None = None  # MODEL_MANIFEST: defaults to MODELS_DIR/manifest.json
    model_preset: str = "default"  # MODEL_PRESET: a preset of the manifest
    face_models: tuple[str, ...] = ()  # FACE_MODELS: comma-separated, overrides the preset's face models
    person_models: tuple[str, ...] = ()  # PERSON_MODELS: likewise for person detectors
    descriptor_models: tuple[str, ...] = ()  # DESCRIPTOR_MODELS: likewise for face descriptors
    flip_tta: bool = True  # FLIP_TTA: also run every detector on the mirrored image and fuse both
    # Weighted boxes fusion IoU thresholds. Faces get a lower one because the default detectors frame a face
    # differently (MTCNN tall from hairline to chin, BlazeFace and dlib square): the same face overlaps at ~0.55.
    face_fusion_iou: float = 0.4  # FACE_FUSION_IOU
    person_fusion_iou: float = 0.55  # PERSON_FUSION_IOU
    # FACE_GUIDED_PERSONS: also search for a person's body in a crop below each face found: single-person
    # detectors (the default BlazePose) then find people of a group they miss in the whole image.
    face_guided_persons: bool = True
    face_score_threshold: float = 0.3  # FACE_SCORE_THRESHOLD: fused faces below this are not sent
    person_score_threshold: float = 0.3  # PERSON_SCORE_THRESHOLD: fused people below this are not sent
    # IDENTITY_DISTANCE: cosine distance above which faces are different people; by default the descriptor
    # models' own `identity_distance` from the manifest (it differs per network: dlib ~0.075, ArcFace ~0.6).
    identity_distance: float | None = None
    identity_min_face: int = 32  # IDENTITY_MIN_FACE: faces narrower than this (px) get a low identity score

    # Label Studio
    label_studio_url: str = ""  # LABEL_STUDIO_URL: where uploaded images (/data/upload/...) are fetched
    label_studio_api_key: str = ""  # LABEL_STUDIO_API_KEY: legacy token or personal access token
    face_labels: tuple[str, ...] = ("face",)  # FACE_LABELS: label values (any case) that mean a face
    person_labels: tuple[str, ...] = ("person", "people", "human", "pedestrian")  # PERSON_LABELS

    # Images
    local_files_root: Path | None = None  # LOCAL_FILES_ROOT: serve /data/local-files/ from this directory
    max_image_bytes: int = 50 * 1024 * 1024  # MAX_IMAGE_BYTES
    max_image_pixels: int = 80_000_000  # MAX_IMAGE_PIXELS: larger images are refused (decompression bombs)
    min_image_side: int = 16  # MIN_IMAGE_SIDE: smaller images are refused: nothing can be found in them
    fetch_timeout: float = 30.0  # FETCH_TIMEOUT: seconds per image download

    # Service
    data_dir: Path = Path("data")  # DATA_DIR: the backend's state
    # DATABASE_URL: where the face store keeps every face and identity: postgresql://user:password@host/db
    # so that several replicas share one store; unset: an SQLite file, DATA_DIR/faces.sqlite3.
    database_url: str = ""
    host: str = "0.0.0.0"  # HOST
    port: int = 9090  # PORT
    workers: int = 1  # WORKERS: gunicorn worker processes (each loads the models)
    threads: int = 4  # THREADS: gunicorn threads per worker
    request_timeout: int = 600  # REQUEST_TIMEOUT: gunicorn worker timeout, seconds
    log_level: str = "INFO"  # LOG_LEVEL

    @property
    def manifest_path(self) -> Path:
        return self.model_manifest or self.models_dir / "manifest.json"

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = _parse(f.type, raw)
            except ValueError as error:
                raise ValueError(f"environment variable {f.name.upper()}: {error}") from None
        return cls(**values)


def _parse(type_name: str, raw: str):
    if type_name == "bool":
        return _bool(raw)
    if type_name == "int":
        return int(raw)
    if type_name in ("float", "float | None"):
        return float(raw) if raw else None
    if type_name == "tuple[str, ...]":
        return _list(raw.lower()) if raw else ()
    if type_name in ("Path", "Path | None"):
        return Path(raw) if raw else None
    return raw
