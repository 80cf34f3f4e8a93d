"""Identities of small, blurred and dark faces: one batch against one task at a time, by threshold.

    python -m bench.identity_sequence [--thresholds 0.24 0.3 ...] [--voters 1 3 16] [--orders 10]
        [--auto-recluster 0.1] [--descriptors dlib_resnet faceres ...] [--cache FILE]

The set: every photo of tests/data/photos whose face has a known person (faces.json: 6 photos, 4 people,
Obama in three different photographs), each as it is and degraded in DEGRADATIONS: shrunk so that the
face is 24 to 72 px wide, each size sharp or blurred (Gaussian, sigma 1.2 px after shrinking), and lit
normally or dark (pixel values x 0.25 plus Gaussian noise of sigma 2, as an underexposed photo). Each
image goes through the default detectors (Annotator.annotate, as /predict runs them), and its faces through
the default descriptors or those of --descriptors; the face whose centre lies in the (scaled) true box is
scored, the image's other faces are stored but not scored. --cache keeps the detectors' output (the slow part),
so that descriptors and clustering can change between runs.

- batch: all faces clustered at once (clustering.cluster_identities with the faces' quality, as
  Annotator.identify does), as `autoannotator annotate` and `autoannotator eval` do;
- one at a time: one image per request through FaceStore.assign (SQLite in a temporary directory), in
  --orders random orders, as annotators opening tasks would make /predict do; with each of --voters as
  identities.VOTERS_PER_IDENTITY (how many of an identity's faces nearest a new face decide its distance).
  Scored twice: the ids as /predict first showed them, and the ids the store holds once all images are in,
  after the re-clusterings the service starts as the project grows (AUTO_RECLUSTER), whose changes it
  pushes to Label Studio's predictions.

Identity BCubed F1 (backend.evaluation.metrics) of the scored faces against their people. Variants of one
photograph are near copies of each other: across photographs, only Obama's three test how a person's
different photos join. Results: bench/results/identity_sequence.md.
"""
from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from backend.config import Settings
from backend.service.recluster import recluster, recluster_due
from backend.evaluation.metrics import identity_scores
from backend.storage import FaceStore, NewFace
from backend.storage import identities as identity_math
from backend.storage.dialects import SQLiteDialect
from backend.vision.annotator import Annotator
from backend.vision.clustering import cluster_identities
from backend.vision.detections import Detections
from backend.vision.quality import face_quality

from .common import PHOTOS, load_photo, machine, markdown_table, write_results

# (face width in px or None for the photo as it is, blurred, dark)
DEGRADATIONS = [(None, False, False)] + [(width, blurred, dark) for width in (24, 32, 48, 72)
                                          for blurred in (False, True) for dark in (False, True)]
BLUR_SIGMA = 1.2
DARK_GAIN, DARK_NOISE = 0.25, 2.0


