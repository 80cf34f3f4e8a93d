"""The identity review page: its store operations (on SQLite and PostgreSQL, with descriptors of real photos
from the default models) and its HTTP endpoints (the Flask app with basic auth on, faces stored by /predict
of real photos).

The browser test against a real Label Studio is tests/integration/test_review_page.py.
"""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from backend.storage import AnnotatedFace, cluster_project, review
from backend.storage.faces import sum_array
from backend.storage.review import NOT_A_FACE, NOT_THIS_PERSON, ReviewError
from tests.conftest import PHOTOS as PHOTOS_DIR
from tests.test_identity_store import (  # noqa: F401  (fixtures)
    PHOTOS, dialect, faces_of, new_face, new_project, store, vision)
from tests.test_label_config import SHIPPED

OBAMA = ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg"]


@pytest.fixture
def project(store, faces_of, vision):
    """A project of the six photos' main faces, one task each (task = photo name): Obama's three faces are
    one identity, the three other people one each."""
    project = new_project()
    for photo in PHOTOS:
        store.assign(project, [new_face(faces_of, photo, photo)], "v1", vision.identity_distance)
    return project


def ids(store, project) -> dict[str, str]:
    """photo -> the id its face is shown with."""
    return {task: shown for (task, _), shown in store.shown_ids(project).items()}


def number_of(store, project, photo) -> int:
    [(identity,)] = store._run(store._connection(), "SELECT identity FROM faces WHERE project = ? AND task = ?",
                               (project, photo)).fetchall()
    return identity


class Snapshot:
    """Everything the store holds about the project's faces and identities; equal to another when all is the
    same but the identities' descriptor sums, which need only agree to float32 precision: assign() adds a face's
    descriptor in float64, the store keeps it in float32, and changes made later take that one out."""

    def __init__(self, store, project):
        db = store._connection()
        self.faces = [(*row[:6], bytes(row[6]), bytes(row[7]), row[8], row[9], bool(row[10])) for row in store._run(
            db, "SELECT task, region, x1, y1, x2, y2, landmarks, descriptor, identity, model_version, confirmed "
                "FROM faces WHERE project = ? ORDER BY task, region", (project,)).fetchall()]
        rows = store._run(db, "SELECT identity, name, faces, weight, descriptor_sum FROM identities "
                              "WHERE project = ? ORDER BY identity", (project,)).fetchall()
        self.identities = [(i, name, count, round(weight, 9)) for i, name, count, weight, _ in rows]
        self.sums = [sum_array(total) for *_, total in rows]

    def __eq__(self, other) -> bool:
        return (self.faces, self.identities) == (other.faces, other.identities) and all(
            np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(self.sums, other.sums))

    def __repr__(self) -> str:
        return f"Snapshot(faces={self.faces!r}, identities={self.identities!r})"


snapshot = Snapshot


def confirmed_of(store, project) -> dict[str, bool]:
    return {task: bool(c) for task, c in store._run(store._connection(), "SELECT task, confirmed FROM faces "
                                                                         "WHERE project = ?", (project,)).fetchall()}


# The page's content -------------------------------------------------------------------------------

