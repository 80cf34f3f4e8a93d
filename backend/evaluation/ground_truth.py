"""Ground truth for `autoannotator eval`: faces (box, 5 landmarks, identity) and people (box) per image.

Two formats are read, both as their tools export them:
- Label Studio "JSON" export: a list of tasks; each task's submitted annotation is the truth (its
  predictions are ignored). Regions are in percent of the image and become pixels; a landmark belongs to
  the face its `parentID` names (or, without one, to the only face box that contains it); a per-region
  TextArea or Choices result with the face's region id gives the identity.
- COCO JSON (CVAT's "COCO 1.0" / "COCO Keypoints 1.0"): boxes are [x, y, width, height] pixels, the
  identity is the annotation attribute `identity`, five keypoints per face are the landmarks, and
  `iscrowd: 1` marks a "don't care" region.
Images are matched to files by file name only, so an export made on another machine still fits.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ..service.label_config import normalise_label
from ..vision.detections import LANDMARK_NAMES, NUM_LANDMARKS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# Label Studio stores an uploaded file as "<8 hex digits>-<original name>".
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


class GroundTruthError(ValueError):
    """The ground-truth file cannot be read; the message says where and why."""


@dataclass
class Objects:
    """The ground-truth objects of one class in one image."""

    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2 pixels
    landmarks: np.ndarray  # (N, 5, 2) in LANDMARK_NAMES order, NaN where not annotated
    identities: list  # (N,) person id, None where not annotated
    ignore: np.ndarray  # (N,) bool: "don't care" regions: finding or missing them costs nothing

    @classmethod
    def build(cls, boxes, landmarks=None, identities=None, ignore=None) -> "Objects":
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        if landmarks is None:
            landmarks = np.full((n, NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        return cls(
            boxes=boxes,
            landmarks=np.asarray(landmarks, dtype=np.float32).reshape(n, NUM_LANDMARKS, 2),
            identities=list(identities) if identities is not None else [None] * n,
            ignore=np.asarray(ignore if ignore is not None else np.zeros(n), dtype=bool).reshape(n),
        )

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class ImageTruth:
    file_name: str  # as the export names it (an upload may carry Label Studio's prefix)
    faces: Objects
    persons: Objects


def load_ground_truth(path: Path, face_labels=("face",), person_labels=("person",)) -> list[ImageTruth]:
    """Read either format; which one is told by the file's shape (a list of tasks, or images+annotations)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GroundTruthError(f"{path}: cannot read JSON: {error}") from None
    faces, persons = _label_set(face_labels), _label_set(person_labels)
    if isinstance(data, list):
        return _from_label_studio(data, faces, persons)
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return _from_coco(data, faces, persons)
    raise GroundTruthError(
        f"{path}: neither a Label Studio JSON export (a list of tasks) nor COCO (images and annotations)"
    )


