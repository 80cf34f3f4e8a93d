"""Speed of the vision pipeline on tests/data/photos: each default model alone, each preset's ensemble with and
without flip TTA, and /predict end to end through the Flask app, with the share of it spent outside the models.

    python -m bench.models [--repeat 3] [--slow-images 2]

Every timing follows one warm-up call. dlib's MMOD detector (and the presets that use it) take tens of seconds
per photo on a small CPU, so they are timed on the `--slow-images` smallest photos only.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from backend.config import REPO_ROOT, Settings
from backend.vision.annotator import Annotator
from backend.vision.manifest import load_manifest
from backend.vision.models import load_model

from .common import load_photo, machine, markdown_table, photos, write_results

DETECTORS = ["mtcnn", "blazeface", "blazeface_short", "dlib_hog", "dlib_mmod", "blazepose"]
DESCRIPTOR = "dlib_resnet"
PRESETS = ["default", "accurate", "fast"]
SLOW = {"dlib_mmod"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the photos (default 3)")
    parser.add_argument("--slow-images", type=int, default=2, help="photos for the slow models (default 2)")
    args = parser.parse_args()
    machine_line = machine()
    settings = Settings.from_env()
    manifest = load_manifest(settings.manifest_path)
    images = {path.name: load_photo(path) for path in photos()}
    by_size = sorted(images, key=lambda name: images[name].shape[0] * images[name].shape[1])
    slow_images = by_size[:args.slow_images]
    subset = lambda slow: slow_images if slow else list(images)  # noqa: E731

    model_rows = []
    for name in DETECTORS:
        detector = load_model(manifest[name], settings.models_dir)
        chosen = subset(name in SLOW)
        seconds = _per_call(detector.detect, [images[n] for n in chosen], 1 if name in SLOW else args.repeat)
        model_rows.append([name, "face" if manifest[name].task == "face" else "person", len(chosen),
                           _megapixels(images, chosen), f"{seconds:.4f}"])
    model_rows.append(_descriptor_row(manifest, settings, images, args.repeat))

    ensemble_rows, shipped_seconds = [], None
    for preset in PRESETS:
        slow = bool(SLOW & set(manifest.presets[preset]["face"] + manifest.presets[preset]["person"]))
        for flip in (False, True):
            annotator = Annotator.from_settings(Settings(model_preset=preset, flip_tta=flip), manifest)
            chosen = subset(slow)
            seconds, in_models = _annotate(annotator, [images[n] for n in chosen], 1 if slow else args.repeat)
            ensemble_rows.append([preset + ("+flip" if flip else ""), annotator.model_version.split(":", 1)[1],
                                  len(chosen), _megapixels(images, chosen), f"{seconds:.3f}", f"{in_models:.3f}"])
            if preset == settings.model_preset and flip == settings.flip_tta:
                shipped_seconds = seconds

    predict_rows = _predict(images, args.repeat, shipped_seconds)
    sections = [
        "Photos: the 7 JPEGs of tests/data/photos (0.26 to 1.03 megapixels). Times are wall-clock seconds on "
        "a shared machine: other jobs ran at the same time, so treat differences under ~20% as noise.",
        "## Each model alone (seconds per image; dlib_resnet: seconds per face)\n\n" + markdown_table(
            ["model", "task", "images", "megapixels (mean)", "seconds"], model_rows),
        "## Each ensemble: `Annotator.annotate` (detect, fuse, describe, quality)\n\n" + markdown_table(
            ["configuration", "models", "images", "megapixels (mean)", "seconds per image", "of which in models"],
            ensemble_rows),
        "## /predict end to end (Flask test client, shipped configuration, local file paths)\n\n"
        + markdown_table(["requests", "seconds per image", "in models", "overhead ratio (wall / models)",
                          "ratio to annotate() alone"], predict_rows)
        + "\n\n'In models' is the time inside the detectors' and descriptor networks' own calls (their pre- "
          "and post-processing included); the rest is decoding, fusion, face quality, clustering, JSON and "
          "Flask.",
    ]
    write_results("models", "Model and pipeline speed", machine_line, sections)


def _per_call(function, items, repeat: int, warm_up: bool = True) -> float:
    if warm_up:
        function(items[0])  # lazy initialisation, caches
    started = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            function(item)
    return (time.perf_counter() - started) / (repeat * len(items))


def _descriptor_row(manifest, settings, images, repeat: int) -> list:
    """Seconds per face: the descriptor network runs once per face found by BlazeFace."""
    finder = load_model(manifest["blazeface"], settings.models_dir)
    embedder = load_model(manifest[DESCRIPTOR], settings.models_dir)
    work = [(image, finder.detect(image)) for image in images.values()]
    work = [(image, faces) for image, faces in work if len(faces)]
    faces = sum(len(f) for _, f in work)
    per_image = _per_call(lambda item: embedder.embed(*item), work, repeat)
    return [DESCRIPTOR, "descriptor", len(work), "–", f"{per_image * len(work) / faces:.4f} ({faces} faces)"]


def _annotate(annotator: Annotator, items, repeat: int) -> tuple[float, float]:
    """Seconds per image of annotate(), and of them inside the models (the ensembles' own counters)."""
    annotator.annotate(items[0])  # warm-up, outside the model counters' window
    before = _model_seconds(annotator)
    seconds = _per_call(annotator.annotate, items, repeat, warm_up=False)
    return seconds, (_model_seconds(annotator) - before) / (repeat * len(items))


def _model_seconds(annotator: Annotator) -> float:
    return sum(sum(e.seconds.values()) for e in (annotator.faces, annotator.persons, annotator.descriptors))


def _predict(images, repeat: int, annotate_seconds: float | None) -> list[list]:
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="bench-data-"))
    from backend.service import model
    from backend.service.app import create_app

    client = create_app().test_client()
    config = (REPO_ROOT / "label_config.xml").read_text()
    vision = model.annotator()
    tasks = [{"id": i, "data": {"image": str(p)}} for i, p in enumerate(photos())]

    def post(batch):
        response = client.post("/predict", json={"tasks": batch, "label_config": config, "project": "1.1"})
        assert response.status_code == 200, response.get_data(as_text=True)

    setup = client.post("/setup", json={"project": "1.1", "schema": config})  # as Label Studio connects first
    assert setup.status_code == 200, setup.get_data(as_text=True)
    post(tasks[:1])  # warm-up
    rows = []
    for label, batches in (("one task per request", [[t] for t in tasks]), ("all 7 tasks in one request", [tasks])):
        before = _model_seconds(vision)
        started = time.perf_counter()
        for _ in range(repeat):
            for batch in batches:
                post(batch)
        wall = (time.perf_counter() - started) / (repeat * len(tasks))
        in_models = (_model_seconds(vision) - before) / (repeat * len(tasks))
        ratio = f"{wall / annotate_seconds:.3f}" if annotate_seconds else "–"
        rows.append([label, f"{wall:.3f}", f"{in_models:.3f}", f"{wall / in_models:.3f}", ratio])
    return rows


def _megapixels(images: dict, names: list[str]) -> str:
    return f"{np.mean([images[n].shape[0] * images[n].shape[1] / 1e6 for n in names]):.2f}"


if __name__ == "__main__":
    main()