def test_page_shows_least_certain_identities_first_and_their_least_typical_faces(store, project, faces_of):
    page = review.identity_page(store, project, 0, 10, 12)
    assert (page.total, page.faces) == (4, 6)
    obama = page.identities[0]  # the only identity with faces that differ: the others hold one face each
    assert {f.task for f in obama.shown} == set(OBAMA) and obama.faces == 3 and obama.confirmed == 0
    assert obama.certainty < 1 and all(row.certainty == pytest.approx(1) for row in page.identities[1:])
    # Certainty is the mean similarity of the faces to the centroid, read from the identities table alone.
    descriptors = np.stack([faces_of[photo][2] for photo in OBAMA]).astype(np.float64)
    centroid = descriptors.sum(axis=0) / np.linalg.norm(descriptors.sum(axis=0))
    assert obama.certainty == pytest.approx(float((descriptors @ centroid).mean()), abs=1e-6)
    similarities = [face.similarity for face in obama.shown]
    assert similarities == sorted(similarities) and similarities == pytest.approx(sorted(descriptors @ centroid), abs=1e-6)
    # Each row names its nearest other identity; paging cuts the same order.
    assert all(row.nearest and row.nearest[0] != row.identity for row in page.identities)
    assert [r.identity for r in review.identity_page(store, project, 1, 2, 12).identities] == \
           [r.identity for r in page.identities[1:3]]
    assert len(review.identity_page(store, project, 0, 10, 2).identities[0].shown) == 2
    whole = review.identity_faces(store, project, obama.identity, 1, 5)
    assert [f.task for f in whole.shown] == [f.task for f in obama.shown[1:]]
    with pytest.raises(ReviewError) as error:
        review.identity_faces(store, project, 999, 0, 5)
    assert error.value.status == 404


# Operations and their undo ------------------------------------------------------------------------

def test_rename_names_the_identity_confirms_its_faces_and_is_undone(store, project):
    before = snapshot(store, project)
    obama = number_of(store, project, "obama_1.jpg")
    change = review.rename(store, project, obama, "  Barack Obama ")
    assert sorted(change.tasks) == sorted(OBAMA)
    assert {ids(store, project)[photo] for photo in OBAMA} == {"Barack Obama"}
    assert all(confirmed_of(store, project)[photo] for photo in OBAMA)
    assert not confirmed_of(store, project)["biden.jpg"]
    review.undo(store, project, change.entry)
    assert snapshot(store, project) == before


def test_rename_refusals(store, project):
    obama, biden = number_of(store, project, "obama_1.jpg"), number_of(store, project, "biden.jpg")
    review.rename(store, project, biden, "Joe Biden")
    for name, status in [("Joe Biden", 409), (f"person_{biden}", 400)]:
        with pytest.raises(ReviewError) as error:
            review.rename(store, project, obama, name)
        assert error.value.status == status, name
    with pytest.raises(ReviewError) as error:
        review.rename(store, project, 999, "Nobody")
    assert error.value.status == 404
    # Its own person_N, or nothing, takes the name away.
    review.rename(store, project, biden, f"person_{biden}")
    assert ids(store, project)["biden.jpg"] == f"person_{biden}"


def test_merge_joins_identities_keeps_a_name_and_is_undone(store, project):
    obama, biden, hopper = (number_of(store, project, p) for p in ("obama_1.jpg", "biden.jpg", "grace_hopper.jpg"))
    review.rename(store, project, biden, "Joe Biden")
    before, shown_before = snapshot(store, project), ids(store, project)
    change = review.merge(store, project, [biden, hopper], obama)
    shown = ids(store, project)
    # The merged identity keeps its number and takes the first name it finds: one id on all their faces.
    assert {shown[p] for p in [*OBAMA, "biden.jpg", "grace_hopper.jpg"]} == {"Joe Biden"}
    assert number_of(store, project, "biden.jpg") == obama
    assert sorted(change.tasks) == sorted([*OBAMA, "biden.jpg", "grace_hopper.jpg"])
    assert all(confirmed_of(store, project)[p] for p in [*OBAMA, "biden.jpg", "grace_hopper.jpg"])
    [row] = [r for r in review.identity_page(store, project, 0, 10, 12).identities if r.identity == obama]
    assert (row.faces, row.confirmed) == (5, 5)
    review.undo(store, project, change.entry)
    assert snapshot(store, project) == before and ids(store, project) == shown_before
    with pytest.raises(ReviewError) as error:
        review.merge(store, project, [obama], obama)
    assert error.value.status == 400
    with pytest.raises(ReviewError) as error:
        review.merge(store, project, [999], obama)
    assert error.value.status == 404


