"""Re-cluster all faces of a project, then bring Label Studio's predictions up to date with the result.

Run by `autoannotator recluster --project ID` and by POST /recluster {"project": ID}, which answers at once
with a job id and works in a background thread; the job's status lives in the face store, so that any
worker or replica answers GET /recluster/<job>.

Label Studio is spoken to with plain requests through LabelStudioClient (which already handles legacy
tokens and personal access tokens): three REST calls do not justify label-studio-sdk's dependency tree.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import requests

from ..storage import FaceStore, cluster_project
from . import model
from .label_studio import LabelStudioAuthError, LabelStudioClient
from .predictions import identity_value

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]  # (fraction done, what is being done)


class ReclusterError(ValueError):
    pass


def recluster(store: FaceStore, project: str, threshold: float, label_studio: LabelStudioClient | None,
              progress: Progress) -> dict:
    """Re-cluster the project's faces (identity numbers carried over), then update its predictions in Label
    Studio when `label_studio` is configured. Returns counts of what changed."""
    progress(0.0, "reading faces")
    before = store.faces(project)
    if not before.tasks:
        raise ReclusterError(f"project {project} has no faces in the face store")
    labels = cluster_project(before.descriptors, threshold, lambda done: progress(0.05 + 0.6 * done, "clustering"))
    progress(0.65, "saving identities")
    result = store.relabel(project, before, labels)
    if label_studio is not None and label_studio.configured and project.isdigit():  # (not an annotate --project name)
        result["predictions_updated"] = push_predictions(
            label_studio, store, project, lambda done: progress(0.7 + 0.3 * done, "updating Label Studio"))
    progress(1.0, "done")
    return result


def push_predictions(client: LabelStudioClient, store: FaceStore, project: str,
                     progress: Callable[[float], None]) -> int:
    """Rewrite the identity of every face in the newest of this backend's predictions of each task to what
    the store now says; returns how many predictions changed."""
    control = model.output_spec(_call(client, "GET", f"/api/projects/{project}/")["label_config"]).identities
    if not control:
        return 0
    shown = store.shown_ids(project)
    newest = {}
    for prediction in _call(client, "GET", "/api/predictions/", params={"task__project": project}):
        if str(prediction.get("model_version", "")).startswith("autoannotator-"):
            task = str(prediction["task"])
            if task not in newest or prediction["id"] > newest[task]["id"]:
                newest[task] = prediction
    updated = 0
    for done, (task, prediction) in enumerate(newest.items(), start=1):
        result = []
        for item in prediction["result"]:
            identity = shown.get((task, str(item.get("id"))))
            if item.get("from_name") == control[0].name and identity is not None:
                value = identity_value(control[0], identity)
                if value is None:  # a Choices control without this id among its choices: leave it to the annotator
                    continue
                item = {**item, "value": {**item["value"], **value}}
            result.append(item)
        if result != prediction["result"]:
            _call(client, "PATCH", f"/api/predictions/{prediction['id']}/", json={"result": result})
            updated += 1
        progress(done / len(newest))
    return updated


def _call(client: LabelStudioClient, method: str, path: str, **kwargs):
    try:
        for refresh in (False, True):  # an access token may expire between two calls: renew it once
            response = client.session.request(method, client.absolute(path), headers=client.auth_header(refresh),
                                              timeout=client.timeout, **kwargs)
            if response.status_code != 401:
                break
    except (requests.RequestException, LabelStudioAuthError) as error:
        raise ReclusterError(f"Label Studio {method} {path}: {error}") from error
    if response.status_code >= 400:
        raise ReclusterError(f"Label Studio {method} {path} answered HTTP {response.status_code}: "
                             f"{response.text[:300]}")
    return response.json()


# The HTTP-triggered job ---------------------------------------------------------------------------

def start_job(body) -> dict:
    """POST /recluster {"project": ID}: the job's status, with the job running in a background thread."""
    project = body.get("project") if isinstance(body, dict) else None
    if isinstance(project, bool) or not isinstance(project, (int, str)) or not str(project).isdigit():
        raise ReclusterError(f"'project' must be a Label Studio project id (a number), got {project!r}")
    store = model.face_store()
    job = store.create_job(str(project))
    threading.Thread(target=_run_job, args=(job, str(project)), name=f"recluster-{job}", daemon=True).start()
    return store.job(job)


def _run_job(job: str, project: str) -> None:
    store = model.face_store()
    shown = {"progress": -1.0, "stage": ""}

    def progress(fraction: float, stage: str) -> None:
        if fraction - shown["progress"] >= 0.01 or stage != shown["stage"]:  # a database write per percent
            shown.update(progress=fraction, stage=stage)
            store.update_job(job, "running", fraction, stage)

    try:
        settings = model.settings()
        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key,
                                   timeout=settings.fetch_timeout)
        result = recluster(store, project, model.annotator().identity_distance, client, progress)
    except Exception as error:  # the job's status is the only place anyone will look
        logger.exception("recluster job %s (project %s) failed", job, project)
        store.update_job(job, "failed", max(shown["progress"], 0.0), f"{type(error).__name__}: {error}")
        return
    logger.info("recluster job %s (project %s): %s", job, project, result)
    store.update_job(job, "done", 1.0, "done", result)
