"""The WSGI application that gunicorn serves: label-studio-ml's Flask app around AutoAnnotatorModel,
with request validation and in-process webhooks added."""
from __future__ import annotations

import json
import logging
import os

from flask import jsonify, request

from .label_config import LabelConfigError
from .recluster import ReclusterError, start_job
from .webhooks import WebhookError, handle_event

logger = logging.getLogger(__name__)


def create_app():
    # label-studio-ml 1.0.9 reads this flag with two different defaults in different places; pin it to the
    # mode Label Studio >= 1.5 speaks (one model for the whole server, /setup then /predict).
    os.environ["LABEL_STUDIO_ML_BACKEND_V2"] = "true"
    from label_studio_ml.api import init_app
    from label_studio_ml.model import LabelStudioMLManager

    from . import model

    logging.basicConfig(
        level=model.settings().log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data_dir = model.settings().data_dir
    app = init_app(model.AutoAnnotatorModel, model_dir=str(data_dir / "label-studio-ml"))
    # label-studio-ml 1.0.9 refuses /predict in a process that has not seen /setup, and Label Studio calls /setup
    # once: with several gunicorn workers, the others would refuse. /predict carries its label config, so every
    # worker starts with a model of its own.
    LabelStudioMLManager.create()
    model.annotator()  # load the models now, so a worker that answers /health is ready to predict
    logger.info("models loaded: %s", model.annotator().model_version)
    logger.info("face store: %s", model.face_store())  # opened now: a wrong DATABASE_URL stops the start

    @app.before_request
    def validate_request():
        if request.method != "POST":
            return None
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, f"{request.path}: the request body must be a JSON object")
        try:
            if request.path == "/predict":
                if not isinstance(body.get("tasks"), list):
                    return _error(400, "/predict: 'tasks' must be a list of tasks")
                if body.get("label_config"):
                    model.output_spec(body["label_config"])
            elif request.path == "/setup":
                model.output_spec(body.get("schema") or "")
        except LabelConfigError as error:
            return _error(422, f"{request.path}: {error}")
        return None

    @app.after_request
    def name_the_ensemble(response):
        # label-studio-ml 1.0.9 reports its training job id ("INITIAL") as the model version; Label Studio
        # shows this string to users and keys predictions by it, so it must name the ensemble instead.
        body = response.get_json(silent=True) if response.is_json else None
        if request.path in ("/setup", "/predict") and isinstance(body, dict) and "model_version" in body:
            body["model_version"] = model.annotator().model_version
            response.set_data(json.dumps(body))
        return response

    # label-studio-ml 1.0.9 runs webhooks in a forked process and answers 500 to a malformed body;
    # ours are checked and handled in the request, so the sender learns what was wrong.
    def webhook():
        try:
            return jsonify(handle_event(request.get_json(silent=True))), 201
        except WebhookError as error:
            return _error(400, f"/webhook: {error}")

    app.view_functions["webhook"] = webhook

    # Re-clustering a whole project takes a while: answered at once with a job to poll (see recluster.py).
    @app.post("/recluster")
    def start_recluster():
        try:
            job = start_job(request.get_json(silent=True))
        except ReclusterError as error:
            return _error(400, f"/recluster: {error}")
        return jsonify(job), 202, {"Location": f"/recluster/{job['job']}"}

    @app.get("/recluster/<job>")
    def recluster_status(job):
        status = model.face_store().job(job)
        return jsonify(status) if status else _error(404, f"/recluster: no job {job!r}")

    return app


def _error(status: int, message: str):
    logger.warning("HTTP %s: %s", status, message)
    return jsonify({"status": status, "detail": message}), status