def test_move_to_another_or_a_new_identity_and_undo(store, project):
    biden = number_of(store, project, "biden.jpg")
    before = snapshot(store, project)
    to_biden = review.move(store, project, [("obama_2.jpg", "face1")], review.find_identity(store, project, f"person_{biden}"))
    assert number_of(store, project, "obama_2.jpg") == biden and confirmed_of(store, project)["obama_2.jpg"]
    to_new = review.move(store, project, [("obama_2.jpg", "face1"), ("obama_3.jpg", "face1")], None)
    new = number_of(store, project, "obama_2.jpg")
    assert new not in {biden, number_of(store, project, "obama_1.jpg")}
    assert number_of(store, project, "obama_3.jpg") == new and to_new.tasks == ["obama_2.jpg", "obama_3.jpg"]
    # The newest first; undone in that order, all is as before.
    review.undo(store, project, to_new.entry)
    review.undo(store, project, to_biden.entry)
    assert snapshot(store, project) == before
    with pytest.raises(ReviewError) as error:
        review.move(store, project, [("obama_2.jpg", "face9")], biden)
    assert error.value.status == 404


def test_reject_not_a_face_and_not_this_person_and_undo(store, project):
    obama = number_of(store, project, "obama_1.jpg")
    before = snapshot(store, project)
    gone = review.reject(store, project, [("obama_3.jpg", "face1")], NOT_A_FACE)
    assert gone.removed == [("obama_3.jpg", "face1")] and "obama_3.jpg" not in ids(store, project)
    [row] = [r for r in review.identity_page(store, project, 0, 10, 12).identities if r.identity == obama]
    assert row.faces == 2
    elsewhere = review.reject(store, project, [("obama_2.jpg", "face1")], NOT_THIS_PERSON)
    alone = number_of(store, project, "obama_2.jpg")
    assert alone != obama and confirmed_of(store, project)["obama_2.jpg"]
    review.undo(store, project, elsewhere.entry)
    restored = review.undo(store, project, gone.entry)
    assert restored.restored == [("obama_3.jpg", "face1")]
    assert snapshot(store, project) == before  # box, landmarks, descriptor, model version: all back
    with pytest.raises(ReviewError) as error:
        review.reject(store, project, [("obama_2.jpg", "face1")], "blurry")
    assert error.value.status == 400


def test_undo_never_overwrites_a_later_correction(store, project, faces_of, vision):
    obama, biden = number_of(store, project, "obama_1.jpg"), number_of(store, project, "biden.jpg")
    first = review.move(store, project, [("obama_2.jpg", "face1")], biden)
    second = review.move(store, project, [("obama_2.jpg", "face1")], None)
    with pytest.raises(ReviewError) as error:
        review.undo(store, project, first.entry)
    assert error.value.status == 409 and "obama_2.jpg/face1" in str(error.value)
    review.undo(store, project, second.entry)
    with pytest.raises(ReviewError) as error:
        review.undo(store, project, second.entry)
    assert error.value.status == 409 and "already" in str(error.value)
    review.undo(store, project, first.entry)  # what it changed is as it left it again
    assert number_of(store, project, "obama_2.jpg") == obama
    # A name given since is not taken back, nor is an annotator's correction in Label Studio.
    named = review.rename(store, project, obama, "Barack")
    review.rename(store, project, obama, "Barack Obama")
    with pytest.raises(ReviewError) as error:
        review.undo(store, project, named.entry)
    assert error.value.status == 409 and f"the name of identity {obama}" in str(error.value)
    confirmed = review.rename(store, project, biden, "Joe")
    store.learn(project, "biden.jpg", [AnnotatedFace("face1", faces_of["biden.jpg"][0], "Joseph", None)],
                vision.identity_distance)  # a name another identity does not have yet: a new identity of that name
    with pytest.raises(ReviewError) as error:
        review.undo(store, project, confirmed.entry)
    assert error.value.status == 409 and "biden.jpg/face1" in str(error.value)
    with pytest.raises(ReviewError) as error:
        review.undo(store, project, 999)
    assert error.value.status == 404
    assert [(e.operation, e.undone) for e in review.history(store, project, 4)] == [
        ("rename", False), ("rename", False), ("rename", False), ("move", True)]


