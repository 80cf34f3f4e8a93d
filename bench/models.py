"""Speed of the vision pipeline on 1-megapixel photos: each model alone, each preset's ensemble with and without
flip TTA (and the shipped one with the face-guided person search switched the other way), and /predict end to
end through the Flask app, with the share of it spent outside the models.

    python -m bench.models [--repeat 3] [--slow-images 1]

The photos are the three largest of tests/data/photos (two portraits and the street scene), each resized to
1,000,000 pixels (aspect ratio kept): the cost of most detectors grows with the pixels, and faster than them
for MTCNN's pyramid, so "seconds per image" means little without the image size. Every timing follows one
warm-up call, but dlib's MMOD detector and the presets that use it: they take tens of seconds per photo on a small
CPU, so they are timed once, cold, on the first `--slow-images` photos only. Next to the wall-clock time, the
ensembles' table gives the process's CPU time per photo (all threads): on a shared machine, where other jobs
take turns on the cores, it moves much less than the wall-clock time.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from backend.config import REPO_ROOT, Settings
from backend.vision.annotator import Annotator
from backend.vision.manifest import load_manifest
from backend.vision.models import load_model

from .common import PHOTOS, load_photo, machine, markdown_table, write_results

DETECTORS = ["mtcnn", "blazeface", "blazeface_back", "blazeface_short", "dlib_hog", "dlib_mmod", "blazepose",
             "nanodet_m", "movenet_multipose"]
DESCRIPTOR = "dlib_resnet"
PRESETS = ["default", "accurate", "fast"]
SLOW = {"dlib_mmod"}
BENCH_PHOTOS = ("obama_1.jpg", "street_bus.jpg", "obama_3.jpg")
MEGAPIXEL = 1_000_000


def one_megapixel(image: np.ndarray) -> np.ndarray:
    """The image resized to 1,000,000 pixels, give or take the rounding of its sides."""
    height, width = image.shape[:2]
    scale = (MEGAPIXEL / (height * width)) ** 0.5
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the photos (default 3)")
    parser.add_argument("--slow-images", type=int, default=1, help="photos for the slow models (default 1)")
    args = parser.parse_args()
    machine_line = machine()
    settings = Settings.from_env()
    manifest = load_manifest(settings.manifest_path)
    images = {name: one_megapixel(load_photo(PHOTOS / name).pixels) for name in BENCH_PHOTOS}
    subset = lambda slow: list(images)[:args.slow_images] if slow else list(images)  # noqa: E731

    model_rows = []
    for name in DETECTORS:
        detector = load_model(manifest[name], settings.models_dir)
        chosen = subset(name in SLOW)
        seconds = _per_call(detector.detect, [images[n] for n in chosen], 1 if name in SLOW else args.repeat,
                            warm_up=name not in SLOW)
        model_rows.append([name, manifest[name].task, len(chosen), f"{seconds:.4f}"])
    model_rows.append(_descriptor_row(manifest, settings, images, args.repeat))

    ensemble_rows, shipped = [], None
    runs = [(preset, flip, settings.face_guided_persons) for preset in PRESETS for flip in (False, True)]
    runs.append((settings.model_preset, settings.flip_tta, not settings.face_guided_persons))
    for index, (preset, flip, guided) in enumerate(runs):
        slow = bool(SLOW & set(manifest.presets[preset]["face"] + manifest.presets[preset]["person"]))
        annotator = Annotator.from_settings(Settings(model_preset=preset, flip_tta=flip, face_guided_persons=guided),
                                            manifest)
        chosen = subset(slow)
        seconds, cpu, split = _annotate(annotator, [images[n] for n in chosen], 1 if slow else args.repeat,
                                        warm_up=not slow)
        label = preset + ("+flip" if flip else "") + (", face-guided person search" if guided else
                                                      ", no face-guided person search" if index == len(runs) - 1 else "")
        ensemble_rows.append([label, annotator.model_version.split(":", 1)[1], len(chosen), f"{seconds:.3f}",
                              f"{cpu:.3f}", f"{sum(split.values()):.3f}",
                              ", ".join(f"{k} {v:.3f}" for k, v in split.items())])
        if (preset, flip, guided) == (settings.model_preset, settings.flip_tta, settings.face_guided_persons):
            shipped = seconds

    predict_rows = _predict(images, args.repeat, shipped)
    sizes = ", ".join(f"{n} {images[n].shape[1]}x{images[n].shape[0]}" for n in images)
    sections = [
        f"Photos: {sizes} (three photos of tests/data/photos resized to 1 megapixel). Times are wall-clock seconds "
        "per photo on a shared machine: other jobs may run at the same time (see the load average above), so "
        "treat differences under ~20% as noise.",
        "## Each model alone (seconds per 1-megapixel photo; dlib_resnet: seconds per face)\n\n" + markdown_table(
            ["model", "task", "photos", "seconds"], model_rows),
        "## Each ensemble: `Annotator.annotate` (detect, fuse, describe, quality)\n\n"
        "With flip TTA every detector runs twice. The last column splits the time inside the models by model "
        "(crops and tiles included).\n\n" + markdown_table(
            ["configuration", "models", "photos", "seconds per photo", "CPU seconds per photo", "of which in models",
             "per model"],
            ensemble_rows),
        "## /predict end to end (Flask test client, shipped configuration, local file paths)\n\n"
        + markdown_table(["requests", "seconds per photo", "in models", "overhead ratio (wall / models)",
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
    return [DESCRIPTOR, "descriptor", len(work), f"{per_image * len(work) / faces:.4f} ({faces} faces)"]


def _annotate(annotator: Annotator, items, repeat: int, warm_up: bool = True) -> tuple[float, float, dict[str, float]]:
    """Seconds per image of annotate(), CPU seconds per image, and the seconds inside each model (the ensembles'
    counters)."""
    if warm_up:
        annotator.annotate(items[0])  # outside the counters' window
    before, cpu_before = _model_seconds(annotator), _cpu_seconds()
    seconds = _per_call(annotator.annotate, items, repeat, warm_up=False)
    after, cpu = _model_seconds(annotator), (_cpu_seconds() - cpu_before) / (repeat * len(items))
    return seconds, cpu, {name: (after[name] - before.get(name, 0.0)) / (repeat * len(items)) for name in after}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _model_seconds(annotator: Annotator) -> dict[str, float]:
    return {name: seconds for ensemble in (annotator.faces, annotator.persons, annotator.descriptors)
            for name, seconds in ensemble.seconds.items()}


def _predict(images: dict[str, np.ndarray], repeat: int, annotate_seconds: float | None) -> list[list]:
    folder = Path(tempfile.mkdtemp(prefix="bench-photos-"))
    paths = []
    for name, image in images.items():  # the service reads files: the 1-megapixel photos, saved losslessly
        paths.append(folder / (Path(name).stem + ".png"))
        cv2.imwrite(str(paths[-1]), image[..., ::-1])
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="bench-data-"))
    os.environ["LOCAL_FILES_ROOT"] = str(folder)
    from backend.service.app import CONTEXT, create_app

    app = create_app()
    client = app.test_client()
    config = (REPO_ROOT / "label_config.xml").read_text()
    vision = app.extensions[CONTEXT].annotator
    tasks = [{"id": i, "data": {"image": str(p)}} for i, p in enumerate(paths)]

    def post(batch):
        response = client.post("/predict", json={"tasks": batch, "label_config": config, "project": "1.1"})
        assert response.status_code == 200, response.get_data(as_text=True)
        assert all(p["result"] for p in response.get_json()["results"]), "a photo got no prediction"

    setup = client.post("/setup", json={"project": "1.1", "schema": config})  # as Label Studio connects first
    assert setup.status_code == 200, setup.get_data(as_text=True)
    post(tasks[:1])  # warm-up
    rows = []
    for label, batches in (("one task per request", [[t] for t in tasks]),
                           (f"all {len(tasks)} tasks in one request", [tasks])):
        before = sum(_model_seconds(vision).values())
        started = time.perf_counter()
        for _ in range(repeat):
            for batch in batches:
                post(batch)
        wall = (time.perf_counter() - started) / (repeat * len(tasks))
        in_models = (sum(_model_seconds(vision).values()) - before) / (repeat * len(tasks))
        ratio = f"{wall / annotate_seconds:.3f}" if annotate_seconds else "–"
        rows.append([label, f"{wall:.3f}", f"{in_models:.3f}", f"{wall / in_models:.3f}", ratio])
    return rows


if __name__ == "__main__":
    main()
