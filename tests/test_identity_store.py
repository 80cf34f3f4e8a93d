"""Project-wide identities in the face store, on SQLite and on PostgreSQL.

The store on its own with descriptors of real photos from the default models, and the whole backend as
Label Studio uses it: `autoannotator serve` (gunicorn) in a subprocess, its /predict, /webhook and
/recluster, killed with SIGKILL and restarted, and eight requests at once.

The PostgreSQL variants start their own server (tests/integration/start_postgres.sh, Debian's postgresql
package); when it cannot start, they fail and say why.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from backend.config import Settings
from backend.storage import AnnotatedFace, FaceStore, NewFace, cluster_project
from backend.storage import identities as identity_math
from backend.storage import vector_index
from backend.storage.faces import sum_array
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect
from backend.vision.clustering import cluster_identities
from tests.integration.label_studio import tail
from tests.conftest import Backend, LoopbackServer
from tests.test_label_config import SHIPPED

REPO_ROOT = Path(__file__).resolve().parent.parent
DIALECTS = ["sqlite", "postgresql"]
PHOTOS = ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "biden.jpg", "grace_hopper.jpg",
          "astronaut_eileen_collins.jpg"]
PERSON_ID = re.compile(r"person_\d+")
_project_numbers = itertools.count(1000 + os.getpid() % 1000 * 1000)


def new_project() -> str:
    """A project id of its own for each test: the PostgreSQL server is shared by the whole session."""
    return str(next(_project_numbers))


# Fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(params=DIALECTS)
def dialect(request):
    return request.param


@pytest.fixture
def store(dialect, tmp_path, request):
    return open_store(dialect, tmp_path, request)


def open_store(dialect, tmp_path, request) -> FaceStore:
    """A FaceStore on the test's database: each one has its own vector indexes, as each replica does."""
    if dialect == "sqlite":
        return FaceStore(SQLiteDialect(tmp_path / "faces.sqlite3"))
    return FaceStore(PostgreSQLDialect(request.getfixturevalue("postgres_url")))


@pytest.fixture(scope="module")
def vision():
    from backend.vision.annotator import Annotator

    return Annotator.from_settings(Settings())