def match_images(truth: list[ImageTruth], image_dir: Path) -> tuple[list[tuple[ImageTruth, Path]], list[str]]:
    """Pair each ground-truth image with a file under image_dir by name; also return the names not found."""
    files = {p.name: p for p in sorted(Path(image_dir).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs, missing = [], []
    for image in truth:
        name = Path(image.file_name).name
        path = files.get(name) or files.get(_UPLOAD_PREFIX.sub("", name))
        if path is None:
            missing.append(image.file_name)
        else:
            pairs.append((image, path))
    return pairs, missing


def _label_set(labels) -> set[str]:
    return {_norm(label) for label in labels}


def _norm(text) -> str:
    return normalise_label(str(text))


# ---- Label Studio -------------------------------------------------------------------------------------

def _from_label_studio(tasks: list, face_labels: set, person_labels: set) -> list[ImageTruth]:
    images = []
    for task in tasks:
        annotation = _chosen_annotation(task)
        if annotation is None:
            continue  # not annotated yet: it says nothing about what the image holds
        name = _task_file_name(task)
        if name is None:
            raise GroundTruthError(f"task {task.get('id')}: no image path in its data {task.get('data')}")
        try:
            images.append(_label_studio_regions(name, annotation.get("result", []), face_labels, person_labels))
        except (KeyError, TypeError, ValueError) as error:
            raise GroundTruthError(f"task {task.get('id')} ({name}): unreadable region: {error!r}") from None
    return images


def _chosen_annotation(task: dict) -> dict | None:
    """The annotation marked as ground truth in Label Studio, else the first one not cancelled (skipped)."""
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    marked = [a for a in done if a.get("ground_truth")]
    return (marked or done or [None])[0]


def _task_file_name(task: dict) -> str | None:
    """The image file name from the task data: /data/upload/1/abcd1234-x.jpg, /data/local-files/?d=dir/x.jpg,
    s3://bucket/x.jpg, http://host/x.jpg?sig=... or a plain path."""
    for value in task.get("data", {}).values():
        if not isinstance(value, str):
            continue
        parts = urlsplit(value)
        path = parse_qs(parts.query).get("d", [parts.path])[0]
        name = Path(unquote(path)).name
        if Path(name).suffix.lower() in IMAGE_SUFFIXES:
            return name
    return None


def _label_studio_regions(name: str, results: list, face_labels: set, person_labels: set) -> ImageTruth:
    face_boxes, face_ids, person_boxes = [], [], []
    points, identities = [], {}  # points: (parent id, landmark index, x, y)
    landmark_index = {n: i for i, n in enumerate(LANDMARK_NAMES)}
    for result in results:
        kind, value = result.get("type"), result.get("value", {})
        if kind == "rectanglelabels":
            label = _norm((value.get("rectanglelabels") or [""])[0])
            box = _rectangle_pixels(value, result["original_width"], result["original_height"])
            if label in face_labels:
                face_boxes.append(box)
                face_ids.append(result.get("id"))
            elif label in person_labels:
                person_boxes.append(box)
        elif kind == "keypointlabels":
            label = _norm((value.get("keypointlabels") or [""])[0])
            if label in landmark_index:
                x = value["x"] * result["original_width"] / 100.0
                y = value["y"] * result["original_height"] / 100.0
                points.append((result.get("parentID"), landmark_index[label], x, y))
        elif kind in ("textarea", "choices"):
            text = (value.get("text") or value.get("choices") or [""])[0].strip()
            if text and result.get("id"):
                identities[result["id"]] = text

    boxes = np.asarray(face_boxes, dtype=np.float32).reshape(-1, 4)
    landmarks = np.full((len(boxes), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
    for parent, index, x, y in points:
        face = _owner_face(parent, x, y, face_ids, boxes)
        if face is not None:
            landmarks[face, index] = (x, y)
    faces = Objects.build(boxes, landmarks, [identities.get(region) for region in face_ids])
    return ImageTruth(name, faces, Objects.build(person_boxes))


def _rectangle_pixels(value: dict, width: int, height: int) -> list[float]:
    """A Label Studio rectangle (percent, rotated about its top-left corner, degrees clockwise) as the
    axis-aligned pixel box that encloses it."""
    x, y = value["x"] * width / 100.0, value["y"] * height / 100.0
    w, h = value["width"] * width / 100.0, value["height"] * height / 100.0
    angle = math.radians(value.get("rotation", 0) or 0)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    corners = corners @ rotation.T + (x, y)
    return [*corners.min(axis=0), *corners.max(axis=0)]


def _owner_face(parent: str | None, x: float, y: float, face_ids: list, boxes: np.ndarray) -> int | None:
    if parent in face_ids:
        return face_ids.index(parent)
    inside = np.flatnonzero((boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3]))
    return int(inside[0]) if len(inside) == 1 else None  # in no face or in several: nobody's landmark


# ---- COCO ---------------------------------------------------------------------------------------------

def _from_coco(data: dict, face_labels: set, person_labels: set) -> list[ImageTruth]:
    categories = {c["id"]: c for c in data.get("categories", [])}
    kind_of = {cid: ("face" if _norm(c["name"]) in face_labels else "person" if _norm(c["name"]) in person_labels
                     else None) for cid, c in categories.items()}
    by_image: dict = {image["id"]: {"face": [], "person": []} for image in data["images"]}
    for ann in data["annotations"]:
        kind = kind_of.get(ann.get("category_id"))
        if kind is None:
            continue
        if ann.get("image_id") not in by_image:
            raise GroundTruthError(f"annotation {ann.get('id')}: image_id {ann.get('image_id')} is not in 'images'")
        by_image[ann["image_id"]][kind].append(ann)

    images = []
    for image in data["images"]:
        found = by_image[image["id"]]
        faces = found["face"]
        landmarks = [_coco_landmarks(ann, categories[ann["category_id"]]) for ann in faces]
        images.append(ImageTruth(
            file_name=image["file_name"],
            faces=Objects.build(
                [_coco_box(ann) for ann in faces],
                landmarks if faces else None,
                [(ann.get("attributes") or {}).get("identity") or None for ann in faces],
                [bool(ann.get("iscrowd")) for ann in faces],
            ),
            persons=Objects.build([_coco_box(ann) for ann in found["person"]],
                                  ignore=[bool(ann.get("iscrowd")) for ann in found["person"]]),
        ))
    return images


def _coco_box(ann: dict) -> list[float]:
    x, y, w, h = (float(v) for v in ann["bbox"])
    return [x, y, x + w, y + h]


def _coco_landmarks(ann: dict, category: dict) -> np.ndarray:
    """COCO keypoints [x, y, visibility] * K -> (5, 2), by the category's keypoint names when they are ours,
    else by position when there are exactly five; visibility 0 means "not labelled"."""
    landmarks = np.full((NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
    flat = ann.get("keypoints") or []
    if not flat:
        return landmarks
    triples = np.asarray(flat, dtype=np.float32).reshape(-1, 3)
    names = [_norm(n) for n in category.get("keypoints", [])]
    if set(names) & set(LANDMARK_NAMES):
        order = [names.index(n) if n in names else None for n in LANDMARK_NAMES]
    elif len(triples) == NUM_LANDMARKS:
        order = list(range(NUM_LANDMARKS))
    else:
        raise GroundTruthError(f"annotation {ann.get('id')}: {len(triples)} keypoints without the names "
                               f"{', '.join(LANDMARK_NAMES)} in its category")
    for target, source in enumerate(order):
        if source is not None and source < len(triples) and triples[source, 2] > 0:
            landmarks[target] = triples[source, :2]
    return landmarks
