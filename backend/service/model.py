"""The Label Studio ML backend model: label-studio-ml's LabelStudioMLBase, filled with our pipeline.

This is the one place our code touches label-studio-ml 1.0.9. Its Flask app, job manager and routes
(/train, /versions, /is_training, /metrics) are not used: app.py serves the routes Label Studio calls
and hands each request to this class with the worker's AppContext.
"""
from __future__ import annotations

from label_studio_ml.model import LabelStudioMLBase

from .context import AppContext
from .label_config import LabelConfigError
from .predict import predict_tasks


class AutoAnnotatorModel(LabelStudioMLBase):
    def __init__(self, context: AppContext, label_config: str | None = None, **kwargs):
        # An unusable config is refused at /setup, when the user connects the backend, not at the first task;
        # ours is checked first: the base class parses it again with lxml and raises its own errors.
        self.spec = context.output_spec(label_config) if label_config else None
        super().__init__(label_config=label_config, **kwargs)
        self.context = context

    @property
    def model_version(self) -> str:
        """Names the ensemble: Label Studio shows it to users and keys predictions by it."""
        return self.context.annotator.model_version

    def predict(self, tasks, project: str | None = None, deadline: float | None = None, **kwargs) -> list:
        """One answer per task: its prediction, or an empty list for a task not reached before `deadline`
        (time.monotonic()): Label Studio saves no prediction for it, so the next Retrieve Predictions
        sends it again (a list of another length would cost the whole batch its predictions)."""
        if self.spec is None:
            raise LabelConfigError("no label config: call /setup first or send label_config with /predict")
        batch = predict_tasks(self.context, tasks, self.spec, project, deadline)
        return batch.predictions + [[] for _ in range(batch.unanswered)]