@pytest.fixture(scope="module")
def faces_of(vision, photos, faces_truth):
    """Each photo's main face (the one in faces.json) as the default models see it: (box, landmarks, descriptor)."""
    found = {}
    for name in PHOTOS:
        with Image.open(photos / name) as image:
            annotation = vision.annotate(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
        truth = np.array(faces_truth[name]["faces"][0]["box"], dtype=float)
        centres = (annotation.faces.boxes[:, :2] + annotation.faces.boxes[:, 2:]) / 2
        [main] = np.flatnonzero(((centres >= truth[:2]) & (centres <= truth[2:])).all(axis=1))
        found[name] = (annotation.faces.boxes[main], annotation.faces.landmarks[main], annotation.descriptors[main])
    return found


def new_face(faces_of, photo, task, group=0, region="face1") -> NewFace:
    box, landmarks, descriptor = faces_of[photo]
    return NewFace(task, region, box, landmarks, descriptor, group)


# The store on its own -----------------------------------------------------------------------------

def test_same_person_in_separate_requests_gets_the_same_id(store, faces_of, vision):
    project = new_project()
    threshold = vision.identity_distance
    ids = {photo: store.assign(project, [new_face(faces_of, photo, f"task-{photo}")], "v1", threshold)[0]
           for photo in PHOTOS}
    assert all(PERSON_ID.fullmatch(i) for i in ids.values()), ids
    assert ids["obama_1.jpg"] == ids["obama_2.jpg"] == ids["obama_3.jpg"]
    others = [ids[p] for p in ("obama_1.jpg", "biden.jpg", "grace_hopper.jpg", "astronaut_eileen_collins.jpg")]
    assert len(set(others)) == 4
    # Predicting a task again replaces its faces rather than adding to them, and keeps their ids, also
    # of a person seen in that task only.
    assert store.assign(project, [new_face(faces_of, "obama_2.jpg", "task-obama_1.jpg")], "v1",
                        threshold) == [ids["obama_1.jpg"]]
    assert store.assign(project, [new_face(faces_of, "biden.jpg", "task-biden.jpg")], "v1",
                        threshold) == [ids["biden.jpg"]]
    assert len(store.faces(project).tasks) == len(PHOTOS)
    assert sorted(ids.values()) == [f"person_{n}" for n in (1, 1, 1, 2, 3, 4)]  # numbered as they came
    # Another project keeps its own numbering.
    assert store.assign(new_project(), [new_face(faces_of, "biden.jpg", "t")], "v1", threshold) == ["person_1"]


def test_annotators_corrections(store, faces_of, vision):
    project, threshold = new_project(), vision.identity_distance
    for photo in PHOTOS[:4]:
        store.assign(project, [new_face(faces_of, photo, photo)], "v1", threshold)
    shown = store.shown_ids(project)
    obama, biden = shown[("obama_1.jpg", "face1")], shown[("biden.jpg", "face1")]

    def learn(task, name, photo=None, region="face1", descriptor=None):
        faces = [] if photo is None else [AnnotatedFace(region, faces_of[photo][0], name, descriptor)]
        return store.learn(project, task, faces, threshold)

    # A name given to one face names its identity: all of its faces, and the next ones.
    assert learn("obama_1.jpg", "Barack Obama", "obama_1.jpg")["renamed"] == 1
    assert {store.shown_ids(project)[(p, "face1")] for p in PHOTOS[:3]} == {"Barack Obama"}
    assert store.assign(project, [new_face(faces_of, "obama_3.jpg", "new")], "v1", threshold) == ["Barack Obama"]
    # The person_N a face was shown with confirms it; a name of another identity moves the face there.
    assert learn("biden.jpg", biden, "biden.jpg")["moved"] == 0
    assert learn("obama_2.jpg", biden, "obama_2.jpg")["moved"] == 1
    assert store.shown_ids(project)[("obama_2.jpg", "face1")] == biden
    # A box deleted from the annotation leaves the store.
    assert learn("obama_3.jpg", None)["deleted"] == 1
    assert ("obama_3.jpg", "face1") not in store.shown_ids(project)
    # A box drawn by hand joins the nearest identity with its descriptor, confirmed.
    drawn = learn("grace", None, "obama_3.jpg", region="hand1", descriptor=faces_of["obama_3.jpg"][2])
    assert drawn["added"] == 1
    assert store.shown_ids(project)[("grace", "hand1")] == "Barack Obama"
    faces = store.faces(project)
    confirmed = dict(zip(zip(faces.tasks, faces.regions), faces.confirmed))
    assert confirmed[("grace", "hand1")] and confirmed[("obama_1.jpg", "face1")] and not confirmed[("new", "face1")]
    # person_<N> cannot be taken as a name: it always means identity N.
    learn("biden.jpg", "person_999", "biden.jpg")
    assert store.shown_ids(project)[("biden.jpg", "face1")] == biden
    assert obama != biden


def test_concurrent_assignments_found_one_identity(store, faces_of, vision):
    """Eight threads, each with its own database connection, store the same person at once."""
    project = new_project()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: store.assign(project, [new_face(faces_of, "obama_1.jpg", f"t{n}")], "v1",
                                                   vision.identity_distance)[0], range(8)))
    assert ids == ["person_1"] * 8
    faces = store.faces(project)
    assert sorted(faces.tasks) == [f"t{n}" for n in range(8)] and set(faces.identities) == {1}


