"""Label Studio webhooks: annotations that annotators submitted."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


class WebhookError(ValueError):
    pass


def handle_event(body) -> dict:
    """Check a webhook body and act on it; raises WebhookError saying what is malformed."""
    if not isinstance(body, dict):
        raise WebhookError("the body must be a JSON object")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise WebhookError("the body has no 'action'")
    if action not in ANNOTATION_EVENTS:
        return {"action": action, "status": "ignored"}
    annotation = body.get("annotation")
    task = body.get("task")
    if not isinstance(annotation, dict) or not isinstance(annotation.get("result"), list):
        raise WebhookError(f"{action}: 'annotation' must be an object with a 'result' list")
    if not isinstance(task, dict) or "id" not in task:
        raise WebhookError(f"{action}: 'task' must be an object with an 'id'")
    logger.info("%s: task %s, annotation %s, %d result items", action, task["id"], annotation.get("id"),
                len(annotation["result"]))
    return {"action": action, "status": "received", "task": task["id"], "regions": len(annotation["result"])}
