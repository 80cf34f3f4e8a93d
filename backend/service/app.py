"""The WSGI application that gunicorn serves (`create_app()`, once per worker process).

It serves the routes Label Studio calls (/health, /setup, /predict, /webhook) and our own (/recluster, /prelabel),
with the worker's one AppContext. label-studio-ml's own Flask app is not used: its other routes
(/train, /versions, /is_training, /metrics) do not exist here, and it logged request headers and bodies.

Every route but /health needs HTTP basic auth (BASIC_AUTH_USER / BASIC_AUTH_PASS, the names of Label
Studio's Connect Model form); with no credentials configured, only loopback clients are served.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ..config import Settings
from . import interactive
from .context import AppContext
from .label_config import LabelConfigError
from .model import AutoAnnotatorModel
from .prelabel import PrelabelError
from .prelabel import start_job as start_prelabel_job
from .recluster import ReclusterError, start_job
from .recluster import check_after_predict
from .review import review_blueprint
from .webhooks import WebhookError, handle_event

logger = logging.getLogger(__name__)

CONTEXT = "autoannotator"  # the key of the worker's AppContext in app.extensions
OPEN_ROUTES = ("/health", "/")  # Label Studio checks these before it knows any credentials


class RequestError(ValueError):
    """A request the backend cannot act on; the message says what is wrong with it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(settings: Settings | None = None, context: AppContext | None = None) -> Flask:
    settings = settings or (context.settings if context else Settings.from_env())
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    context = context or AppContext.build(settings)
    logger.info("models loaded: %s", context.annotator.model_version)
    logger.info("face store: %s", context.store)  # opened now: a wrong DATABASE_URL stops the start
    if not settings.basic_auth_user:
        logger.warning("BASIC_AUTH_USER and BASIC_AUTH_PASS are not set: only clients on this machine "
                       "(loopback) are served")

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions[CONTEXT] = context

    @app.before_request
    def authenticate():
        if request.path in OPEN_ROUTES:
            return None
        if settings.basic_auth_user:
            if not _credentials_match(settings):
                return _error(401, "authentication required: HTTP basic auth with BASIC_AUTH_USER / BASIC_AUTH_PASS",
                              {"WWW-Authenticate": 'Basic realm="autoannotator"'})
        elif not _is_loopback(request.remote_addr):
            return _error(403, "this backend has no credentials configured (BASIC_AUTH_USER / BASIC_AUTH_PASS) "
                               "and serves only clients on its own machine")
        return None

    @app.errorhandler(RequestError)
    def refuse(error: RequestError):
        return _error(error.status, f"{request.path}: {error}")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _error(error.code or 500, f"{request.path}: {error.name}: {error.description}")

    @app.errorhandler(Exception)
    def unexpected(error: Exception):  # the log has the traceback; the caller gets no internals
        logger.exception("%s %s failed", request.method, request.path)
        return _error(500, f"{request.path}: internal error (the backend's log says what went wrong)")

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_version": context.annotator.model_version})

    @app.post("/setup")
    def setup():
        body = json_body()
        model = _model(context, _label_config(body, "schema"))
        return jsonify({"model_version": model.model_version})

    @app.post("/predict")
    def predict():
        started = time.monotonic()
        body = json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise RequestError(400, "'tasks' must be a list of tasks")
        if len(tasks) > settings.max_tasks_per_request:
            raise RequestError(413, f"{len(tasks)} tasks in one request, over MAX_TASKS_PER_REQUEST="
                                    f"{settings.max_tasks_per_request}: select fewer tasks")
        model = _model(context, _label_config(body, "label_config"))
        if interactive.asks(body):  # a region just drawn with a smart tool, Auto-Annotation on
            try:
                prediction = interactive.answer(context, model.spec, tasks, _project_id(body.get("project")),
                                                body["params"]["context"])
            except interactive.InteractiveError as error:
                raise RequestError(error.status, str(error)) from None
            return jsonify({"results": [prediction], "model_version": model.model_version})
        project = _project_id(body.get("project"))
        results = model.predict(tasks, project=project, deadline=started + settings.predict_timeout)
        # Faces assigned one request at a time are re-clustered all together now and then, as one batch of
        # them would be, and the ids that changed are pushed to the project's predictions.
        check_after_predict(context, project)
        return jsonify({"results": results, "model_version": model.model_version})

    @app.post("/webhook")
    def webhook():
        try:
            return jsonify(handle_event(context, json_body())), 201
        except WebhookError as error:
            raise RequestError(400, str(error)) from None

    # Re-clustering a whole project takes a while: answered at once with a job to poll (see recluster.py).
    @app.post("/recluster")
    def start_recluster():
        try:
            job = start_job(context, json_body())
        except ReclusterError as error:
            raise RequestError(error.status, str(error)) from None
        return jsonify(job), 202, {"Location": f"/recluster/{job['job']}"}

    # Pre-annotating a whole project, likewise (see prelabel.py).
    @app.post("/prelabel")
    def start_prelabel():
        try:
            job = start_prelabel_job(context, json_body())
        except PrelabelError as error:
            raise RequestError(error.status, str(error)) from None
        return jsonify(job), 202, {"Location": f"/prelabel/{job['job']}"}

    @app.get("/recluster/<job>")
    @app.get("/prelabel/<job>")
    def job_status(job):
        status = context.store.job(job)
        if status is None:
            raise RequestError(404, f"no job {job!r}")
        return jsonify(status)

    app.register_blueprint(review_blueprint(context))  # /identities: the identity review page (review.py)
    return app


def json_body() -> dict:
    """The request's JSON object; RequestError (400) for anything else, deeply nested JSON included."""
    try:
        body = json.loads(request.get_data(cache=True) or b"null")
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"the request body must be a JSON object (it is not valid JSON: "
                                f"{type(error).__name__})") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def _label_config(body: dict, key: str) -> str:
    config = body.get(key)
    if not isinstance(config, str) or not config.strip():
        raise RequestError(400, f"'{key}' must be the project's label config (an XML string)")
    return config


def _model(context: AppContext, label_config: str) -> AutoAnnotatorModel:
    try:
        return AutoAnnotatorModel(context, label_config)
    except LabelConfigError as error:
        raise RequestError(422, str(error)) from None


def _project_id(project) -> str | None:
    """The Label Studio project id of a /predict request, or None. Label Studio sends "project" as
    "<id>.<created at>"; the id alone is what webhooks and the REST API call the project."""
    if not isinstance(project, (str, int)) or isinstance(project, bool):
        return None
    project = str(project).split(".")[0]
    return project if project.isdigit() else None


def _credentials_match(settings: Settings) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    # Both compared in full, in constant time, so that the answer's timing says nothing about either.
    user = hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
    password = hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
    return user & password


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, headers: dict | None = None):
    logger.warning("HTTP %s: %s", status, message)
    return jsonify({"status": status, "detail": message}), status, headers or {}
