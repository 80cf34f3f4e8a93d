"""Pre-annotate a whole Label Studio project (`autoannotator prelabel`, POST /prelabel) or a folder of images
(`autoannotator annotate`), a few tasks at a time, in this process or on a Ray cluster (ray_pipeline.py).

One pipeline for both: a source yields batches of tasks (Label Studio's task list, or image files); a
Worker predicts each batch with predict_tasks (identities through the face store, so that no batch ever
clusters more than PRELABEL_BATCH images) and records each task's state (storage/prelabel_state.py); the
driver hands the predictions to a sink: Label Studio's prediction import (prelabel), or nothing until the
import file is written at the end (annotate).

Killed at any point, a run resumes where it stopped when started again:
- a task is pushed only when Label Studio has no prediction of this model version for it (the source asks
  Label Studio for exactly those tasks), and each push is one atomic request: no task gets two predictions;
- a task predicted but not yet pushed keeps its prediction in the store, and the next run pushes that one
  instead of predicting the task again; predicting it again anyway (killed before its state was written)
  replaces the task's faces in the store: no face is stored twice;
- a push whose answer was lost is found in Label Studio by the next run: no pushed prediction is lost.
Only one run per project at a time (PrelabelState.exclusive); a killed run's hold ends with its process.

A run ends as /predict does: when the project has grown by AUTO_RECLUSTER since its last re-clustering, it
is re-clustered (recluster.py), so that the identities of faces matched one batch at a time become those
of the whole project clustered at once; prelabel pushes the ids that changed to Label Studio, annotate
writes them into its import file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..config import Settings
from ..storage.prelabel_state import FAILED, PREDICTED, PUSHED, PrelabelState, RunInProgress
from . import jobs
from .context import AppContext
from .images import ImageLoader
from .label_config import LabelConfigError
from .predict import predict_tasks
from .predictions import relabel_identities
from .recluster import ReclusterError, is_due, label_studio_call, recluster

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# Tasks per request when paging through a project. Label Studio counts the remaining tasks on every page,
# so larger pages cost fewer counts.
PAGE_SIZE = 500
FAILURES_SHOWN = 100  # failed tasks listed, with their reasons, in a run's summary
# Label Studio's prediction import creates up to 500 predictions in one bulk insert (data_import/api.py):
# a larger push could be cut in two by a kill, and be pushed again in part.
MAX_PUSH = 500
NO_LABEL_STUDIO = "LABEL_STUDIO_URL is not set: prelabel reads and writes a Label Studio project"

Progress = Callable[[int, int], None]  # (tasks handled so far, tasks to handle)


class PrelabelError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status  # the HTTP status POST /prelabel answers with


@dataclasses.dataclass(frozen=True)
class Run:
    """What a run does, as every worker needs to know it (pickled to each Ray actor)."""

    settings: Settings
    project: str  # the face store's project: a Label Studio project id, or an annotate run's name
    label_config: str
    model_version: str  # the models' version the driver checked Label Studio against
    trusted_paths: bool = False  # annotate: read local image paths wherever its user points


@dataclasses.dataclass
class Outcome:
    """What became of one task."""

    task: str
    status: str  # PREDICTED or FAILED
    prediction: dict | None  # Label Studio's prediction (without "task")
    reason: str | None  # why it failed
    resumed: bool  # predicted by an earlier, interrupted run

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Worker:
    """Predicts batches of tasks. Built once per process: a Ray actor builds its own AppContext (the models
    load once per actor); in-process runs reuse the caller's."""

    def __init__(self, run: Run, context: AppContext | None = None):
        self.run = run
        self.context = context or AppContext.build(run.settings)
        version = self.context.annotator.model_version
        if version != run.model_version:  # a worker with other model files or settings than the driver's
            raise PrelabelError(f"this worker's models are {version}, the run's are {run.model_version}: "
                                "give every node the same models and settings")
        self.spec = self.context.output_spec(run.label_config)
        self.state = PrelabelState(self.context.store)
        self.images = (ImageLoader(run.settings, self.context.label_studio, trusted_paths=True)
                       if run.trusted_paths else self.context.images)

    def __call__(self, tasks: list[dict]) -> list[Outcome]:
        project, version = self.run.project, self.run.model_version
        kept = {task: state.prediction for task, state in
                self.state.states(project, version, [str(t["id"]) for t in tasks]).items() if state.status == PREDICTED}
        todo = [t for t in tasks if str(t["id"]) not in kept]
        predicted, failed = {}, {}
        if todo:
            batch = predict_tasks(self.context, todo, self.spec, project, images=self.images)
            for index, (task, prediction) in enumerate(zip(todo, batch.predictions)):
                if index in batch.failed:
                    failed[str(task["id"])] = batch.failed[index]
                else:
                    predicted[str(task["id"])] = prediction
            self.state.record(project, version, predicted, failed)
        outcomes = []
        for task in map(str, (t["id"] for t in tasks)):
            if task in failed:
                outcomes.append(Outcome(task, FAILED, None, failed[task], False))
            else:
                resumed = task in kept
                outcomes.append(Outcome(task, PREDICTED, kept[task] if resumed else predicted[task], None, resumed))
        return outcomes