def test_corrections_stay_through_a_recluster(store, project, vision):
    """A face the review page moved is confirmed: re-clustering the project does not take it back."""
    review.move(store, project, [("biden.jpg", "face1")], number_of(store, project, "grace_hopper.jpg"))
    moved = number_of(store, project, "biden.jpg")
    before = store.faces(project)
    assert store.relabel(project, before, cluster_project(before.descriptors, vision.identity_distance))["clusters"] == 4
    assert number_of(store, project, "biden.jpg") == moved


def test_find_identity(store, project):
    biden = number_of(store, project, "biden.jpg")
    review.rename(store, project, biden, "Joe Biden")
    assert {review.find_identity(store, project, text) for text in ("Joe Biden", f"person_{biden}", str(biden))} == {biden}
    for text in ("Nobody", "person_999", "999"):
        with pytest.raises(ReviewError):
            review.find_identity(store, project, text)


# Thumbnails ---------------------------------------------------------------------------------------

def read_photo(photos, name) -> np.ndarray:
    with Image.open(photos / name) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_face_thumbnails_are_the_faces(photos, faces_truth):
    pixels = read_photo(photos, "obama_1.jpg")
    box = np.array(faces_truth["obama_1.jpg"]["faces"][0]["box"], dtype=float)
    height, width = pixels.shape[:2]
    corner = np.array([-40.0, -40.0, 60.0, 60.0])  # mostly outside the image
    face, outside = (decode(jpeg) for jpeg in review.face_thumbnails(pixels, np.stack([box, corner]), 64))
    assert face.shape == outside.shape == (64, 64, 3)
    # The face's square, straight from the photo, looks like the thumbnail (JPEG loses a little).
    side = max(box[2] - box[0], box[3] - box[1]) * review.THUMBNAIL_MARGIN
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x1, y1 = int(round(cx - side / 2)), int(round(cy - side / 2))
    assert 0 <= x1 and 0 <= y1 and x1 + side <= width and y1 + side <= height
    expected = cv2.resize(pixels[y1: y1 + int(round(side)), x1: x1 + int(round(side))], (64, 64),
                          interpolation=cv2.INTER_AREA)
    assert np.abs(face.astype(int) - expected).mean() < 6
    assert np.abs(face.astype(int) - decode(review.face_thumbnails(pixels, corner[None], 64)[0])).mean() > 30
    # Outside the image is black; the image's corner is where it should be.
    assert outside[:20, :20].max() < 30 and outside[45:, 45:].mean() > 30


def test_thumbnails_follow_their_faces(store, project, photos, faces_of, vision):
    pixels = read_photo(photos, "obama_1.jpg")
    jpegs = review.face_thumbnails(pixels, np.stack([faces_of["obama_1.jpg"][0], [0, 0, 50, 50]]), 64)
    review.save_thumbnails(store, project, {("obama_1.jpg", "face1"): jpegs[0]})
    assert review.thumbnail(store, project, "obama_1.jpg", "face1") == jpegs[0]
    assert review.thumbnail(store, project, "obama_1.jpg", "face2") is None
    shown = review.identity_page(store, project, 0, 10, 12).identities[0].shown
    assert {f.task: f.thumbnail for f in shown} == {"obama_1.jpg": True, "obama_2.jpg": False, "obama_3.jpg": False}
    # A confirmed face keeps its thumbnail when its task is predicted again; a face the task no longer has
    # loses its thumbnail.
    review.rename(store, project, number_of(store, project, "obama_1.jpg"), "Barack Obama")
    review.save_thumbnails(store, project, {("obama_1.jpg", "face1"): jpegs[1], ("obama_1.jpg", "face2"): jpegs[1]})
    assert review.thumbnail(store, project, "obama_1.jpg", "face1") == jpegs[0]
    assert review.thumbnail(store, project, "obama_1.jpg", "face2") is None  # the store holds no face2 there
    store.assign(project, [new_face(faces_of, "biden.jpg", "biden.jpg")], "v1", vision.identity_distance)
    review.save_thumbnails(store, project, {("biden.jpg", "face1"): jpegs[1]})
    review.save_thumbnails(store, project, {("biden.jpg", "face1"): jpegs[0]})
    assert review.thumbnail(store, project, "biden.jpg", "face1") == jpegs[0]