def test_recluster_keeps_ids_and_mends_a_split(store, faces_of, vision):
    project, threshold = new_project(), vision.identity_distance
    for photo in PHOTOS:
        store.assign(project, [new_face(faces_of, photo, photo)], "v1", threshold)
    before = store.shown_ids(project)
    faces = store.faces(project)
    result = store.relabel(project, faces, cluster_project(faces.descriptors, threshold))
    assert result["moved"] == 0 and store.shown_ids(project) == before

    # One request whose clustering split a person: the two groups cannot both join Obama's identity, so
    # one founds a new identity. Re-clustering puts both back under Obama's number.
    split = [new_face(faces_of, "obama_2.jpg", "split", group=0, region="face1"),
             new_face(faces_of, "obama_3.jpg", "split", group=1, region="face2")]
    ids = store.assign(project, split, "v1", threshold)
    assert before[("obama_1.jpg", "face1")] in ids and len(set(ids)) == 2
    faces = store.faces(project)
    result = store.relabel(project, faces, cluster_project(faces.descriptors, threshold))
    after = store.shown_ids(project)
    assert result["moved"] == 1
    assert after[("split", "face1")] == after[("split", "face2")] == before[("obama_1.jpg", "face1")]
    assert {k: v for k, v in after.items() if k[0] != "split"} == before


def test_cluster_project_equals_one_global_clustering(monkeypatch):
    """Clustering linked groups separately gives the global average-linkage clusters; a group over the
    size limit is cut first rather than exhausting memory."""
    rng = np.random.default_rng(0)
    # 20 pairs of look-alike people (centres ~0.06 apart), faces ~0.03 from their person: close pairs link
    # each pair of people into one group, which average linkage must still split in two.
    base = identity_math.unit(rng.normal(size=(20, 128)))
    centres = identity_math.unit(np.concatenate([base, base + 0.35 * identity_math.unit(rng.normal(size=(20, 128)))]))
    members = rng.integers(0, 40, 600)
    descriptors = identity_math.unit(centres[members] + rng.normal(scale=0.18 / np.sqrt(128), size=(600, 128)))
    descriptors = descriptors.astype(np.float32)
    different = members[:, None] != members[None, :]
    assert (1 - descriptors @ descriptors.T)[different].min() < 0.075  # people are linked by close pairs
    expected = cluster_identities(descriptors, 0.075)
    got = cluster_project(descriptors, 0.075)
    assert _same_partition(got, expected) and len(set(got)) == 40

    monkeypatch.setattr(identity_math, "MAX_EXACT_GROUP", 10)
    capped = cluster_project(descriptors, 0.075)
    assert np.bincount(capped).max() <= 10
    assert all(len(set(members[capped == label])) == 1 for label in np.unique(capped))  # no people mixed


def test_replicas_see_each_others_faces(dialect, tmp_path, request, faces_of, vision):
    """Two stores on one database, as two replicas: each one's vector index catches up on the faces the
    other stored, and drops the faces the other deleted."""
    first, second = open_store(dialect, tmp_path, request), open_store(dialect, tmp_path, request)
    project, threshold = new_project(), vision.identity_distance

    def assign(store, photo, task):
        return store.assign(project, [new_face(faces_of, photo, task)], "v1", threshold)[0]

    obama = assign(first, "obama_1.jpg", "a")
    assert assign(second, "obama_2.jpg", "b") == obama
    biden = assign(second, "biden.jpg", "c")
    assert assign(first, "biden.jpg", "d") == biden != obama
    first.forget_tasks(project, ["a", "b"])
    # Obama's faces are gone: the second store's index still held them, its search found them, and the
    # database said they no longer exist. His next face founds a new identity.
    assert assign(second, "obama_3.jpg", "e") not in (obama, biden)
    [index] = [index for (indexed, _), index in second._indexes.items() if indexed == project]
    assert len(index) == 2  # Biden's two faces (the new one joins at its next catch-up)


