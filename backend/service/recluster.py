"""Re-cluster all faces of a project, then bring Label Studio's predictions up to date with the result.

Run by `autoannotator recluster --project ID` and by POST /recluster {"project": ID}, which answers at once
with a job id and works in a background thread; the job's status lives in the face store, so that any
worker or replica answers GET /recluster/<job>. With a Ray cluster (--ray or RAY_ADDRESS), the clustering's
shards run on its workers (ray_recluster.py); this process reads the faces, writes the identities and
updates Label Studio either way.

Label Studio is spoken to with plain requests through LabelStudioClient (which already handles legacy
tokens and personal access tokens): three REST calls do not justify label-studio-sdk's dependency tree.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Collection

import requests

from ..storage import FaceStore, cluster_project
from . import jobs
from .context import AppContext
from .label_config import OutputSpec
from .label_studio import LabelStudioClient, LabelStudioError
from .predictions import relabel_identities

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]  # (fraction done, what is being done)


Edit = Callable[[str, list], list]  # (task, prediction result) -> the result to write instead
# Up to this many tasks, push_predictions asks Label Studio for each task's predictions; beyond, for the project's.
TASKS_ASKED_ONE_BY_ONE = 50


class ReclusterError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status  # the HTTP status POST /recluster answers with


def recluster(store: FaceStore, project: str, threshold: float, label_studio: LabelStudioClient | None,
              output_spec: Callable[[str], OutputSpec], progress: Progress, ray_address: str = "") -> dict:
    """Re-cluster the project's faces (identity numbers carried over), then update its predictions in Label
    Studio when `label_studio` is configured. Returns counts of what changed. The clustering runs on the
    Ray cluster at `ray_address` when one is given, else in this process."""
    progress(0.0, "reading faces")
    before = store.faces(project)
    if not before.tasks:
        raise ReclusterError(f"project {project} has no faces in the face store")
    executor = None
    if ray_address:
        from .ray_recluster import RayExecutor  # here: Ray is an optional extra, and ray_recluster imports this module

        executor = RayExecutor(ray_address)
    progress(0.05, "clustering")
    labels = cluster_project(before.descriptors, threshold, lambda done: progress(0.05 + 0.6 * done, "clustering"),
                             executor, before.quality)
    progress(0.65, "saving identities")
    result = store.relabel(project, before, labels)
    if label_studio is not None and label_studio.configured and project.isdigit():  # (not an annotate --project name)
        result["predictions_updated"] = push_predictions(
            label_studio, store, project, output_spec, lambda done: progress(0.7 + 0.3 * done, "updating Label Studio"))
    progress(1.0, "done")
    return result


def push_predictions(client: LabelStudioClient, store: FaceStore, project: str,
                     output_spec: Callable[[str], OutputSpec], progress: Callable[[float], None],
                     tasks: Collection[str] | None = None, edit: Edit | None = None) -> int:
    """Rewrite the identity of every face in the newest of this backend's predictions of each task (of
    `tasks` only, when given) to what the store now says; returns how many predictions changed.

    edit(task, result) -> result, when given, first changes the regions of a task's prediction (the review
    page takes the faces it rejected out, and puts them back when that is undone). Annotations are never
    touched: they are the annotators' own.
    """
    spec = output_spec(label_studio_call(client, "GET", f"/api/projects/{project}/")["label_config"])
    if not spec.identities and edit is None:
        return 0
    shown = store.shown_ids(project)
    newest = _newest_predictions(client, project, tasks)
    updated = 0
    for done, (task, prediction) in enumerate(newest.items(), start=1):
        result = edit(task, prediction["result"]) if edit else prediction["result"]
        result = relabel_identities(result, spec, lambda region: shown.get((task, region)))
        if result != prediction["result"]:
            label_studio_call(client, "PATCH", f"/api/predictions/{prediction['id']}/", json={"result": result})
            updated += 1
        progress(done / len(newest))
    return updated


def _newest_predictions(client: LabelStudioClient, project: str, tasks: Collection[str] | None) -> dict[str, dict]:
    """{task: the newest of this backend's predictions of it}, for the project's tasks or these. A few tasks
    are asked for one by one; for more, one listing of the whole project costs less."""
    if tasks is not None and len(tasks) <= TASKS_ASKED_ONE_BY_ONE:
        listing = [prediction for task in tasks if task.isdigit()
                   for prediction in label_studio_call(client, "GET", "/api/predictions/", params={"task": task})]
    else:
        listing = label_studio_call(client, "GET", "/api/predictions/", params={"task__project": project})
    wanted = None if tasks is None else set(tasks)
    newest = {}
    for prediction in listing:
        task = str(prediction["task"])
        if str(prediction.get("model_version", "")).startswith("autoannotator-") and (wanted is None or task in wanted):
            if task not in newest or prediction["id"] > newest[task]["id"]:
                newest[task] = prediction
    return newest


def label_studio_call(client: LabelStudioClient, method: str, path: str, **kwargs):
    """The JSON answer of a Label Studio API call; ReclusterError saying what failed when there is none."""
    try:
        response = client.request(method, path, **kwargs)
    except (requests.RequestException, LabelStudioError) as error:
        raise ReclusterError(f"Label Studio {method} {path}: {error}") from error
    if response.status_code >= 300:  # a redirect off Label Studio comes back unfollowed
        raise ReclusterError(f"Label Studio {method} {path} answered HTTP {response.status_code}: "
                             f"{response.text[:300]}")
    return response.json()


# The HTTP-triggered job ---------------------------------------------------------------------------

def start_job(context: AppContext, body) -> dict:
    """POST /recluster {"project": ID}: the job's status, with the job running in a background thread."""
    project = body.get("project") if isinstance(body, dict) else None
    if isinstance(project, bool) or not isinstance(project, (int, str)) or not str(project).isdigit():
        raise ReclusterError(f"'project' must be a Label Studio project id (a number), got {project!r}")
    job, new = context.store.create_job(str(project))
    if not new:
        raise ReclusterError(f"project {project} is being re-clustered already: GET /recluster/{job}", 409)
    _run_job(context, str(project), job)
    return context.store.job(job)


def check_after_predict(context: AppContext, project: str | None) -> None:
    """After /predict stored faces of a Label Studio project: start_if_due on a thread of its own, one per
    project at a time in this process, so that no request waits for it (it counts the project's faces:
    167 ms at 10^6 faces on PostgreSQL)."""
    if context.settings.auto_recluster <= 0 or project is None or not project.isdigit():
        return
    with context.recluster_checks_lock:
        if project in context.recluster_checks:
            return
        context.recluster_checks.add(project)

    def check() -> None:
        try:
            start_if_due(context, project)
        except Exception:  # (a database gone away: the next /predict asks again)
            logger.exception("checking whether project %s is due a re-clustering", project)
        finally:
            with context.recluster_checks_lock:
                context.recluster_checks.discard(project)

    threading.Thread(target=check, name=f"recluster-check-{project}", daemon=True).start()


def start_if_due(context: AppContext, project: str) -> str | None:
    """A re-clustering job of a Label Studio project when it has grown enough since its last one
    (recluster_due); the job's id, or None."""
    if not is_due(context, project):
        return None
    job, new = context.store.create_job(project)
    if not new:  # a job of the project runs: it re-clusters, or the next /predict will ask again
        return None
    logger.info("project %s has grown by AUTO_RECLUSTER=%g since its last re-clustering: job %s", project,
                context.settings.auto_recluster, job)
    _run_job(context, project, job)
    return job


def is_due(context: AppContext, project: str) -> bool:
    """Whether the project has grown by AUTO_RECLUSTER since its last re-clustering (recluster_due)."""
    growth = context.settings.auto_recluster
    return growth > 0 and recluster_due(*context.store.faces_since_recluster(project), growth)


# A project is re-clustered automatically once it holds this many faces more than at its last re-clustering,
# however small it is: below that, a few new faces change little, and each job rewrites predictions.
AUTO_RECLUSTER_MIN_NEW_FACES = 10


def recluster_due(faces: int, faces_then: int, growth: float) -> bool:
    """Whether a project of `faces` faces, `faces_then` at its last re-clustering (0: never), has grown by
    the fraction `growth` (and by AUTO_RECLUSTER_MIN_NEW_FACES): re-clustering at a constant growth costs
    a constant multiple of one re-clustering of the project's final size, however it grew."""
    new = faces - faces_then
    return new >= max(AUTO_RECLUSTER_MIN_NEW_FACES, growth * faces_then)


def _run_job(context: AppContext, project: str, job: str) -> None:
    jobs.start(context.store, "recluster", job, project, lambda progress: recluster(
        context.store, project, context.annotator.identity_distance, context.label_studio, context.output_spec,
        progress, context.settings.ray_address), expected=(ReclusterError,))