# Sources: picklable callables that yield batches of tasks, in this process or inside Ray ---------------

@dataclasses.dataclass(frozen=True)
class ProjectTasks:
    """The tasks of a Label Studio project that have no prediction of `model_version`, in id order.

    Paged by id (each page starts after the last id seen), with Label Studio's own filter on the predictions'
    model versions: a task pushed meanwhile is not served again, and pages do not shift as tasks get
    predictions."""

    settings: Settings
    project: str
    model_version: str
    batch: int

    def __call__(self) -> Iterator[list[dict]]:
        client = _client(self.settings)
        after = 0
        while True:
            page = self.page(client, after, PAGE_SIZE)["tasks"]
            for start in range(0, len(page), self.batch):
                yield [{"id": t["id"], "data": t["data"]} for t in page[start:start + self.batch]]
            if len(page) < PAGE_SIZE:
                return
            after = page[-1]["id"]

    def page(self, client, after: int, size: int) -> dict:
        """Label Studio's answer: {"total": tasks left after `after`, "tasks": [...]}."""
        query = {
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after},
                {"filter": "filter:tasks:predictions_model_versions", "operator": "not_contains", "type": "List",
                 "value": [self.model_version]},
            ]},
            "ordering": ["tasks:id"],
        }
        # Image URLs come resolved as for the Data Manager: cloud storage objects as Label Studio's own
        # /tasks/<id>/resolve/ links, which ImageLoader fetches with the key.
        return _api(client, "GET", "/api/tasks", params={
            "project": self.project, "page": 1, "page_size": size, "fields": "task_only", "query": json.dumps(query)})


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """Image files under `paths` (folders recursively, each in name order) as tasks whose id is the file's
    absolute path, read one folder at a time."""

    paths: tuple[Path, ...]
    image_key: str
    batch: int

    def __call__(self) -> Iterator[list[dict]]:
        tasks = []
        for path in self.files():
            tasks.append({"id": str(path.resolve()), "data": {self.image_key: str(path)}})
            if len(tasks) == self.batch:
                yield tasks
                tasks = []
        if tasks:
            yield tasks

    def files(self) -> Iterator[Path]:
        for path in sorted(self.paths):
            yield from _walk(path) if path.is_dir() else [path]


def _walk(folder: Path) -> Iterator[Path]:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):  # a link back up the tree would never end
            yield from _walk(Path(entry.path))
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            yield Path(entry.path)


# Runs ----------------------------------------------------------------------------------------------

def prelabel(context: AppContext, project: str, ray_address: str = "", progress: Progress | None = None) -> dict:
    """Pre-annotate every task of Label Studio project `project` that has no prediction of the current
    models yet; returns the summary (tasks, skipped, done, failed with reasons, the re-clustering's counts
    or None). Raises PrelabelError, or RunInProgress when another run holds the project."""
    with PrelabelState(context.store).exclusive(project):
        return _prelabel_held(context, project, ray_address, progress, in_job=False)