def test_votes_of_the_nearest_faces():
    """identities.match_groups on hand-made neighbours (identity, weight, distance), threshold 0.1."""
    none = (-1, 1.0, np.inf)

    def match(*faces, groups=None, thresholds=(0.1,)):
        width = max(len(f) for f in faces)
        table = np.array([list(f) + [none] * (width - len(f)) for f in faces], dtype=object)
        identities, weights, distances = (np.array(table[:, :, i].tolist(), dtype=float) for i in range(3))
        return identity_math.match_groups(np.array(groups or range(len(faces))), np.array(thresholds, float),
                                          identities.astype(np.int64), weights, distances)

    # A lone look-alike face within the threshold does not pull in a face that the rest of its person is
    # far from: the mean distance to the person's nearby faces decides.
    joined, distance = match([(7, 1.0, 0.05), (7, 1.0, 0.18), (7, 1.0, 0.18), (7, 1.0, 0.18)])
    assert joined.tolist() == [-1] and distance == pytest.approx([(0.05 + 0.18 + 0.18) / 3])
    assert match([(7, 1.0, 0.05), (7, 1.0, 0.09)])[0].tolist() == [7]
    # Only an identity's VOTERS_PER_IDENTITY faces nearest the face count: a person's other looks do not.
    assert identity_math.VOTERS_PER_IDENTITY == 3
    assert match([(4, 1.0, 0.02), (4, 1.0, 0.3), (4, 1.0, 0.04), (4, 1.0, 0.3), (4, 1.0, 0.06)])[0].tolist() == [4]
    # Confirmed faces weigh CONFIRMED_WEIGHT times as much.
    assert match([(3, 1.0, 0.06), (3, 1.0, 0.14)])[0].tolist() == [-1]
    joined, distance = match([(3, identity_math.CONFIRMED_WEIGHT, 0.06), (3, 1.0, 0.14)])
    assert joined.tolist() == [3] and distance == pytest.approx([0.076])
    # Two groups of one request are two people: the closer one gets the identity both want.
    joined, _ = match([(5, 1.0, 0.03)], [(5, 1.0, 0.05), (6, 1.0, 0.08)], thresholds=(0.1, 0.1))
    assert joined.tolist() == [5, 6]
    # A group's faces vote together.
    assert match([(5, 1.0, 0.02)], [(5, 1.0, 0.16)], groups=[0, 0])[0].tolist() == [5]
    # No stored face: a new person, nothing near.
    joined, distance = match([none])
    assert joined.tolist() == [-1] and distance.tolist() == [np.inf]
    # A blurred stored face's vote weighs its quality: the sharp face's distance decides.
    sharp, blurred = identity_math.vote_weights([False, False], [1.0, 0.05])
    assert match([(9, 1.0, 0.05), (9, 1.0, 0.2)])[0].tolist() == [-1]
    assert match([(9, sharp, 0.05), (9, blurred, 0.2)])[0].tolist() == [9]
    # The confidence: the face's quality times how clearly the vote decided.
    confidence = identity_math.assignment_confidence(np.array([1.0, 1.0, 1.0, 0.4]), np.array([0.0, 0.1, np.inf, 0.0]),
                                                     np.full(4, 0.1), np.array([3, 3, -1, 3]))
    assert confidence.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.4])


