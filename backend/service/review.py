"""The identity review page: GET /identities?project=ID, where a lead annotator fixes identities for a whole
project at once instead of one region at a time in Label Studio.

One row per identity, least certain first (backend/storage/review.py says how certainty is measured), with
thumbnails of its least typical faces; an identity's own page (/identities/<number>?project=ID) shows all of
its faces. The page's operations are POSTs: rename, merge, move, reject and undo. Each changes the face store
in one transaction (logged for undo), then rewrites the predictions of the tasks it concerns in Label Studio
(recluster.push_predictions; in a background job the page follows when they are many); annotations are never
touched. An operation is the project's one job while it runs, so that none overlaps a re-clustering.

The page sits behind the app's basic auth like every route. Browsers send basic-auth credentials with any
request to this origin, also one that another site's form makes, so the operations answer only requests
that carry the CSRF_HEADER (which no cross-site form can set, and no cross-site script may send without a
CORS permission this backend never gives) and, when the browser names an Origin, only this one.
"""
from __future__ import annotations

import logging
import math
from typing import Callable
from urllib.parse import urlsplit

from flask import Blueprint, abort, jsonify, make_response, render_template, request

from ..storage import review
from ..storage.review import Change, ReviewError
from .context import AppContext
from . import jobs
from .recluster import Edit, ReclusterError, push_predictions

logger = logging.getLogger(__name__)

CSRF_HEADER, CSRF_VALUE = "X-Requested-With", "autoannotator-review"  # review.js sends it with every operation
IDENTITIES_PER_PAGE = 50
FACES_PER_ROW = 12  # the least typical faces of each identity on the project's page
FACES_PER_PAGE = 240  # on an identity's own page
HISTORY_SHOWN = 12  # latest operations listed, each with its undo button
MAX_PROJECT_LENGTH = 200


def review_blueprint(context: AppContext) -> Blueprint:
    blueprint = Blueprint("review", __name__, url_prefix="/identities", template_folder="templates",
                          static_folder="static")
    store = context.store

    @blueprint.before_request
    def same_origin_only():
        if request.method != "POST":
            return
        if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
            abort(403, f"review operations need the header {CSRF_HEADER}: {CSRF_VALUE} (the review page sends it)")
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            abort(403, f"review operations are only taken from this backend's own page, not from {origin}")

    @blueprint.get("")
    def identities():
        project = _project(request.args)
        page = _number(request.args.get("page", "1"), "page", minimum=1)
        shown = _review(lambda: review.identity_page(store, project, (page - 1) * IDENTITIES_PER_PAGE,
                                                     IDENTITIES_PER_PAGE, FACES_PER_ROW))
        return render_template("review/identities.html", project=project, identities=shown.identities,
                               total=shown.total, faces=shown.faces, page=page,
                               pages=max(1, math.ceil(shown.total / IDENTITIES_PER_PAGE)),
                               history=review.history(store, project, HISTORY_SHOWN), single=None,
                               csrf=(CSRF_HEADER, CSRF_VALUE))

    @blueprint.get("/<int:identity>")
    def identity(identity: int):
        project = _project(request.args)
        page = _number(request.args.get("page", "1"), "page", minimum=1)
        row = _review(lambda: review.identity_faces(store, project, identity, (page - 1) * FACES_PER_PAGE,
                                                    FACES_PER_PAGE))
        return render_template("review/identities.html", project=project, identities=[row], total=None,
                               faces=row.faces, page=page, pages=max(1, math.ceil(row.faces / FACES_PER_PAGE)),
                               history=review.history(store, project, HISTORY_SHOWN), single=row,
                               csrf=(CSRF_HEADER, CSRF_VALUE))

    @blueprint.get("/thumbnails/<task>/<region>")
    def thumbnail(task: str, region: str):
        jpeg = review.thumbnail(store, _project(request.args), task, region)
        if jpeg is None:
            abort(404, f"no thumbnail of face {region} of task {task}")
        response = make_response(jpeg)
        response.content_type = "image/jpeg"
        response.cache_control.private = True
        response.cache_control.no_cache = True  # revalidated by its ETag: a task predicted again gets new crops
        response.add_etag()
        return response.make_conditional(request)

    @blueprint.get("/jobs/<job>")
    def job_status(job: str):  # a background push of a large operation, which the page follows
        status = store.job(job)
        if status is None:
            abort(404, f"no job {job!r}")
        return jsonify(status)

    @blueprint.post("/rename")
    def rename():
        form = request.form
        name = form.get("name", "")
        if len(name) > context.settings.max_name_length:
            abort(400, f"a name has at most MAX_NAME_LENGTH={context.settings.max_name_length} characters")
        project = _project(form)
        return _operate(project, lambda: review.rename(store, project, _number(form.get("identity"), "identity"), name))

    @blueprint.post("/merge")
    def merge():
        form = request.form
        project = _project(form)
        into = _number(form.get("into"), "into")
        merged = [_number(value, "identities") for value in form.getlist("identities")]
        return _operate(project, lambda: review.merge(store, project, merged, into))

    @blueprint.post("/move")
    def move():
        form = request.form
        project = _project(form)
        faces = _faces(form)
        target = form.get("to", "").strip()
        if not target:
            abort(400, "'to' must be an identity (its number, person_<number> or its name) or 'new'")
        return _operate(project, lambda: review.move(store, project, faces, None if target == "new"
                                                     else review.find_identity(store, project, target)))

    @blueprint.post("/reject")
    def reject():
        form = request.form
        project = _project(form)
        faces = _faces(form)
        removed: dict[str, list[dict]] = {}

        def keep_removed(change: Change) -> None:  # the regions Label Studio lost with the faces, for an undo
            if removed:
                review.record_removed(store, project, change.entry, removed)

        return _operate(project, lambda: review.reject(store, project, faces, form.get("reason", "")),
                        lambda change: _take_out(change.removed, removed) if change.removed else None, keep_removed)

    @blueprint.post("/undo")
    def undo():
        form = request.form
        project = _project(form)
        entry = _number(form.get("entry"), "entry")
        return _operate(project, lambda: review.undo(store, project, entry),
                        lambda change: _put_back(review.removed_items(store, project, entry)) if change.restored
                        else None)

    def _operate(project: str, operation: Callable[[], Change], edit: Callable[[Change], Edit | None] = lambda _: None,
                 after: Callable[[Change], None] = lambda _: None):
        """Run a review operation as the project's one job: none runs beside a re-clustering or pre-annotation
        (which would write identities over it, or miss it) nor beside another operation still updating Label
        Studio. The answer comes once Label Studio's predictions agree with the store; for an operation on
        more than REVIEW_PUSH_INLINE_TASKS tasks, at once (202), with the job that updates them."""
        job, new = store.create_job(project)
        if not new:
            abort(409, f"project {project} is busy with job {job} (re-clustering, pre-annotation or a review "
                       "operation updating Label Studio): try again when it has finished")
        try:
            change = _review(operation)
        except BaseException:
            store.update_job(job, "done", 1.0, "refused: nothing changed", {"predictions_updated": 0})
            raise
        answer = {"entry": change.entry, "operation": change.operation, "summary": change.summary,
                  "tasks": len(change.tasks)}
        client = context.label_studio
        if not client.configured or not project.isdigit():
            after(change)
            store.update_job(job, "done", 1.0, "done", {"predictions_updated": 0})
            return jsonify({**answer, "label_studio": "not updated: LABEL_STUDIO_URL is not set"
                            if not client.configured else "not updated: not a Label Studio project"})

        def push(progress: jobs.Progress) -> dict:
            try:
                updated = push_predictions(client, store, project, context.output_spec,
                                           lambda done: progress(done, "updating Label Studio"), tasks=change.tasks,
                                           edit=edit(change))
            finally:
                after(change)
            return {"predictions_updated": updated}

        if len(change.tasks) > context.settings.review_push_inline_tasks:
            jobs.start(store, "review", job, project, push, expected=(ReclusterError,))
            return jsonify({**answer, "job": job, "label_studio": f"updating the predictions of {len(change.tasks)} "
                                                                  f"tasks: GET {request.script_root}/identities/jobs/{job}"}), 202
        try:
            result = push(lambda fraction, stage: None)
        except Exception as error:  # the store has changed: the answer must say so, whatever went wrong after
            if isinstance(error, ReclusterError):
                logger.error("review of project %s, operation %s: Label Studio not updated: %s", project,
                             change.entry, error)
            else:
                logger.exception("review of project %s, operation %s: Label Studio not updated", project, change.entry)
            reason = error if isinstance(error, ReclusterError) else "internal error (the backend's log says what)"
            store.update_job(job, "failed", 0.0, str(reason))
            return jsonify({**answer, "status": 502, "detail": f"{change.summary}: done in the face store (undo: "
                                                                 f"operation {change.entry}), but Label Studio's "
                                                                 f"predictions were not updated: {reason}"}), 502
        store.update_job(job, "done", 1.0, "done", result)
        updated = result["predictions_updated"]
        return jsonify({**answer, "label_studio": f"{updated} prediction{'s' if updated != 1 else ''} updated",
                        "predictions_updated": updated})

    return blueprint