# The HTTP endpoints -------------------------------------------------------------------------------

USER, PASSWORD = "lead", "correct horse battery staple"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CSRF = {"X-Requested-With": "autoannotator-review"}
HTTP_PROJECT = "7"
HTTP_PHOTOS = [*OBAMA, "biden.jpg", "grace_hopper.jpg", "street_bus.jpg"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The backend with basic auth on, its store filled by /predict of real photos (which keeps thumbnails)."""
    from backend.config import Settings
    from backend.service.app import CONTEXT, create_app

    # (AUTO_RECLUSTER off: a re-clustering job started by /predict would be a job of the project, which the
    # operations tested here refuse to overlap, and test_auto_recluster.py tests it.)
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data"), local_files_root=PHOTOS_DIR,
                              basic_auth_user=USER, basic_auth_pass=PASSWORD, auto_recluster=0))
    app.testing = True
    client = app.test_client()
    tasks = [{"id": 100 + i, "data": {"image": str(PHOTOS_DIR / photo)}} for i, photo in enumerate(HTTP_PHOTOS)]
    response = client.post("/predict", json={"tasks": tasks, "label_config": SHIPPED, "project": f"{HTTP_PROJECT}.1"},
                           headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    app.predictions = dict(zip(HTTP_PHOTOS, response.get_json()["results"]))
    app.store = app.extensions[CONTEXT].store
    return app


def task_of(photo: str) -> str:
    return str(100 + HTTP_PHOTOS.index(photo))


def identity_text(prediction: dict, region: str = "face1") -> str:
    [text] = [r["value"]["text"][0] for r in prediction["result"] if r["id"] == region and r["type"] == "textarea"]
    return text


def post(client, operation: str, data: dict, headers=None):
    return client.post(f"/identities/{operation}", data={"project": HTTP_PROJECT, **data},
                       headers={**AUTH, **CSRF} if headers is None else headers)


@pytest.mark.parametrize("method, path", [
    ("GET", f"/identities?project={HTTP_PROJECT}"),
    ("GET", f"/identities/1?project={HTTP_PROJECT}"),
    ("GET", f"/identities/thumbnails/100/face1?project={HTTP_PROJECT}"),
    ("GET", "/identities/static/review.js"),
    *[("POST", f"/identities/{operation}") for operation in ("rename", "merge", "move", "reject", "undo")],
])
def test_every_review_route_needs_basic_auth(app, method, path):
    client = app.test_client()
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()}):
        response = client.open(path, method=method, headers={**CSRF, **headers},
                               data={"project": HTTP_PROJECT, "identity": "1", "name": "x"})
        assert response.status_code == 401, (path, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.open(path, method=method, headers={**CSRF, **AUTH}).status_code not in (401, 404, 405)


def test_operations_need_the_pages_own_header_and_origin(app):
    client = app.test_client()
    before = app.store.shown_ids(HTTP_PROJECT)
    number = number_of(app.store, HTTP_PROJECT, task_of("biden.jpg"))
    for headers in (AUTH, {**AUTH, **CSRF, "Origin": "https://evil.example"}):
        response = post(client, "rename", {"identity": number, "name": "Forged"}, headers)
        assert response.status_code == 403, response.get_data(as_text=True)
        assert "Traceback" not in response.get_data(as_text=True)
    assert app.store.shown_ids(HTTP_PROJECT) == before
    # From the page's own origin it goes through (and is undone).
    response = post(client, "rename", {"identity": number, "name": "Joe"}, {**AUTH, **CSRF, "Origin": "http://localhost"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert post(client, "undo", {"entry": response.get_json()["entry"]}).status_code == 200


def test_the_page_lists_identities_with_thumbnails(app):
    client = app.test_client()
    response = client.get(f"/identities?project={HTTP_PROJECT}", headers=AUTH)
    assert response.status_code == 200 and response.content_type.startswith("text/html")
    html = response.get_data(as_text=True)
    page = review.identity_page(app.store, HTTP_PROJECT, 0, 50, 12)
    # Every identity, in the page's order (least certain first), each with its thumbnails.
    positions = [html.index(f'data-identity="{row.identity}"') for row in page.identities]
    assert positions == sorted(positions) and len(positions) == page.total >= 4
    first = page.identities[0]
    assert {f.task for f in first.shown} == {task_of(p) for p in OBAMA}
    thumbnail = f"/identities/thumbnails/{task_of('obama_1.jpg')}/face1?project={HTTP_PROJECT}"
    assert thumbnail in html
    image = client.get(thumbnail, headers=AUTH)
    assert image.content_type == "image/jpeg" and decode(image.data).shape == (64, 64, 3)
    assert client.get(thumbnail, headers={**AUTH, "If-None-Match": image.headers["ETag"]}).status_code == 304
    # A face without a thumbnail (THUMBNAILS off when it was stored) gets a placeholder.
    app.store._run(app.store._connection(), "DELETE FROM thumbnails WHERE project = ? AND task = ?",
                   (HTTP_PROJECT, task_of("biden.jpg")))
    html = client.get(f"/identities?project={HTTP_PROJECT}", headers=AUTH).get_data(as_text=True)
    assert f"/identities/thumbnails/{task_of('biden.jpg')}/" not in html and "no image" in html
    assert client.get(f"/identities/thumbnails/{task_of('biden.jpg')}/face1?project={HTTP_PROJECT}",
                      headers=AUTH).status_code == 404
    # An identity's own page, and a project the store does not know.
    own = client.get(f"/identities/{first.identity}?project={HTTP_PROJECT}", headers=AUTH)
    assert own.status_code == 200 and f"/identities/thumbnails/{task_of('obama_2.jpg')}/face1" in own.get_data(as_text=True)
    assert client.get(f"/identities/99999?project={HTTP_PROJECT}", headers=AUTH).status_code == 404
    empty = client.get("/identities?project=12345", headers=AUTH)
    assert empty.status_code == 200 and "holds no faces of project 12345" in empty.get_data(as_text=True)
    for bad in ("/identities", f"/identities?project={HTTP_PROJECT}&page=0", f"/identities?project={HTTP_PROJECT}&page=x"):
        response = client.get(bad, headers=AUTH)
        assert response.status_code == 400 and "Traceback" not in response.get_data(as_text=True), bad


def test_operations_over_http(app):
    client = app.test_client()
    store = app.store
    obama, biden = number_of(store, HTTP_PROJECT, task_of("obama_1.jpg")), number_of(store, HTTP_PROJECT, task_of("biden.jpg"))
    before = snapshot(store, HTTP_PROJECT)
    merged = post(client, "merge", {"identities": [biden], "into": obama})
    assert merged.status_code == 200, merged.get_data(as_text=True)
    answer = merged.get_json()
    assert answer["tasks"] == 4 and answer["label_studio"] == "not updated: LABEL_STUDIO_URL is not set"
    assert number_of(store, HTTP_PROJECT, task_of("biden.jpg")) == obama
    moved = post(client, "move", {"task": task_of("biden.jpg"), "region": "face1", "to": "new"}).get_json()
    renamed = post(client, "rename", {"identity": obama, "name": "Barack Obama"}).get_json()
    again = post(client, "move", {"task": task_of("obama_3.jpg"), "region": "face1", "to": "Barack Obama"})
    assert again.status_code == 200 and number_of(store, HTTP_PROJECT, task_of("obama_3.jpg")) == obama
    rejected = post(client, "reject", {"task": task_of("obama_2.jpg"), "region": "face1", "reason": NOT_A_FACE}).get_json()
    history = client.get(f"/identities?project={HTTP_PROJECT}", headers=AUTH).get_data(as_text=True)
    assert rejected["summary"] in history and f'data-entry="{rejected["entry"]}"' in history
    for entry in (rejected, again.get_json(), renamed, moved, answer):
        response = post(client, "undo", {"entry": entry["entry"]})
        assert response.status_code == 200, response.get_data(as_text=True)
    assert snapshot(store, HTTP_PROJECT) == before
    for operation, data, status in [
        ("merge", {"identities": [biden], "into": "x"}, 400),
        ("merge", {"identities": [99999], "into": obama}, 404),
        ("move", {"task": task_of("biden.jpg"), "region": "face1"}, 400),
        ("move", {"task": task_of("biden.jpg"), "region": "face1", "to": "Nobody"}, 404),
        ("move", {"task": task_of("biden.jpg"), "to": "new"}, 400),
        ("reject", {"task": task_of("biden.jpg"), "region": "face1", "reason": "blurry"}, 400),
        ("rename", {"identity": biden, "name": "x" * 1000}, 400),
        ("undo", {"entry": answer["entry"]}, 409),
    ]:
        response = post(client, operation, data)
        assert response.status_code == status, (operation, data, response.get_data(as_text=True))
        assert "Traceback" not in response.get_data(as_text=True) and response.get_json()["detail"]
    assert snapshot(store, HTTP_PROJECT) == before


def test_no_operation_overlaps_a_running_job(app):
    client = app.test_client()
    store = app.store
    before = snapshot(store, HTTP_PROJECT)
    job, new = store.create_job(HTTP_PROJECT)  # a re-clustering of the project, say
    assert new
    try:
        response = post(client, "move", {"task": task_of("biden.jpg"), "region": "face1", "to": "new"})
        assert response.status_code == 409 and f"busy with job {job}" in response.get_json()["detail"]
        assert snapshot(store, HTTP_PROJECT) == before
        assert client.get(f"/identities/jobs/{job}", headers=AUTH).get_json()["status"] == "queued"
        assert client.get(f"/identities/jobs/{job}").status_code == 401
    finally:
        store.update_job(job, "done", 1.0)
    assert client.get("/identities/jobs/0123456789ab", headers=AUTH).status_code == 404
    # The operation's own job ends with it, refused or done; the next one goes through.
    assert post(client, "move", {"task": task_of("biden.jpg"), "region": "face1", "to": "Nobody"}).status_code == 404
    moved = post(client, "move", {"task": task_of("biden.jpg"), "region": "face1", "to": "new"})
    assert moved.status_code == 200, moved.get_data(as_text=True)
    assert post(client, "undo", {"entry": moved.get_json()["entry"]}).status_code == 200
    assert snapshot(store, HTTP_PROJECT) == before


def test_rejected_faces_leave_the_prediction_and_come_back(app):
    """The edits the page hands to push_predictions, on a real prediction: a rejected face's box, identity
    and landmarks leave it, and undo puts exactly those back."""
    from backend.service.review import _put_back, _take_out

    task = task_of("street_bus.jpg")
    result = app.predictions["street_bus.jpg"]["result"]
    faces = [r["id"] for r in result if r["type"] == "rectanglelabels" and r["value"]["rectanglelabels"] == ["Face"]]
    assert len(faces) >= 2
    removed: dict = {}
    kept = _take_out([(task, faces[0])], removed)(task, result)
    gone = removed[task]
    assert {r["type"] for r in gone} == {"rectanglelabels", "textarea", "keypointlabels"}
    assert len([r for r in gone if r["type"] == "keypointlabels"]) == 5
    assert all(r["id"] != faces[0] and r.get("parentID") != faces[0] for r in kept)
    assert len(kept) + len(gone) == len(result) and any(r["id"] == faces[1] for r in kept)
    assert _take_out([(task, faces[0])], {})("another task", result) == result
    back = _put_back(removed)(task, kept)
    assert sorted(map(str, back)) == sorted(map(str, result))
    assert _put_back(removed)(task, back) == back  # what is there already is not added twice