@pytest.mark.parametrize("dim", [128, 1152])  # dlib's alone; the default's, searched by principal components
def test_the_index_is_exact_then_inverted(monkeypatch, tmp_path, dim):
    """Below EXACT_UP_TO faces the index searches exactly; above, its inverted lists find the faces near
    each query as exact search does (long descriptors: by their principal components, their similarities
    measured on the whole ones), written to its file and read back it answers the same, and removed faces
    are never found again."""
    monkeypatch.setattr(vector_index, "EXACT_UP_TO", 1500)
    monkeypatch.setattr(vector_index, "LISTS", 32)
    monkeypatch.setattr(vector_index, "TRAINING_SAMPLE", 1500)
    monkeypatch.setattr(vector_index, "REDUCED_FROM", 500)
    descriptors, _ = synthetic_faces(np.random.default_rng(1), people=400, faces=4000, dim=dim)
    queries = descriptors[::50]
    exact = 1.0 - queries @ descriptors.T
    index = vector_index.FaceIndex(descriptors.shape[1])
    for start in range(0, len(descriptors), 1000):
        index.add(np.arange(start, start + 1000) * 3, descriptors[start:start + 1000])
        if start == 0:  # (long descriptors: their principal components, searched exactly)
            assert not index._inverted and (index._whole is not None) == (dim > vector_index.SEARCHED_DIM)
            assert _near_recall(index, queries, exact[:, :1000]) == 1.0
    assert len(index) == 4000 and index._inverted
    assert (index._whole is not None) == (dim > vector_index.SEARCHED_DIM)
    assert _near_recall(index, queries, exact) >= 0.99
    ids, similarities = index.search(queries, 10)
    assert similarities == pytest.approx(1.0 - np.take_along_axis(exact, ids // 3, axis=1), abs=2e-3)  # (float16)

    cache = vector_index.IndexCache(tmp_path, 2**30)
    cache._write("7", index)
    read = cache._read("7", dim)
    assert (read._whole is not None) == (index._whole is not None)
    assert [a.tolist() for a in read.search(queries, 10)] == [ids.tolist(), similarities.tolist()]

    index.remove(np.arange(0, 12000, 6))  # every other face
    ids, _ = index.search(queries, 10)
    assert len(index) == 2000 and not (ids[ids >= 0] % 6 == 0).any()


def test_a_store_from_before_face_ids_numbers_its_faces(store, faces_of, vision):
    project, threshold = new_project(), vision.identity_distance
    obama = store.assign(project, [new_face(faces_of, "obama_1.jpg", "a")], "v1", threshold)
    store.assign(project, [new_face(faces_of, "biden.jpg", "b")], "v1", threshold)
    db = store.dialect.connect()
    for statement in ("DROP INDEX faces_by_id", "DROP INDEX faces_by_project_id", "ALTER TABLE faces DROP COLUMN id",
                      "ALTER TABLE faces DROP COLUMN quality", "DELETE FROM face_sequence"):
        db.execute(statement)
    db.close()
    reopened = FaceStore(store.dialect)
    assert reopened.assign(project, [new_face(faces_of, "obama_2.jpg", "c")], "v1", threshold) == obama
    ids = reopened._run(reopened._connection(), "SELECT task, id FROM faces WHERE project = ? ORDER BY id",
                        (project,)).fetchall()
    assert [task for task, _ in ids] == ["a", "b", "c"] and len({face_id for _, face_id in ids}) == 3


def synthetic_faces(rng, people: int, faces: int, dim: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Unit descriptors: each face its person's random direction plus noise (~0.03 apart)."""
    centres = identity_math.unit(rng.normal(size=(people, dim)))
    members = rng.integers(0, people, faces)
    noise = rng.normal(scale=0.18 / np.sqrt(dim), size=(faces, dim))
    return identity_math.unit(centres[members] + noise).astype(np.float32), members


def _near_recall(index, queries, exact_distances, k=10, radius=0.2) -> float:
    """Of each query's k exactly nearest faces closer than `radius`, the share the index found."""
    ids, _ = index.search(queries, k)
    nearest = np.argsort(exact_distances, axis=1)[:, :k]
    wanted = [set((row[exact_distances[q, row] < radius] * 3).tolist()) for q, row in enumerate(nearest)]
    return sum(len(w & set(found.tolist())) for w, found in zip(wanted, ids)) / sum(len(w) for w in wanted)


def _same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# The backend as Label Studio uses it --------------------------------------------------------------

def backend_env(state_dir: Path, dialect: str, request, **extra) -> dict:
    env = dict(os.environ, DATA_DIR=str(state_dir / "data"), LOG_LEVEL="INFO", **extra)
    env.pop("DATABASE_URL", None)
    if dialect == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return env


@pytest.fixture(scope="module", params=DIALECTS)
def backend(request, tmp_path_factory):
    """Two workers with four threads each, as a deployment that serves several annotators would run."""
    state_dir = tmp_path_factory.mktemp(f"backend-{request.param}")
    label_studio = FakeLabelStudio()
    env = backend_env(state_dir, request.param, request, WORKERS="2", THREADS="4",
                      LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY="legacy-token")
    server = Backend(state_dir, env).start()
    server.label_studio = label_studio
    yield server
    server.kill(signal.SIGTERM)
    label_studio.close()
    print(f"--- backend log ---\n{tail(server.log_path, 60)}")


def identity_of(prediction: dict) -> str:
    """The identity text of the prediction's only face."""
    [text] = [r["value"]["text"][0] for r in prediction["result"] if r["type"] == "textarea"]
    return text


def annotation_from(prediction: dict, task_id: int, photos_dir: Path, project: str, name: str | None = None,
                    action="ANNOTATION_CREATED") -> dict:
    """The webhook Label Studio sends when an annotator submits the prediction, with `name` typed as identity."""
    result = json.loads(json.dumps(prediction["result"]))
    if name is not None:
        for region in result:
            if region["type"] == "textarea":
                region["value"]["text"] = [name]
    return {"action": action, "annotation": {"id": task_id * 10, "result": result, "was_cancelled": False},
            "task": {"id": task_id, "data": {"image": str(photos_dir / "x")}, "project": int(project)},
            "project": {"id": int(project), "label_config": SHIPPED}}


def test_same_person_across_requests_and_renames(backend, photos, faces_truth):
    project = new_project()
    [o1] = backend.predict(project, photos, [(1, "obama_1.jpg")])
    [o2, b] = backend.predict(project, photos, [(2, "obama_2.jpg"), (3, "biden.jpg")])
    assert identity_of(o1) == identity_of(o2) != identity_of(b)
    assert PERSON_ID.fullmatch(identity_of(o1))

    response = backend.webhook(annotation_from(o1, 1, photos, project, name="Barack Obama"))
    assert response.status_code == 201 and response.json()["renamed"] == 1, response.text
    [o3, b2] = backend.predict(project, photos, [(4, "obama_3.jpg"), (5, "biden.jpg")])
    assert identity_of(o3) == "Barack Obama" and identity_of(b2) == identity_of(b)

    # A face box drawn by hand, named: its descriptor comes from the task's image, and the name sticks.
    box = faces_truth["biden.jpg"]["faces"][0]["box"]
    with Image.open(photos / "biden.jpg") as image:
        width, height = ImageOps.exif_transpose(image).size
    boxes = re.search(r'<RectangleLabels name="([^"]+)"', SHIPPED).group(1)  # the shipped config's face boxes
    drawn = {"id": "hand1", "type": "rectanglelabels", "from_name": boxes, "to_name": "image",
             "original_width": width, "original_height": height,
             "value": {"x": box[0] / width * 100, "y": box[1] / height * 100,
                       "width": (box[2] - box[0]) / width * 100, "height": (box[3] - box[1]) / height * 100,
                       "rectanglelabels": ["Face"]}}
    named = {**drawn, "type": "textarea", "from_name": "identity", "value": {**drawn["value"], "text": ["Joe Biden"]}}
    body = annotation_from({"result": [drawn, named]}, 6, photos, project)
    body["task"]["data"]["image"] = str(photos / "biden.jpg")
    response = backend.webhook(body)
    assert response.status_code == 201 and response.json()["added"] == 1, response.text
    [b3] = backend.predict(project, photos, [(7, "biden.jpg")])
    assert identity_of(b3) == "Joe Biden"
    assert backend.store().shown_ids(project)[("6", "hand1")] == "Joe Biden"

    # The annotator deletes the face box of task 1: it leaves the store.
    body = annotation_from({"result": []}, 1, photos, project, action="ANNOTATION_UPDATED")
    assert backend.webhook(body).json()["deleted"] == 1
    assert backend.store().boxes(project, "1") == {}


def test_eight_concurrent_requests_show_one_person(backend, photos):
    project = new_project()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: backend.predict(project, photos, [(n, "obama_1.jpg")])[0], range(8)))
    assert {identity_of(r) for r in results} == {"person_1"}
    faces = backend.store().faces(project)
    assert sorted(faces.tasks, key=int) == [str(n) for n in range(8)] and set(faces.identities) == {1}


def malformed_webhooks(project: str, prediction: dict) -> list[tuple[dict, str]]:
    """Bodies that would change the store if they were read in part: each lacks task 1's face box (which
    would delete it), and some carry a valid rename next to the broken item."""
    rename = [{**r, "value": {**r["value"], "text": ["Barack Obama"]}}
              for r in prediction["result"] if r["type"] == "textarea"]
    task, about = {"id": 1, "data": {}}, {"id": project}
    return [
        ({"action": "ANNOTATION_CREATED", "task": task, "project": about,
          "annotation": {"result": ["not a region"]}}, "must be an object"),
        ({"action": "ANNOTATION_CREATED", "task": task, "project": about, "annotation": {"result": rename + [
            {"id": "x", "type": "rectanglelabels", "value": {"x": "left", "rectanglelabels": ["Face"]}}]}},
         "numeric value.x/y/width/height"),
        ({"action": "ANNOTATION_CREATED", "task": task, "project": {"id": "twelve"}, "annotation": {"result": []}},
         "project id must be a number"),
        ({"action": "ANNOTATION_UPDATED", "task": task, "project": about, "annotation": {"result": [
            {"id": "face1", "type": "textarea", "value": {"text": "Barack Obama"}}]}}, "must be a list of strings"),
        ({"action": "ANNOTATION_UPDATED", "task": task, "project": about, "annotation": {"result": rename + [
            {"type": "rectanglelabels", "original_width": 10, "original_height": 10,
             "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["Face"]}}]}}, "region 'id'"),
        ({"action": "ANNOTATION_UPDATED", "task": {"data": {}}, "project": about,
          "annotation": {"result": []}}, "'task' must be an object with an 'id'"),
    ]


def test_malformed_webhooks_get_4xx_and_change_nothing(backend, photos):
    project = new_project()
    [prediction] = backend.predict(project, photos, [(1, "obama_1.jpg")])
    store = backend.store()
    before = (store.shown_ids(project), store.faces(project).confirmed.tolist())
    for body, message in malformed_webhooks(project, prediction):
        response = backend.webhook(body)
        assert response.status_code == 400 and message in response.json()["detail"], (body, response.text)
        assert response.json()["detail"].startswith("/webhook: ")
    assert (store.shown_ids(project), store.faces(project).confirmed.tolist()) == before
    assert list(before[0].values()) == ["person_1"]


def test_recluster_job_keeps_ids_and_updates_label_studio(backend, photos):
    project = new_project()
    tasks = list(enumerate(PHOTOS, start=1))
    predictions = backend.predict(project, photos, tasks)
    backend.label_studio.predictions[project] = [
        {"id": 100 + task, "task": task, "model_version": p["model_version"], "result": p["result"]}
        for (task, _), p in zip(tasks, predictions)]
    before = backend.store().shown_ids(project)
    renaming = annotation_from(predictions[0], 1, photos, project, name="Barack Obama")
    assert backend.webhook(renaming).status_code == 201

    response = requests.post(backend.url + "/recluster", json={"project": int(project)}, timeout=30)
    assert response.status_code == 202, response.text
    job = response.json()["job"]
    status = _wait_for_job(backend.url, job)
    assert status["status"] == "done", status
    assert status["progress"] == 1.0 and status["result"]["moved"] == 0
    after = backend.store().shown_ids(project)
    renamed = {k: ("Barack Obama" if v == before[("1", "face1")] else v) for k, v in before.items()}
    assert after == renamed
    # Label Studio's predictions of the other Obama photos now show the name given on task 1.
    patched = backend.label_studio.patched
    assert {identity_of(patched[100 + task]) for task in (2, 3)} == {"Barack Obama"}
    assert 104 not in patched  # Biden's prediction did not change
    assert backend.label_studio.authorizations == {"Token legacy-token"}

    assert requests.post(backend.url + "/recluster", json={"project": "x"}, timeout=30).status_code == 400
    assert requests.get(backend.url + "/recluster/nosuchjob", timeout=30).status_code == 404


def _wait_for_job(url: str, job: str, timeout: float = 120) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/recluster/{job}", timeout=30).json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"recluster job {job} still {status} after {timeout} s")


@pytest.mark.parametrize("dialect_name", DIALECTS)
def test_a_killed_server_loses_nothing(dialect_name, request, tmp_path, photos):
    project = new_project()
    env = backend_env(tmp_path, dialect_name, request, WORKERS="1", THREADS="2")
    server = Backend(tmp_path, env).start()
    try:
        first = [identity_of(p) for p in server.predict(project, photos, [(1, "obama_1.jpg"), (2, "biden.jpg")])]
        server.kill()
        server.start()
        again = [identity_of(p) for p in server.predict(project, photos, [(3, "obama_2.jpg"), (4, "biden.jpg")])]
    finally:
        server.kill(signal.SIGTERM)
    assert again == first and len(set(first)) == 2
    assert len(server.store().faces(project).tasks) == 4


def test_recluster_command(tmp_path, photos, faces_of, vision):
    store = FaceStore(SQLiteDialect(tmp_path / "data" / "faces.sqlite3"))
    for photo in PHOTOS:
        store.assign("album", [new_face(faces_of, photo, photo)], "v1", vision.identity_distance)
    before = store.shown_ids("album")
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), LABEL_STUDIO_URL="")
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "backend.cli", "recluster", "--project", "album"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["faces"] == len(PHOTOS)
    assert "100%" in done.stderr  # tqdm's progress bar
    assert store.shown_ids("album") == before
    missing = subprocess.run([sys.executable, "-m", "backend.cli", "recluster", "--project", "nothing"],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "has no faces" in missing.stderr


class FakeLabelStudio(LoopbackServer):
    """The three REST calls recluster makes: the project's label config, its predictions, and PATCHes."""

    def __init__(self):
        self.predictions: dict[str, list[dict]] = {}
        self.patched: dict[int, dict] = {}
        self.authorizations: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.authorizations.add(self.headers.get("Authorization"))
                path, _, query = self.path.partition("?")
                if path.startswith("/api/projects/"):
                    return self._send({"id": int(path.split("/")[3]), "label_config": SHIPPED})
                if path == "/api/predictions/":
                    return self._send(outer.predictions.get(query.removeprefix("task__project="), []))
                self._send({"detail": "not found"}, 404)

            def do_PATCH(self):
                outer.authorizations.add(self.headers.get("Authorization"))
                prediction = int(self.path.strip("/").split("/")[-1])
                outer.patched[prediction] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send({"id": prediction})

            def _send(self, body, status=200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


def test_a_store_of_float64_identity_sums_stores_them_as_float32(store):
    """A store of format 1 kept identity sums as float64; opened again, it holds them as float32 (six
    faces, each a person: a request's groups are different people)."""
    project, rng = new_project(), np.random.default_rng(3)
    descriptors, _ = synthetic_faces(rng, people=2, faces=6)
    store.assign(project, [NewFace(f"t{i}", "face1", np.array([0, 0, 50, 50.0]), np.full((5, 2), np.nan), d, i)
                           for i, d in enumerate(descriptors)], "v1", 0.1)
    with store._locked("test") as db:  # as format 1 wrote them
        rows = store._run(db, "SELECT identity, descriptor_sum FROM identities WHERE project = ?", (project,))
        sums = {identity: sum_array(total) for identity, total in rows.fetchall()}
        store._many(db, "UPDATE identities SET descriptor_sum = ? WHERE project = ? AND identity = ?",
                    [(total.tobytes(), project, identity) for identity, total in sums.items()])
        store._run(db, "DELETE FROM store_format")
    reopened = FaceStore(store.dialect)
    db = reopened._connection()
    rows = reopened._run(db, "SELECT identity, descriptor_sum FROM identities WHERE project = ?", (project,)).fetchall()
    assert len(sums) == 6 and {identity: len(total) for identity, total in rows} == {i: 4 * 128 for i in sums}
    for identity, total in rows:
        assert sum_array(total) == pytest.approx(sums[identity], abs=1e-6)
    assert reopened._run(db, "SELECT version FROM store_format").fetchall() == [(2,)]
