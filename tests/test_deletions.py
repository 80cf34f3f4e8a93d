"""Label Studio's delete webhooks: a deleted annotation takes back what it taught the face store, deleted tasks
and projects leave it. Through the webhook handler, as /webhook runs it, on an SQLite store."""
from __future__ import annotations

import numpy as np
import pytest

from backend.storage import FaceStore, NewFace
from backend.storage.dialects import SQLiteDialect

PROJECT = "5"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from backend.config import Settings
    from backend.service.context import AppContext

    return AppContext.build(Settings(data_dir=tmp_path_factory.mktemp("data")))


@pytest.fixture
def store(context, tmp_path):
    context.store = FaceStore(SQLiteDialect(tmp_path / "faces.sqlite3"))
    return context.store


def descriptor(seed: int, dim: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim)
    return vector / np.linalg.norm(vector)


def predicted(store: FaceStore, context, tasks: dict[str, int]) -> None:
    """Each task gets one predicted face of person `seed`."""
    dim = context.annotator.descriptors.dim
    faces = [NewFace(task, "face1", np.array([10, 10, 50, 50.]), np.full((5, 2), np.nan), descriptor(seed, dim), seed)
             for task, seed in tasks.items()]
    store.assign(PROJECT, faces, "v1", context.annotator.identity_distance)


def submitted(context, task: str, annotation: int, name: str | None = None) -> dict:
    from backend.service.webhooks import handle_event

    result = [{"id": "face1", "type": "rectanglelabels", "original_width": 100, "original_height": 100,
               "value": {"x": 10, "y": 10, "width": 40, "height": 40, "rectanglelabels": ["Face"]}}]
    if name:
        result.append({"id": "face1", "type": "textarea", "value": {"text": [name]}})
    return handle_event(context, {"action": "ANNOTATION_CREATED", "project": {"id": int(PROJECT)},
                                  "task": {"id": int(task), "project": int(PROJECT), "data": {}},
                                  "annotation": {"id": annotation, "result": result}})


def state(store: FaceStore) -> dict[str, tuple[bool, str]]:
    faces = store.faces(PROJECT)
    shown = store.shown_ids(PROJECT)
    return {f"{t}/{r}": (bool(c), shown[(t, r)]) for t, r, c in zip(faces.tasks, faces.regions, faces.confirmed)}


def deleted(context, action: str, key: str, ids: list[int]) -> dict:
    from backend.service.webhooks import handle_event

    return handle_event(context, {"action": action, "project": {"id": int(PROJECT)}, key: [{"id": i} for i in ids]})


def test_a_deleted_annotation_unconfirms_its_faces_and_keeps_the_name(context, store):
    predicted(store, context, {"1": 1, "2": 2})
    assert submitted(context, "1", annotation=11, name="Ada")["confirmed"] == 1
    assert state(store)["1/face1"] == (True, "Ada")
    answer = deleted(context, "ANNOTATIONS_DELETED", "annotations", [11])
    assert answer["unconfirmed"] == 1 and answer["deleted"] == 0
    assert state(store) == {"1/face1": (False, "Ada"), "2/face1": (False, "person_2")}


def test_a_face_drawn_by_hand_leaves_with_its_annotation(context, store):
    from backend.storage import AnnotatedFace

    predicted(store, context, {"1": 1})
    drawn = AnnotatedFace("drawn1", np.array([60, 60, 90, 90.]), None, descriptor(7, context.annotator.descriptors.dim))
    kept = AnnotatedFace("face1", np.array([10, 10, 50, 50.]), None, None)
    assert store.learn(PROJECT, "1", [kept, drawn], context.annotator.identity_distance, annotation="11")["added"] == 1
    assert set(state(store)) == {"1/face1", "1/drawn1"}
    assert deleted(context, "ANNOTATIONS_DELETED", "annotations", [11]) == {
        "action": "ANNOTATIONS_DELETED", "status": "received", "project": PROJECT, "unconfirmed": 1, "deleted": 1}
    assert state(store) == {"1/face1": (False, "person_1")}


def test_a_task_with_another_annotation_stays_confirmed(context, store):
    predicted(store, context, {"1": 1})
    submitted(context, "1", annotation=11)
    submitted(context, "1", annotation=12)
    assert deleted(context, "ANNOTATIONS_DELETED", "annotations", [11])["unconfirmed"] == 0
    assert state(store)["1/face1"][0] is True
    assert deleted(context, "ANNOTATIONS_DELETED", "annotations", [12])["unconfirmed"] == 1
    assert state(store)["1/face1"][0] is False


def test_an_unknown_annotation_changes_nothing(context, store):
    predicted(store, context, {"1": 1})
    submitted(context, "1", annotation=11)
    assert deleted(context, "ANNOTATIONS_DELETED", "annotations", [99]) == {
        "action": "ANNOTATIONS_DELETED", "status": "received", "project": PROJECT, "unconfirmed": 0, "deleted": 0}
    assert state(store)["1/face1"][0] is True


def test_deleted_tasks_and_projects_leave_the_store(context, store):
    predicted(store, context, {"1": 1, "2": 2, "3": 1})
    submitted(context, "1", annotation=11, name="Ada")
    assert deleted(context, "TASKS_DELETED", "tasks", [1, 2])["deleted"] == 2
    assert state(store) == {"3/face1": (False, "Ada")}  # the identity lives on in its other faces
    answer = deleted(context, "PROJECT_DELETED", "tasks", [])  # carries the project, nothing under 'tasks'
    assert answer["deleted"] == 1 and state(store) == {}
    assert store.create_job(PROJECT)[1]


@pytest.mark.parametrize("body, message", [
    ({"action": "ANNOTATIONS_DELETED", "project": {"id": 5}}, "'annotations' must be a list"),
    ({"action": "ANNOTATIONS_DELETED", "project": {"id": 5}, "annotations": [{"id": "x"}]}, "must be a number"),
    ({"action": "ANNOTATIONS_DELETED", "project": {"id": 5}, "annotations": [{}]}, "needs its 'id'"),
    ({"action": "TASKS_DELETED", "tasks": [{"id": 1}]}, "no project id"),
    ({"action": "PROJECT_DELETED"}, "no project id"),
])
def test_malformed_deletions_are_refused_before_anything_changes(context, store, body, message):
    from backend.service.webhooks import WebhookError, handle_event

    predicted(store, context, {"1": 1})
    with pytest.raises(WebhookError, match=message):
        handle_event(context, body)
    assert len(state(store)) == 1