def _take_out(faces: list[tuple[str, str]], removed: dict[str, list[dict]]) -> Callable:
    """A push_predictions edit that takes rejected faces out of predictions: each face's box, identity and
    landmarks (regions with its id, with its id as parentID, or named <its id>-<landmark>); what it takes
    out goes into `removed` (task -> result items)."""
    regions: dict[str, set[str]] = {}
    for task, region in faces:
        regions.setdefault(task, set()).add(region)

    def edit(task: str, result: list) -> list:
        gone = regions.get(task, set())
        of_face = lambda item: (str(item.get("id")) in gone or item.get("parentID") in gone  # noqa: E731
                                or any(str(item.get("id")).startswith(f"{region}-") for region in gone))
        removed.setdefault(task, []).extend(item for item in result if of_face(item))
        return [item for item in result if not of_face(item)]

    return edit


def _put_back(removed: dict[str, list[dict]]) -> Callable:
    """A push_predictions edit that puts back the regions a rejection took out (those not there again)."""
    def edit(task: str, result: list) -> list:
        present = {(item.get("id"), item.get("from_name")) for item in result}
        return result + [item for item in removed.get(task, []) if (item.get("id"), item.get("from_name")) not in present]

    return edit


def _review(operation: Callable):
    try:
        return operation()
    except ReviewError as error:
        abort(error.status, str(error))


def _project(values) -> str:
    project = (values.get("project") or "").strip()
    if not project or len(project) > MAX_PROJECT_LENGTH:
        abort(400, "'project' must be the project's id (/identities?project=ID)")
    return project


def _number(value, what: str, minimum: int = 0) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        abort(400, f"'{what}' must be a whole number, got {value!r}")
    if number < minimum:
        abort(400, f"'{what}' must be at least {minimum}")
    return number


def _faces(form) -> list[tuple[str, str]]:
    """Faces are sent as parallel 'task' and 'region' fields."""
    tasks, regions = form.getlist("task"), form.getlist("region")
    if not tasks or len(tasks) != len(regions):
        abort(400, "name the faces with one 'task' and one 'region' field each")
    return list(zip(tasks, regions))