def _prelabel_held(context: AppContext, project: str, ray_address: str, progress: Progress | None,
                   in_job: bool) -> dict:
    from .ray_pipeline import outcomes  # here: ray_pipeline imports this module

    client = context.label_studio
    if not client.configured:
        raise PrelabelError(NO_LABEL_STUDIO, 503)
    settings = context.settings
    started = time.monotonic()
    details = _api(client, "GET", f"/api/projects/{project}/")
    try:
        context.output_spec(details["label_config"])
    except LabelConfigError as error:
        raise PrelabelError(f"project {project}: {error}", 422) from None
    version = context.annotator.model_version
    state = PrelabelState(context.store)
    source = ProjectTasks(settings, project, version, _bounded("PRELABEL_BATCH", settings.prelabel_batch))
    run = Run(settings, project, details["label_config"], version)
    pusher = Pusher(client, state, project, version, _bounded("PRELABEL_PUSH", settings.prelabel_push, MAX_PUSH))
    todo = source.page(client, 0, 1)["total"]
    logger.info("prelabel project %s: %d tasks, %d without a prediction of %s", project, details["task_number"],
                todo, version)
    batches = outcomes(run, source, context, ray_address) if todo else iter(())  # no actors for nothing
    summary = _drive(batches, todo, pusher.add, progress)
    pusher.flush()
    return {"project": project, "model_version": version, "tasks": details["task_number"],
            "skipped": details["task_number"] - todo, "done": pusher.pushed, **summary,
            "reclustered": _recluster_if_due(context, project, ray_address, in_job),
            "seconds": round(time.monotonic() - started, 1)}


def annotate(context: AppContext, paths: Iterable[Path], label_config: str, project: str, out: Path,
             url_prefix: str = "", ray_address: str = "", progress: Progress | None = None) -> dict:
    """Pre-annotate image files into a Label Studio import file `out` (one task per image, with its
    prediction). The run's state is kept under `project` in the face store: run again, it continues where
    it stopped. Returns the summary (written, failed with reasons)."""
    from .ray_pipeline import outcomes

    started = time.monotonic()
    spec = context.output_spec(label_config)
    version = context.annotator.model_version
    state = PrelabelState(context.store)
    source = ImageFiles(tuple(paths), spec.image_key, _bounded("PRELABEL_BATCH", context.settings.prelabel_batch))
    todo = sum(1 for _ in source.files())
    if not todo:
        raise PrelabelError("no images found in " + ", ".join(map(str, source.paths)))
    run = Run(context.settings, project, label_config, version, trusted_paths=True)
    with state.exclusive(project):
        summary = _drive(outcomes(run, source, context, ray_address), todo, lambda outcome: None, progress)
        reclustered = _recluster_if_due(context, project, ray_address, in_job=False)
        written = write_import_file(context, state, run, source, out, url_prefix)
    return {"project": project, "model_version": version, "images": todo, "written": written, **summary,
            "reclustered": reclustered, "seconds": round(time.monotonic() - started, 1)}


def _recluster_if_due(context: AppContext, project: str, ray_address: str, in_job: bool) -> dict | None:
    """The re-clustering's counts (recluster.recluster) when the run's project was due one (recluster.is_due),
    else None. in_job: the run is the project's job (POST /prelabel) and re-clusters within it; else it
    takes the project's job for the re-clustering, or leaves it to the job that holds it."""
    if not is_due(context, project):
        return None
    logger.info("project %s has grown by AUTO_RECLUSTER=%g since its last re-clustering: re-clustering it",
                project, context.settings.auto_recluster)

    def work(progress: jobs.Progress) -> dict:
        return recluster(context.store, project, context.annotator.identity_distance, context.label_studio,
                         context.output_spec, progress, ray_address)

    if in_job:
        return work(lambda fraction, stage: None)
    job, new = context.store.create_job(project)
    if not new:
        logger.info("project %s: job %s runs, and is left to finish; no re-clustering", project, job)
        return None
    jobs.run(context.store, "recluster", job, project, work, expected=(ReclusterError,))
    ended = context.store.job(job)
    if ended["status"] != "done":
        raise PrelabelError(f"re-clustering project {project}: {ended['message']}")
    return ended["result"]


def _drive(batches: Iterator[list[Outcome]], todo: int, sink: Callable[[Outcome], None],
           progress: Progress | None) -> dict:
    """Hand every outcome to the sink; count and report them."""
    handled = resumed = failed = 0
    failures = {}
    for batch in batches:
        for outcome in batch:
            handled += 1
            if outcome.status == FAILED:
                failed += 1
                if len(failures) < FAILURES_SHOWN:
                    failures[outcome.task] = outcome.reason
            else:
                resumed += outcome.resumed
                sink(outcome)
        if progress:
            progress(handled, todo)
    return {"resumed": resumed, "failed": failed, "failures": failures}


