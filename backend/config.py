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
    # detectors (BlazePose alone) then find people of a group they miss in the whole image. Off by default:
    # with the default multi-person detectors (NanoDet, MoveNet) it found no person more on the test, people
    # and hard-face sets (bench/results/quality.md), and it runs every person detector again per such face.
    face_guided_persons: bool = False
    face_score_threshold: float = 0.3  # FACE_SCORE_THRESHOLD: fused faces below this are not sent
    # PERSON_SCORE_THRESHOLD: fused people below this are not sent. Lower than the faces': the default person
    # ensemble has three members, so a person only one of them sees (one cut off by the frame, seen from behind)
    # keeps about a third of that model's score; at 0.15 the shipped photos lose no person and gain no false box.
    person_score_threshold: float = 0.15
    # IDENTITY_DISTANCE: cosine distance above which faces are different people; by default the descriptor
    # models' own `identity_distance` from the manifest (it differs per network: dlib ~0.075, ArcFace ~0.6).
    identity_distance: float | None = None
    identity_min_face: int = 32  # IDENTITY_MIN_FACE: faces narrower than this (px) get a low identity score
    # THUMBNAILS: keep a small JPEG of every stored face for the identity review page (/identities; about
    # 2 KB a face); off, the page shows placeholders. THUMBNAIL_SIZE: their side, pixels.
    thumbnails: bool = True
    thumbnail_size: int = 64

    # Label Studio
    label_studio_url: str = ""  # LABEL_STUDIO_URL: where uploaded images (/data/upload/...) are fetched
    label_studio_api_key: str = ""  # LABEL_STUDIO_API_KEY: legacy token or personal access token
    face_labels: tuple[str, ...] = ("face",)  # FACE_LABELS: label values (any case) that mean a face
    person_labels: tuple[str, ...] = ("person", "people", "human", "pedestrian")  # PERSON_LABELS

    # Images
    # LOCAL_FILES_ROOT: the only folder local images are read from (bare paths, file:// URLs, and
    # /data/local-files/?d=... straight from a volume shared with Label Studio); unset: no local file is read.
    local_files_root: Path | None = None
    # ALLOWED_IMAGE_HOSTS: image hosts allowed although they resolve to loopback, private, link-local or other
    # non-public addresses: host names, IP addresses or networks (10.0.0.0/8), comma-separated. Label
    # Studio's own host and port (LABEL_STUDIO_URL) are always allowed.
    allowed_image_hosts: tuple[str, ...] = ()
    max_image_bytes: int = 50 * 1024 * 1024  # MAX_IMAGE_BYTES
    max_image_pixels: int = 80_000_000  # MAX_IMAGE_PIXELS: larger images are refused (decompression bombs)
    # MAX_WORK_PIXELS: larger images are decoded reduced (JPEG straight from the file at 1/2, 1/4, 1/8) and
    # resized to at most this many pixels; the models run on that and coordinates are scaled back. The
    # default models' memory grows with the pixels they see, about 0.2 GiB per Mpx (1.0 GiB peak at 4 Mpx,
    # 1.8 at 8, 3.3 at 16 on top of the loaded models): 8 Mpx keeps a worker under 2.5 GiB (README, Security).
    # Decoding one image of up to MAX_IMAGE_PIXELS peaks at 0.2-0.35 GiB resident for PNG, TIFF and baseline
    # JPEG, 0.6 GiB for a progressive JPEG, 0.75 GiB for a GIF (one decode at a time per worker;
    # tests/test_image_sources_security.py measures it).
    max_work_pixels: int = 8_000_000
    min_image_side: int = 16  # MIN_IMAGE_SIDE: smaller images are refused: nothing can be found in them
    fetch_timeout: float = 30.0  # FETCH_TIMEOUT: seconds for a whole image download, redirects included

    # Security: HTTP basic auth on every route but /health, with the names of Label Studio's Connect Model
    # form. Unset: the backend listens on loopback only and serves only clients on its own machine.
    basic_auth_user: str = ""  # BASIC_AUTH_USER
    basic_auth_pass: str = ""  # BASIC_AUTH_PASS

    # Request bounds
    max_request_bytes: int = 10 * 1024 * 1024  # MAX_REQUEST_BYTES: larger request bodies get 413
    max_tasks_per_request: int = 1000  # MAX_TASKS_PER_REQUEST: a /predict with more tasks gets 413
    max_result_items: int = 10000  # MAX_RESULT_ITEMS: a webhook annotation with more result items gets 400
    max_name_length: int = 200  # MAX_NAME_LENGTH: longer identity names are refused
    # REVIEW_PUSH_INLINE_TASKS: a review-page operation that concerns more tasks than this answers at once and
    # rewrites their predictions in Label Studio in a background job the page follows (a request waiting on
    # thousands of Label Studio calls would outlive its worker's timeout).
    review_push_inline_tasks: int = 50
    # AUTO_RECLUSTER: after /predict, re-cluster a project (a background job, as POST /recluster) once its
    # faces have grown by this fraction since its last re-clustering (and by at least 10); 0: never.
    auto_recluster: float = 0.1
    # PREDICT_TIMEOUT: seconds after which /predict starts no new task and answers those done; keep it under
    # Label Studio's ML_TIMEOUT_PREDICT (100 s by default) by at least the time of one image.
    predict_timeout: float = 80.0

    # Service
    data_dir: Path = Path("data")  # DATA_DIR: the backend's state
    # DATABASE_URL: where the face store keeps every face and identity: postgresql://user:password@host/db
    # so that several replicas share one store; unset: an SQLite file, DATA_DIR/faces.sqlite3.
    database_url: str = ""
    # INDEX_DIR: where each project's vector index of the face store is written, with the last face it holds,
    # so that a new worker reads it and catches up on the faces stored since instead of reading all of the
    # project's faces (12-62 s at 10^6); a file that cannot be trusted is rebuilt. Unset: DATA_DIR/indexes.
    index_dir: Path | None = None
    # INDEX_CACHE_MB: memory a worker's vector indexes may take; past it the least recently used project's
    # index leaves memory until it is next needed. An index counts 2.5 GiB per 10^6 faces of the default
    # 1152-d descriptors (FaceIndex.nbytes: float16, and their 128 principal components; 2.6 GiB resident;
    # ~370 MiB of 128-d ones): 3 GiB keeps a 10^6-face project's index and smaller projects' beside it,
    # instead of reading it again from its file whenever another project is used.
    index_cache_mb: int = 3072
    host: str = "0.0.0.0"  # HOST
    port: int = 9090  # PORT
    workers: int = 1  # WORKERS: gunicorn worker processes (each loads the models)
    threads: int = 4  # THREADS: gunicorn threads per worker
    request_timeout: int = 600  # REQUEST_TIMEOUT: gunicorn worker timeout, seconds
    # MAX_REQUESTS: a worker is replaced after about this many requests (plus up to 10% jitter), so that
    # memory a long run fragments is given back; 0 never replaces workers.
    max_requests: int = 1000
    log_level: str = "INFO"  # LOG_LEVEL

    # Whole-project runs (autoannotator prelabel and annotate, POST /prelabel; service/prelabel.py)
    # PRELABEL_BATCH: tasks predicted together: their faces are clustered together and stored in one
    # transaction. Small, so that memory stays flat and a killed run redoes little.
    prelabel_batch: int = 16
    # PRELABEL_PUSH: predictions sent to Label Studio in one request (its import API creates them atomically
    # up to 500).
    prelabel_push: int = 200
    # RAY_ADDRESS: run prelabel/annotate and recluster on this Ray cluster (host:6379, or "auto" on a node of
    # it) instead of in this process; needs requirements-ray.txt, and for prelabel/annotate DATABASE_URL (the
    # actors share the face store; recluster's workers only compute, the driver reads and writes the store).
    ray_address: str = ""
    # RAY_ACTORS: Ray actors that predict (each loads the models once); 0: one per RAY_ACTOR_CPUS CPUs of the
    # cluster. RAY_ACTOR_CPUS: CPUs each actor reserves, and the threads its models use.
    ray_actors: int = 0
    ray_actor_cpus: float = 1.0

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
