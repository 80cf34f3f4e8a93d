"""Identities of small, blurred and dark faces: one batch against one task at a time, by threshold.

    python -m bench.identity_sequence [--thresholds 0.075 0.09 0.1 0.11] [--voters 1 3 16] [--orders 10]

The set: every photo of tests/data/photos whose face has a known person (faces.json: 6 photos, 4 people,
Obama in three different photographs), each as it is and degraded in DEGRADATIONS: shrunk so that the
face is 24 to 72 px wide, each size sharp or blurred (Gaussian, sigma 1.2 px after shrinking), and lit
normally or dark (pixel values x 0.25 plus Gaussian noise of sigma 2, as an underexposed photo). Each
image goes through the default models (Annotator.annotate, as /predict runs them); the face whose centre
lies in the (scaled) true box is scored, the image's other faces are stored but not scored.

- batch: all faces clustered at once (Annotator.identify's average linkage at the threshold), as
  `autoannotator annotate` and `autoannotator eval` do;
- one at a time: one image per request through FaceStore.assign (SQLite in a temporary directory), in
  --orders random orders, as annotators opening tasks would make /predict do; with each of --voters as
  identities.VOTERS_PER_IDENTITY (how many of an identity's faces nearest a new face decide its distance).

Identity BCubed F1 (backend.evaluation.metrics) of the scored faces against their people. Variants of one
photograph are near copies of each other: across photographs, only Obama's three test how a person's
different photos join. Results: bench/results/identity_sequence.md.
"""
from __future__ import annotations

import argparse
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from backend.config import Settings
from backend.evaluation.metrics import identity_scores
from backend.storage import FaceStore, NewFace
from backend.storage import identities as identity_math
from backend.storage.dialects import SQLiteDialect
from backend.vision.annotator import Annotator
from backend.vision.clustering import cluster_identities

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
    descriptors: np.ndarray  # (faces, D)
    quality: np.ndarray  # (faces,)
    scored: int  # index of the face of `person`, -1 when no face was found there


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.075, 0.09, 0.1, 0.11])
    parser.add_argument("--voters", type=int, nargs="+", default=[1, 3, 16])
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--cache", type=Path, help="keep the models' output in this file, and read it from there")
    args = parser.parse_args()
    machine_line = machine()
    if args.cache and args.cache.exists():
        with open(args.cache, "rb") as cached:
            images = pickle.load(cached)
    else:
        images = degraded_set(Annotator.from_settings(Settings()))
        if args.cache:
            with open(args.cache, "wb") as cache:
                pickle.dump(images, cache)
    found = [image for image in images if image.scored >= 0]
    people = [image.person for image in found]
    print(f"{len(found)} of {len(images)} faces found", flush=True)
    rows = []
    for threshold in args.thresholds:
        batch = identity_scores(people, batch_labels(images, threshold)).bcubed
        for voters in args.voters:
            scores = np.array([identity_scores(people, one_at_a_time(images, threshold, voters, seed)).bcubed
                               for seed in range(args.orders)])
            mean, low = scores.mean(axis=0), scores[:, 2].min()
            rows.append([f"{threshold:g}", f"{voters}", f"{batch[2]:.3f} ({batch[0]:.2f} / {batch[1]:.2f})",
                         f"{mean[2]:.3f} ({mean[0]:.2f} / {mean[1]:.2f})", f"{low:.3f}",
                         f"{mean[2] - batch[2]:+.3f}"])
            print(rows[-1], flush=True)
    sizes = ", ".join(f"{w} px" for w in sorted({w for w, _, _ in DEGRADATIONS if w}))
    sections = [
        f"{len(found)} faces of {len(set(people))} people found (of {len(images)} images: the photos of "
        f"tests/data/photos with a known person, as they are and shrunk to faces of {sizes}, each sharp or "
        f"blurred, lit or dark; see the script). Default models (`MODEL_PRESET=default`); one at a time: "
        f"{args.orders} random orders, each through a fresh SQLite face store.",
        markdown_table(["threshold", "voters per identity", "batch BCubed F1 (precision / recall)",
                        "one at a time: mean F1 (precision / recall)", "one at a time: worst order",
                        "one at a time - batch"], rows),
    ]
    write_results("identity_sequence", "Identities of degraded faces: batch against one task at a time",
                  machine_line, sections)


def degraded_set(annotator: Annotator) -> list[Image]:
    import json

    truth = json.loads((PHOTOS / "faces.json").read_text())
    rng = np.random.default_rng(0)
    images = []
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
            annotation = annotator.annotate(np.ascontiguousarray(pixels))
            box = np.array(face["box"], dtype=float) * scale
            centres = (annotation.faces.boxes[:, :2] + annotation.faces.boxes[:, 2:]) / 2
            inside = np.flatnonzero(((centres >= box[:2]) & (centres <= box[2:])).all(axis=1))
            scored = int(inside[np.argmax(annotation.faces.scores[inside])]) if len(inside) else -1
            label = f"{Path(name).stem} {width or 'full'}{' blurred' if blurred else ''}{' dark' if dark else ''}"
            images.append(Image(label, face["person"], annotation.descriptors, annotation.quality, scored))
            print(label, "found" if scored >= 0 else "missed", np.round(annotation.quality, 2), flush=True)
    return images


def batch_labels(images: list[Image], threshold: float) -> list[int]:
    descriptors = np.concatenate([image.descriptors for image in images])
    labels = cluster_identities(descriptors, threshold)
    starts = np.cumsum([0] + [len(image.descriptors) for image in images])
    return [int(labels[start + image.scored]) for start, image in zip(starts, images) if image.scored >= 0]


def one_at_a_time(images: list[Image], threshold: float, voters: int, seed: int) -> list[str]:
    """The id the store gave each scored face, the images arriving in a random order (scored faces in the
    order of `images`)."""
    saved, identity_math.VOTERS_PER_IDENTITY = identity_math.VOTERS_PER_IDENTITY, voters
    try:
        with tempfile.TemporaryDirectory(prefix="bench-identity-sequence-") as directory:
            store = FaceStore(SQLiteDialect(Path(directory) / "faces.sqlite3"))
            ids = {}
            for i in np.random.default_rng(seed).permutation(len(images)):
                image = images[i]
                groups = cluster_identities(image.descriptors, threshold)  # Annotator.identify on one image
                faces = [NewFace(str(i), f"face{f}", np.zeros(4), np.full((5, 2), np.nan), image.descriptors[f],
                                 int(groups[f]), float(image.quality[f])) for f in range(len(image.descriptors))]
                assigned = store.assign(project="bench", faces=faces, model_version="bench", threshold=threshold)
                if image.scored >= 0:
                    ids[i] = assigned[image.scored]
    finally:
        identity_math.VOTERS_PER_IDENTITY = saved
    return [ids[i] for i in sorted(ids)]


if __name__ == "__main__":
    main()
