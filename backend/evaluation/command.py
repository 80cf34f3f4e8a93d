"""`autoannotator eval`: from a ground-truth file and an image folder to a report folder."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import Settings

FLIPS = {"both": [False, True], "off": [False], "on": [True]}


def add_arguments(parser) -> None:
    parser.add_argument("--gt", required=True, type=Path,
                        help="ground truth: a Label Studio JSON export or a COCO JSON file (CVAT's export)")
    parser.add_argument("--images", required=True, type=Path, help="folder with the images (matched by file name)")
    parser.add_argument("--out", required=True, type=Path, help="folder for report.md and its plots")
    parser.add_argument("--models", nargs="*",
                        help="face and person models to score alone (default: those of the evaluated presets)")
    parser.add_argument("--presets", nargs="*",
                        help="presets whose ensembles to score (default: every preset whose weights are here)")
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
    from .evaluate import available, configurations, evaluate
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
    notes = [f"{len(missing)} ground-truth images not found in {args.images}, left out: {', '.join(missing[:10])}"
             + (" ..." if len(missing) > 10 else "")] if missing else []

    presets = args.presets
    if presets is None:
        presets = [p for p in manifest.presets if available(manifest, settings, _detectors(manifest, p)
                                                             + manifest.presets[p].get("descriptor", []))]
        skipped = sorted(set(manifest.presets) - set(presets))
        notes += [f"presets not scored, their weights are not downloaded: {', '.join(skipped)}"] if skipped else []
    try:
        models = args.models
        if models is None:
            models = [name for name in manifest.models if any(name in _detectors(manifest, p) for p in presets)]
        configs = configurations(manifest, settings, presets, models, FLIPS[args.flip])
    except (KeyError, ValueError) as error:  # an unknown model or preset
        print(f"autoannotator eval: {error.args[0]}", file=sys.stderr)
        return 2
    needed = {n for c in configs for n in (*c.face_models, *c.person_models, *c.descriptor_models)}
    absent = sorted(n for n in needed if not available(manifest, settings, [n]))
    if absent:
        print(f"autoannotator eval: no weights for {', '.join(absent)}: run `autoannotator models download`",
              file=sys.stderr)
        return 2

    load_image = lambda path: decode_image(path.read_bytes(), str(path), settings)  # noqa: E731
    progress = lambda items: tqdm(items, desc=f"{len(configs)} configurations", unit="image")  # noqa: E731
    results = evaluate(pairs, configs, manifest, settings, load_image, progress, args.match_iou)
    shipped = settings.model_preset + ("+flip" if settings.flip_tta else "")
    gallery = next((r for r in results if r.configuration.name == shipped),
                   next((r for r in results if r.configuration.preset), results[0]))
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
