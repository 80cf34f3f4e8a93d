"""Recall of each face model alone and of each preset's face ensemble, photo by photo, on the hard-face set.

    python -m bench.face_breakdown [--models mtcnn blazeface ...] [--presets default] [--flip on|off|both]

Each photo of tests/data/hard_faces is one kind of hard face (SOURCES.md: a real profile, motion blur,
darkness, low resolution, walls of small faces, and the degradation grid: face widths 12-96 px, blur, under-
exposure, JPEG compression, in-plane turns, mirror). `autoannotator eval` scores the whole set; this runs the
same evaluation (backend.evaluation.evaluate) on one photo at a time and writes each configuration's recall at
the shipped threshold (faces found / faces) per photo, and its false boxes: bench/results/face_breakdown.md.
Identities are left out (no descriptors run).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from backend.config import Settings
from backend.evaluation.command import FLIPS
from backend.evaluation.evaluate import ScoredClasses, configurations, evaluate
from backend.evaluation.ground_truth import load_ground_truth, match_images
from backend.service.images import decode_image
from backend.vision.manifest import load_manifest

from .common import REPO_ROOT, machine, markdown_table, write_results

HARD_FACES = REPO_ROOT / "tests" / "data" / "hard_faces"
DEFAULT_MODELS = ["mtcnn", "blazeface", "blazeface_short", "blazeface_back", "dlib_hog"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="face models to score alone")
    parser.add_argument("--presets", nargs="+", default=["default"], help="presets whose face ensembles to score")
    parser.add_argument("--flip", choices=sorted(FLIPS), default="on", help="flip TTA (default: on, as shipped)")
    args = parser.parse_args()
    machine_line = machine()
    settings = Settings()
    manifest = load_manifest(settings.manifest_path)
    pairs, missing = match_images(load_ground_truth(HARD_FACES / "ground_truth_coco.json"), HARD_FACES)
    if missing:
        raise SystemExit(f"not in {HARD_FACES}: {', '.join(missing)}")
    configs = [replace(c, descriptor_models=()) for c in configurations(
        manifest, settings, args.presets, args.models, FLIPS[args.flip], ScoredClasses(faces=True, persons=False))]
    load_image = lambda path: decode_image(path.read_bytes(), str(path), settings)  # noqa: E731
    rows, found, false = [], [0] * len(configs), [0] * len(configs)
    for pair in pairs:
        results = evaluate([pair], configs, manifest, settings, load_image)
        faces = results[0].faces.true + results[0].faces.missing
        rows.append([pair[1].name, faces, *(f"{r.faces.true}" + (f" ({r.faces.false} false)" if r.faces.false
                                                                  else "") for r in results)])
        for index, r in enumerate(results):
            found[index] += r.faces.true
            false[index] += r.faces.false
        print(" | ".join(map(str, rows[-1])), flush=True)
    total = sum(row[1] for row in rows)
    rows.append(["**all**", total, *(f"**{f}** ({f / total:.3f}; {x} false)" for f, x in zip(found, false))])
    sections = [
        f"Faces found at the shipped threshold (FACE_SCORE_THRESHOLD {settings.face_score_threshold}, IoU >= 0.5) "
        f"on each photo of tests/data/hard_faces (SOURCES.md says what each one is), and the false boxes shown "
        f"there; flip TTA {args.flip}.",
        markdown_table(["photo", "faces", *(c.name for c in configs)], rows),
    ]
    write_results("face_breakdown", "Hard faces, photo by photo: what each face model and ensemble finds",
                  machine_line, sections)


if __name__ == "__main__":
    main()