class Pusher:
    """Sends predictions to Label Studio, PRELABEL_PUSH at a time, through its prediction import (one
    bulk insert: all of a request's predictions are created, or none), and records them as pushed."""

    def __init__(self, client, state: PrelabelState, project: str, model_version: str, size: int):
        self.client, self.state, self.project, self.model_version, self.size = client, state, project, model_version, size
        self.pending: list[Outcome] = []
        self.pushed = 0

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # A Ray task retried after its actor died may deliver a task again: it is pushed once.
        states = self.state.states(self.project, self.model_version, [o.task for o in self.pending])
        fresh = {o.task: o for o in self.pending if states.get(o.task) is None or states[o.task].status != PUSHED}
        self.pending = []
        if not fresh:
            return
        body = [{"task": int(task), **o.prediction} for task, o in fresh.items()]
        created = _api(self.client, "POST", f"/api/projects/{self.project}/import/predictions", json=body)
        if created.get("created") != len(body):
            # Label Studio drops predictions it finds invalid and says so only in its log; pushing them again
            # would not change that. They are counted as not done.
            logger.warning("project %s: Label Studio created %s of %d predictions (its log says which it refused)",
                           self.project, created.get("created"), len(body))
        self.state.mark_pushed(self.project, self.model_version, list(fresh))
        self.pushed += int(created.get("created") or 0)


def write_import_file(context: AppContext, state: PrelabelState, run: Run, source: ImageFiles, out: Path,
                      url_prefix: str) -> int:
    """Write every predicted image of `source` to `out` as a Label Studio import file (JSON), streaming: a
    batch of tasks in memory at a time, each face with the identity the store gives it now. Written beside
    `out`, then renamed: a killed run leaves no half file."""
    spec = context.output_spec(run.label_config)
    partial = out.with_name(out.name + ".partial")
    written = 0
    with open(partial, "w") as file:
        file.write("[")
        for tasks in source():
            ids = [t["id"] for t in tasks]
            states = state.states(run.project, run.model_version, ids)
            shown = context.store.shown_ids(run.project, ids)
            for task in tasks:
                found = states.get(task["id"])
                if found is None or found.status != PREDICTED:
                    continue
                path = Path(task["id"])
                image = url_prefix + str(path if not url_prefix else task["data"][source.image_key])
                prediction = {**found.prediction, "result": relabel_identities(
                    found.prediction["result"], spec, lambda region: shown.get((task["id"], region)))}
                file.write(("," if written else "") + "\n" + json.dumps(
                    {"data": {source.image_key: image}, "predictions": [prediction]}))
                written += 1
        file.write("\n]\n")
    partial.replace(out)
    return written


def _bounded(name: str, value: int, most: int | None = None) -> int:
    if value < 1 or (most is not None and value > most):
        raise PrelabelError(f"{name} must be from 1 to {most or 'any number'}, got {value}")
    return value


def _client(settings: Settings):
    from .label_studio import LabelStudioClient

    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, timeout=settings.fetch_timeout)


def _api(client, method: str, path: str, **kwargs):
    try:
        return label_studio_call(client, method, path, **kwargs)
    except ReclusterError as error:
        raise PrelabelError(str(error), 502) from None


# The HTTP-triggered job ---------------------------------------------------------------------------

def start_job(context: AppContext, body) -> dict:
    """POST /prelabel {"project": ID}: the job's status, with the job running in a background thread."""
    project = body.get("project") if isinstance(body, dict) else None
    if isinstance(project, bool) or not isinstance(project, (int, str)) or not str(project).isdigit():
        raise PrelabelError(f"'project' must be a Label Studio project id (a number), got {project!r}")
    project = str(project)
    if not context.label_studio.configured:
        raise PrelabelError(NO_LABEL_STUDIO, 503)
    hold = ExitStack()  # taken here, so that a run in progress is refused now; let go when the job ends
    try:
        hold.enter_context(PrelabelState(context.store).exclusive(project))
    except RunInProgress as error:
        raise PrelabelError(str(error), 409) from None
    job, new = context.store.create_job(project)
    if not new:
        hold.close()
        raise PrelabelError(f"project {project} has a job running: GET /prelabel/{job}", 409)
    jobs.start(context.store, "prelabel", job, project, lambda progress: _prelabel_job(context, project, hold, progress),
               expected=(PrelabelError,))
    return context.store.job(job)


def _prelabel_job(context: AppContext, project: str, hold: ExitStack, progress: jobs.Progress) -> dict:
    def tasks_done(handled: int, todo: int) -> None:  # tasks added to the project meanwhile are done too
        progress(min(handled / max(todo, 1), 1.0), f"{handled} of {todo} tasks")

    with hold:
        progress(0.0, "reading the project's tasks")
        return _prelabel_held(context, project, context.settings.ray_address, tasks_done, in_job=True)
