"""The `autoannotator` command: serve the backend, annotate folders offline, manage model weights."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .config import REPO_ROOT, Settings


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
    annotate.add_argument("--project", help="keep the run's faces and progress in the face store under this name "
                          "(not a Label Studio project id): identity ids hold across runs of one name, and a run "
                          "started again continues (default: 'annotate:' and the --out file's absolute path)")
    annotate.add_argument("--ray", metavar="ADDRESS", help="run on this Ray cluster (env RAY_ADDRESS; default: here)")
    annotate.set_defaults(run=run_annotate)

    prelabel = commands.add_parser("prelabel", help="pre-annotate every task of a Label Studio project that has "
                                   "no prediction of the current models (resumable)")
    prelabel.add_argument("--project", required=True, help="Label Studio project id")
    prelabel.add_argument("--ray", metavar="ADDRESS", help="run on this Ray cluster (env RAY_ADDRESS; default: here)")
    prelabel.set_defaults(run=run_prelabel)

    recluster = commands.add_parser("recluster", help="re-cluster a project's faces, update Label Studio's predictions")
    recluster.add_argument("--project", required=True, help="Label Studio project id (or an annotate --project name)")
    recluster.add_argument("--ray", metavar="ADDRESS", help="run on this Ray cluster (env RAY_ADDRESS; default: here)")
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
    if not settings.basic_auth_user and not _is_loopback(host):
        print(f"autoannotator: BASIC_AUTH_USER and BASIC_AUTH_PASS are not set, so the backend listens on "
              f"127.0.0.1 only, not on {host}: set both to serve other machines (and Label Studio's "
              "Connect Model form)", file=sys.stderr)
        host = "127.0.0.1"
    if bool(settings.basic_auth_user) != bool(settings.basic_auth_pass):
        print("autoannotator: set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither", file=sys.stderr)
        return 2
    command = [
        sys.executable, "-m", "gunicorn", "backend.service.app:create_app()",
        "--bind", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "--workers", str(settings.workers),
        "--threads", str(settings.threads),
        "--timeout", str(settings.request_timeout),
        "--max-requests", str(settings.max_requests),
        "--max-requests-jitter", str(settings.max_requests // 10),
        "--chdir", str(REPO_ROOT),
        "--access-logfile", "-",
        # gunicorn 27's control socket lives at one path per user: two backends on a machine would share it.
        "--no-control-socket",
    ]
    os.execv(sys.executable, command)


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def run_annotate(args, settings: Settings) -> int:
    from .service.context import AppContext
    from .service.label_config import LabelConfigError
    from .service.prelabel import PrelabelError, annotate
    from .storage.prelabel_state import RunInProgress

    try:
        label_config = args.label_config.read_text()
    except OSError as error:
        print(f"autoannotator: label config {args.label_config}: {error}", file=sys.stderr)
        return 2
    context = AppContext.build(settings)
    # The paths come from the user running the command, not from a caller over the network: they are read
    # wherever they are (the service reads files under LOCAL_FILES_ROOT only). Each image's absolute path is
    # its task id in the face store.
    with _progress_bar("annotating", "image") as progress:
        try:
            result = annotate(context, args.paths, label_config, args.project or f"annotate:{args.out.resolve()}",
                              args.out, args.url_prefix, _ray_address(args, settings), progress)
        except LabelConfigError as error:
            print(f"autoannotator: label config {args.label_config}: {error}", file=sys.stderr)
            return 2
        except (PrelabelError, RunInProgress) as error:
            print(f"autoannotator: annotate: {error}", file=sys.stderr)
            return 2
    _print_failures(result)
    print(f"wrote {result['written']} tasks to {args.out}"
          + (f" ({result['resumed']} predicted by an earlier run)" if result["resumed"] else "")
          + (f"; {result['failed']} images failed" if result["failed"] else ""))
    return 1 if result["failed"] and not result["written"] else 0


def run_prelabel(args, settings: Settings) -> int:
    from .service.context import AppContext
    from .service.prelabel import PrelabelError, prelabel
    from .storage.prelabel_state import RunInProgress

    if not args.project.isdigit():
        print(f"autoannotator: prelabel: --project must be a Label Studio project id, got {args.project!r}",
              file=sys.stderr)
        return 2
    context = AppContext.build(settings)
    with _progress_bar("pre-annotating", "task") as progress:
        try:
            result = prelabel(context, args.project, _ray_address(args, settings), progress)
        except (PrelabelError, RunInProgress) as error:
            print(f"autoannotator: prelabel: {error}", file=sys.stderr)
            return 1
    _print_failures(result)
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}))
    return 0


def _ray_address(args, settings: Settings) -> str:
    return args.ray or settings.ray_address


@contextmanager
def _progress_bar(description: str, unit: str):
    """A tqdm bar, and the progress(handled, todo) callback that moves it."""
    from tqdm import tqdm

    with tqdm(desc=description, unit=unit) as bar:
        def progress(handled: int, todo: int) -> None:
            bar.total = todo
            bar.update(handled - bar.n)

        yield progress


def _print_failures(result: dict) -> None:
    for task, reason in result["failures"].items():
        print(f"failed: {task}: {reason}", file=sys.stderr)
    if result["failed"] > len(result["failures"]):
        print(f"... and {result['failed'] - len(result['failures'])} more failed", file=sys.stderr)


def run_recluster(args, settings: Settings) -> int:
    from tqdm import tqdm

    from .service.context import AppContext
    from .service.recluster import ReclusterError, recluster

    context = AppContext.build(settings)
    with tqdm(total=100, unit="%") as bar:
        def progress(fraction, stage):
            bar.set_description(stage)
            bar.update(round(fraction * 100) - bar.n)

        try:
            result = recluster(context.store, args.project, context.annotator.identity_distance,
                               context.label_studio, context.output_spec, progress, _ray_address(args, settings))
        except ReclusterError as error:
            print(f"autoannotator: recluster: {error}", file=sys.stderr)
            return 1
        finally:
            # A driver leaves its cluster before the interpreter exits: replies still arriving for cancelled
            # or finished tasks otherwise meet Ray's core worker as it is torn down, which aborts the process.
            if "ray" in sys.modules:
                sys.modules["ray"].shutdown()
    print(json.dumps(result))
    if not context.label_studio.configured:
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


if __name__ == "__main__":
    sys.exit(main())