@dataclass
class Image:
    name: str  # photo and degradation
    person: str
    faces: Detections  # all faces the default detectors found in it
    scored: int  # index of the face of `person`, -1 when no face was found there
    descriptors: np.ndarray | None = None  # (faces, D), from describe()
    quality: np.ndarray | None = None  # (faces,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", type=float, nargs="+",
                        help="default: 0.8, 0.9, 1, 1.1 and 1.2 times the descriptors' identity_distance")
    parser.add_argument("--voters", type=int, nargs="+", default=[3])
    parser.add_argument("--auto-recluster", type=float, default=Settings().auto_recluster,
                        help="AUTO_RECLUSTER of the one-at-a-time runs (default: the setting's default; 0: never)")
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--descriptors", nargs="+", help="descriptor models of the manifest (default: the preset's)")
    parser.add_argument("--cache", type=Path, help="keep the detectors' output in this file, and read it from there "
                        "(descriptors and quality are always computed anew)")
    args = parser.parse_args()
    machine_line = machine()
    settings = Settings()
    if args.descriptors:
        settings = replace(settings, descriptor_models=tuple(args.descriptors))
    annotator = Annotator.from_settings(settings)
    if args.cache and args.cache.exists():
        with open(args.cache, "rb") as cached:
            images = pickle.load(cached)
    else:
        images = detected_set(annotator)
        if args.cache:
            with open(args.cache, "wb") as cache:
                pickle.dump(images, cache)
    describe(images, annotator)
    thresholds = args.thresholds or [round(annotator.identity_distance * f, 4) for f in (0.8, 0.9, 1.0, 1.1, 1.2)]
    found = [image for image in images if image.scored >= 0]
    people = [image.person for image in found]
    print(f"{len(found)} of {len(images)} faces found; descriptors {annotator.descriptors.name}", flush=True)
    rows = []
    for threshold in thresholds:
        batch = identity_scores(people, batch_labels(images, threshold)).bcubed
        for voters in args.voters:
            runs = [one_at_a_time(images, threshold, voters, seed, args.auto_recluster) for seed in range(args.orders)]
            then = np.array([identity_scores(people, shown).bcubed for shown, _ in runs])
            final = np.array([identity_scores(people, held).bcubed for _, held in runs])
            rows.append([f"{threshold:g}", f"{voters}", f"{batch[2]:.3f} ({batch[0]:.2f} / {batch[1]:.2f})",
                         *[f"{scores[:, 2].mean():.3f} ({scores[:, 0].mean():.2f} / {scores[:, 1].mean():.2f})"
                           for scores in (then, final)],
                         f"{final[:, 2].min():.3f}", f"{final[:, 2].mean() - batch[2]:+.3f}"])
            print(rows[-1], flush=True)
    sizes = ", ".join(f"{w} px" for w in sorted({w for w, _, _ in DEGRADATIONS if w}))
    sections = [
        f"{len(found)} faces of {len(set(people))} people found (of {len(images)} images: the photos of "
        f"tests/data/photos with a known person, as they are and shrunk to faces of {sizes}, each sharp or "
        f"blurred, lit or dark; see the script). Default detectors (`MODEL_PRESET=default`), descriptors "
        f"`{annotator.descriptors.name}`; one at a time: {args.orders} random orders, each through a fresh "
        f"SQLite face store.",
        markdown_table(["threshold", "voters per identity", "batch BCubed F1 (precision / recall)",
                        "one at a time, ids as first shown: mean F1 (precision / recall)",
                        f"one at a time, ids at the end (AUTO_RECLUSTER={args.auto_recluster:g}): mean F1",
                        "at the end: worst order", "at the end - batch"], rows),
    ]
    write_results("identity_sequence", "Identities of degraded faces: batch against one task at a time",
                  machine_line, sections)


def degraded_set() -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, person, RGB pixels, the person's true face box in them) for every image of the set, always
    the same pixels (the noise is seeded)."""
    truth = json.loads((PHOTOS / "faces.json").read_text())
    rng = np.random.default_rng(0)
    for name, photo in truth.items():
        known = [face for face in photo["faces"] if not face["person"].startswith("bus_")]
        if not known:
            continue  # the street photo's people are not known by name: nothing to match them with
        [face] = known
        original = load_photo(PHOTOS / name).pixels  # (the test photos are never reduced)
        for width, blurred, dark in DEGRADATIONS:
            scale = 1.0 if width is None else width / (face["box"][2] - face["box"][0])
            pixels = original if width is None else cv2.resize(
                original, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            if blurred:
                pixels = cv2.GaussianBlur(pixels, (0, 0), BLUR_SIGMA)
            if dark:
                pixels = np.clip(pixels * DARK_GAIN + rng.normal(0, DARK_NOISE, pixels.shape), 0, 255).astype(np.uint8)
            label = f"{Path(name).stem} {width or 'full'}{' blurred' if blurred else ''}{' dark' if dark else ''}"
            yield label, face["person"], np.ascontiguousarray(pixels), np.array(face["box"], dtype=float) * scale


def detected_set(annotator: Annotator) -> list[Image]:
    """Every image through the default models (Annotator.annotate, as /predict runs them)."""
    images = []
    for label, person, pixels, box in degraded_set():
        faces = annotator.annotate(pixels).faces
        centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
        inside = np.flatnonzero(((centres >= box[:2]) & (centres <= box[2:])).all(axis=1))
        scored = int(inside[np.argmax(faces.scores[inside])]) if len(inside) else -1
        images.append(Image(label, person, faces, scored))
        print(label, "found" if scored >= 0 else "missed", flush=True)
    return images


def describe(images: list[Image], annotator: Annotator) -> None:
    """Fill in each image's descriptors and face quality, as Annotator.annotate computes them."""
    for image, (label, _, pixels, _) in zip(images, degraded_set(), strict=True):
        assert image.name == label, (image.name, label)
        image.descriptors = annotator.descriptors.embed(pixels, image.faces)
        image.quality = face_quality(pixels, image.faces, annotator.identity_min_face)


def batch_labels(images: list[Image], threshold: float) -> list[int]:
    descriptors = np.concatenate([image.descriptors for image in images])
    labels = cluster_identities(descriptors, threshold, np.concatenate([image.quality for image in images]))
    starts = np.cumsum([0] + [len(image.descriptors) for image in images])
    return [int(labels[start + image.scored]) for start, image in zip(starts, images) if image.scored >= 0]


def one_at_a_time(images: list[Image], threshold: float, voters: int, seed: int,
                  auto_recluster: float) -> tuple[list[str], list[str]]:
    """The id the store gave each scored face when its image arrived, and the id it holds at the end, the
    images arriving in a random order (scored faces in the order of `images`). After each image the
    project is re-clustered when the service would (AUTO_RECLUSTER=auto_recluster; 0: never), by the
    service's own recluster(), as the job /predict starts does."""
    saved, identity_math.VOTERS_PER_IDENTITY = identity_math.VOTERS_PER_IDENTITY, voters
    try:
        with tempfile.TemporaryDirectory(prefix="bench-identity-sequence-") as directory:
            store = FaceStore(SQLiteDialect(Path(directory) / "faces.sqlite3"))
            shown = {}
            for i in np.random.default_rng(seed).permutation(len(images)):
                image = images[i]
                groups = cluster_identities(image.descriptors, threshold, image.quality)  # Annotator.identify
                faces = [NewFace(str(i), f"face{f}", np.zeros(4), np.full((5, 2), np.nan), image.descriptors[f],
                                 int(groups[f]), float(image.quality[f])) for f in range(len(image.descriptors))]
                assigned = store.assign(project="bench", faces=faces, model_version="bench", threshold=threshold)
                if image.scored >= 0:
                    shown[i] = assigned[image.scored]
                if auto_recluster > 0 and recluster_due(*store.faces_since_recluster("bench"), auto_recluster):
                    recluster(store, "bench", threshold, None, None, lambda fraction, stage: None)
            final = store.shown_ids("bench")
    finally:
        identity_math.VOTERS_PER_IDENTITY = saved
    scored = sorted(shown)
    return [shown[i] for i in scored], [final[(str(i), f"face{images[i].scored}")] for i in scored]


if __name__ == "__main__":
    main()
