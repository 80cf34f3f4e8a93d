"""`autoannotator eval`: from a ground-truth file and an image folder to a report folder."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import Settings

FLIPS = {"both": [False, True], "off": [False], "on": [True]}
# Presets scored only when asked for (--accurate, or by name in --presets): dlib MMOD takes 5-40 s per photo
# on 2 cores, longer than every other model together.
SLOW_PRESETS = ("accurate",)


def add_arguments(parser) -> None:
    parser.add_argument("--gt", required=True, type=Path,
                        help="ground truth: a Label Studio JSON export or a COCO JSON file (CVAT's export)")
    parser.add_argument("--images", required=True, type=Path, help="folder with the images (matched by file name)")
    parser.add_argument("--out", required=True, type=Path, help="folder for report.md and its plots")
    parser.add_argument("--models", nargs="*",
                        help="face and person models to score alone (default: those of the evaluated presets)")
    parser.add_argument("--presets", nargs="*",
                        help="presets whose ensembles to score (default: every preset whose weights are here, "
                             f"but the slow {', '.join(SLOW_PRESETS)})")
    parser.add_argument("--accurate", action="store_true",
                        help=f"also score the slow {', '.join(SLOW_PRESETS)} preset and its dlib MMOD detector "
                             "(5-40 s per photo on 2 cores)")
    parser.add_argument("--match-iou", type=float, default=0.5,
                        help="IoU at which a box counts as found, for recall and fixes (default 0.5; "
                             "lower it for roughly drawn ground truth)")
    parser.add_argument("--flip", choices=sorted(FLIPS), default="both",
                        help="score each configuration with flip TTA on, off, or both (default)")


def run(args, settings: Settings) -> int:
    # Imported here so that `autoannotator --help` and the other commands do not pay for numpy, OpenCV, sklearn.
    from tqdm import tqdm

    from ..service.images import decode_image
    from ..vision.manifest import load_manifest
    from .evaluate import ScoredClasses, available, configurations, evaluate, gallery_configuration
    from .ground_truth import GroundTruthError, load_ground_truth, match_images
    from .report import write_report

    manifest = load_manifest(settings.manifest_path)
    try:
        truth = load_ground_truth(args.gt, settings.face_labels, settings.person_labels)
    except GroundTruthError as error:
        print(f"autoannotator eval: {error}", file=sys.stderr)
        return 2
    pairs, missing = match_images(truth, args.images)
    if not pairs:
        print(f"autoannotator eval: none of the {len(truth)} ground-truth images is in {args.images}", file=sys.stderr)
        return 2
    scored = ScoredClasses.of([t for t, _ in pairs])
    if not (scored.faces or scored.persons):
        print(f"autoannotator eval: the ground truth has neither faces nor persons in the {len(pairs)} images found "
              f"(labels {', '.join(settings.face_labels)}; {', '.join(settings.person_labels)})", file=sys.stderr)
        return 2
    notes = [f"{len(missing)} ground-truth images not found in {args.images}, left out: {', '.join(missing[:10])}"
             + (" ..." if len(missing) > 10 else "")] if missing else []
    notes += scored.notes()

    presets = args.presets
    if presets is None:
        slow = [p for p in SLOW_PRESETS if p in manifest.presets and not args.accurate]
        notes += [f"presets not scored, slow: {', '.join(slow)} (score with --accurate)"] if slow else []
        presets = [p for p in manifest.presets if p not in slow and available(
            manifest, settings, _detectors(manifest, p) + manifest.presets[p].get("descriptor", []))]
        skipped = sorted(set(manifest.presets) - set(presets) - set(slow))
        notes += [f"presets not scored, their weights are not downloaded: {', '.join(skipped)}"] if skipped else []
    elif args.accurate:
        presets = [*presets, *(p for p in SLOW_PRESETS if p not in presets)]
    try:
        models = args.models
        if models is None:
            models = [name for name in manifest.models if any(name in _detectors(manifest, p) for p in presets)]
        configs = configurations(manifest, settings, presets, models, FLIPS[args.flip], scored)
    except (KeyError, ValueError) as error:  # an unknown model or preset
        print(f"autoannotator eval: {error.args[0]}", file=sys.stderr)
        return 2
    if not configs:
        print("autoannotator eval: no model to score for the classes in the ground truth", file=sys.stderr)
        return 2
    needed = {n for c in configs for n in c.models}
    absent = sorted(n for n in needed if not available(manifest, settings, [n]))
    if absent:
        print(f"autoannotator eval: no weights for {', '.join(absent)}: run `autoannotator models download`",
              file=sys.stderr)
        return 2

    load_image = lambda path: decode_image(path.read_bytes(), str(path), settings)  # noqa: E731
    # One step per model and image: evaluate() runs each model once per image, for every configuration.
    progress = lambda total: tqdm(total=total, unit="model-image",  # noqa: E731
                                  desc=f"{len(pairs)} images x {len(needed)} models ({len(configs)} configurations)")
    shown_by = gallery_configuration(configs, settings)
    results = evaluate(pairs, configs, manifest, settings, load_image, progress, args.match_iou, keep_shown=shown_by)
    gallery = next(r for r in results if r.configuration == shown_by)
    report = write_report(args.out, results, pairs, gallery, settings, load_image, notes, args.match_iou)
    for r in results:
        faces = f"face AP50 {r.faces.ap50:.3f}" if r.faces else ""
        persons = f"person AP50 {r.persons.ap50:.3f}" if r.persons else ""
        print(f"{r.configuration.name:28} {faces:16} {persons:18} fixes {r.fixes}")
    print(f"report: {report}")
    return 0


def _detectors(manifest, preset: str) -> list[str]:
    chosen = manifest.preset(preset)  # a KeyError that names the known presets
    return [spec.name for spec in chosen["face"] + chosen["person"]]
