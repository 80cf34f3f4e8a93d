"""The `autoannotator` command: serve the backend, annotate folders offline, manage model weights."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import REPO_ROOT, Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoannotator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the Label Studio ML backend under gunicorn")
    serve.add_argument("--host", help="address to listen on (env HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (env PORT, default 9090)")
    serve.set_defaults(run=run_serve)

    annotate = commands.add_parser("annotate", help="pre-annotate images into a Label Studio import file")
    annotate.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    annotate.add_argument("--out", required=True, type=Path, help="the tasks.json to write")
    annotate.add_argument("--label-config", type=Path, default=REPO_ROOT / "label_config.xml",
                          help="the project's label config (default: the shipped label_config.xml)")
    annotate.add_argument("--url-prefix", default="",
                          help="prefix for data.image, e.g. /data/local-files/?d= (default: the file's absolute path)")
    annotate.add_argument("--project", help="keep the faces in the face store under this name (not a Label Studio "
                          "project id), so that identity ids hold across runs (default: within this run only)")
    annotate.set_defaults(run=run_annotate)

    recluster = commands.add_parser("recluster", help="re-cluster a project's faces, update Label Studio's predictions")
    recluster.add_argument("--project", required=True, help="Label Studio project id (or an annotate --project name)")
    recluster.set_defaults(run=run_recluster)

    models = commands.add_parser("models", help="list or download the manifest's models")
    models.add_argument("action", choices=["list", "download"])
    models.add_argument("names", nargs="*", help="models to download (default: every one with a url)")
    models.set_defaults(run=run_models)

    from .evaluation import command as evaluation  # light: the models load only when the command runs

    evaluate = commands.add_parser("eval", help="score every model and ensemble against ground truth (a report)")
    evaluation.add_arguments(evaluate)
    evaluate.set_defaults(run=evaluation.run)

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return args.run(args, settings)


def run_serve(args, settings: Settings) -> int:
    host = args.host or settings.host
    port = args.port or settings.port
    command = [
        sys.executable, "-m", "gunicorn", "backend.service.app:create_app()",
        "--bind", f"{host}:{port}",
        "--workers", str(settings.workers),
        "--threads", str(settings.threads),
        "--timeout", str(settings.request_timeout),
        "--chdir", str(REPO_ROOT),
        "--access-logfile", "-",
        # gunicorn 27's control socket lives at one path per user: two backends on a machine would share it.
        "--no-control-socket",
    ]
    os.execv(sys.executable, command)


def run_annotate(args, settings: Settings) -> int:
    from tqdm import tqdm

    from .service.images import ImageError, ImageLoader
    from .service.label_config import LabelConfigError
    from .service.label_studio import LabelStudioClient
    from .service.model import identity_names, output_spec, stored_identity_names
    from .service.predictions import to_prediction
    from .storage import FaceStore
    from .vision.annotator import Annotator

    try:
        spec = output_spec(args.label_config.read_text())
    except (OSError, LabelConfigError) as error:
        print(f"autoannotator: label config {args.label_config}: {error}", file=sys.stderr)
        return 2
    files = sorted(_image_files(args.paths))
    if not files:
        print("autoannotator: no images found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    vision = Annotator.from_settings(settings)
    loader = ImageLoader(settings, LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key))
    annotated, failed = [], []
    for path in tqdm(files, desc="annotating", unit="image"):
        try:
            annotated.append((path, vision.annotate(loader.load(str(path)))))
        except ImageError as error:
            failed.append(str(error))
            tqdm.write(f"skipped: {error}")
    identities = vision.identify([a for _, a in annotated])
    if args.project:
        store = FaceStore.open(settings.database_url, settings.data_dir)
        names = stored_identity_names(store, vision, args.project, [str(p.resolve()) for p, _ in annotated],
                                      [a for _, a in annotated], identities)
    else:
        names = identity_names(identities.labels)
    tasks = []
    for (path, annotation), ids, confidence in zip(annotated, names, identities.confidence):
        image = args.url_prefix + str(path.resolve() if not args.url_prefix else path)
        prediction = to_prediction(annotation, ids, confidence, spec, vision.model_version)
        tasks.append({"data": {spec.image_key: image}, "predictions": [prediction]})
    args.out.write_text(json.dumps(tasks, indent=1))
    people = len({name for ids in names for name in ids})
    print(f"wrote {len(tasks)} tasks, {sum(map(len, names))} faces of {people} identities, to {args.out}"
          + (f"; {len(failed)} images failed" if failed else ""))
    return 1 if failed and not tasks else 0


def run_recluster(args, settings: Settings) -> int:
    from tqdm import tqdm

    from .service.label_studio import LabelStudioClient
    from .service.recluster import ReclusterError, recluster
    from .storage import FaceStore
    from .vision.annotator import Annotator

    store = FaceStore.open(settings.database_url, settings.data_dir)
    label_studio = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key,
                                     timeout=settings.fetch_timeout)
    threshold = Annotator.from_settings(settings).identity_distance
    with tqdm(total=100, unit="%") as bar:
        def progress(fraction, stage):
            bar.set_description(stage)
            bar.update(round(fraction * 100) - bar.n)

        try:
            result = recluster(store, args.project, threshold, label_studio, progress)
        except ReclusterError as error:
            print(f"autoannotator: recluster: {error}", file=sys.stderr)
            return 1
    print(json.dumps(result))
    if not label_studio.configured:
        print("LABEL_STUDIO_URL is not set: Label Studio's predictions were left as they were", file=sys.stderr)
    return 0


def run_models(args, settings: Settings) -> int:
    from .vision.manifest import DownloadError, download_model, load_manifest, sha256_of

    manifest = load_manifest(settings.manifest_path)
    if args.action == "list":
        for spec in manifest.models.values():
            path = spec.path(settings.models_dir)
            if path is None:
                state = "in a Python package"
            elif not path.exists():
                state = "missing" + ("" if spec.url else " (no url: copy it by hand)")
            else:
                state = "ok" if spec.sha256 and sha256_of(path) == spec.sha256 else "present, sha256 differs"
            print(f"{spec.name:20} {spec.family:12} {spec.task:10} {state}")
        return 0
    names = args.names or [s.name for s in manifest.models.values() if s.url]
    errors = 0
    for name in names:
        try:
            path = download_model(manifest[name], settings.models_dir)
            print(f"{name}: {path} (sha256 ok)")
        except (DownloadError, KeyError) as error:
            print(f"{name}: {error}", file=sys.stderr)
            errors += 1
    return 1 if errors else 0


def _image_files(paths):
    for path in paths:
        if path.is_dir():
            yield from (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


if __name__ == "__main__":
    sys.exit(main())
