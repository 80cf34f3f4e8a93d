"""Faces that arrive one /predict at a time end up as one batch of them would be clustered: the backend
re-clusters a project whenever it has grown by AUTO_RECLUSTER since its last re-clustering (a background
job, as POST /recluster), on real photos, the known people's faces also shrunk, blurred and darkened, the
poorest arriving first."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from backend.evaluation.metrics import identity_scores
from backend.service.recluster import AUTO_RECLUSTER_MIN_NEW_FACES, recluster_due
from backend.vision.clustering import cluster_identities
from tests.conftest import PHOTOS, read_rgb
from tests.test_label_config import SHIPPED

PROJECT = "21"
# (face width in px or None for the photo as it is, blurred, dark): the worst first, as annotators might
# open them; the photos as they are come last.
VARIANTS = [(24, True, True), (32, False, True), (48, True, False), (None, False, False)]


def test_recluster_due():
    assert not recluster_due(AUTO_RECLUSTER_MIN_NEW_FACES - 1, 0, 0.1)
    assert recluster_due(AUTO_RECLUSTER_MIN_NEW_FACES, 0, 0.1)
    assert not recluster_due(1000 + 99, 1000, 0.1) and recluster_due(1000 + 100, 1000, 0.1)
    assert recluster_due(1000 + 500, 1000, 0.5) and not recluster_due(1000 + 499, 1000, 0.5)


@pytest.fixture(scope="module")
def degraded_photos(tmp_path_factory, faces_truth):
    """{file name: person} of the known people's photos and their degraded copies, in arrival order."""
    directory = tmp_path_factory.mktemp("degraded")
    rng = np.random.default_rng(0)
    written = {}
    for width, blurred, dark in VARIANTS:
        for name, photo in faces_truth.items():
            [face] = [f for f in photo["faces"] if not f["person"].startswith("bus_")] or [None]
            if face is None:
                continue
            pixels = read_rgb(PHOTOS / name)
            if width is not None:
                scale = width / (face["box"][2] - face["box"][0])
                pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            if blurred:
                pixels = cv2.GaussianBlur(pixels, (0, 0), 1.2)
            if dark:
                pixels = np.clip(pixels * 0.25 + rng.normal(0, 2, pixels.shape), 0, 255).astype(np.uint8)
            file = f"{width or 'full'}{'_blurred' if blurred else ''}{'_dark' if dark else ''}_{name}"
            cv2.imwrite(str(directory / file), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
            written[file] = face["person"]
    return directory, written


def wait_for_checks(context, seconds: float = 30) -> None:
    """Until the checks /predict started (recluster.check_after_predict) have started their jobs, if due."""
    end = time.monotonic() + seconds
    while context.recluster_checks:
        assert time.monotonic() < end, "a check for a due re-clustering did not end"
        time.sleep(0.05)


def wait_for_jobs(store, project: str, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while store._run(store._connection(), "SELECT COUNT(*) FROM jobs WHERE project = ? AND status IN "
                                          "('queued', 'running')", (project,)).fetchone()[0]:
        assert time.monotonic() < end, "a re-clustering job did not finish"
        time.sleep(0.1)
    failed = store._run(store._connection(), "SELECT message FROM jobs WHERE project = ? AND status = 'failed'",
                        (project,)).fetchall()
    assert not failed, failed


@pytest.mark.parametrize("growth, min_new_faces", [(0.1, AUTO_RECLUSTER_MIN_NEW_FACES), (0.01, 1)])
def test_faces_predicted_one_at_a_time_end_as_one_batch(tmp_path, degraded_photos, monkeypatch, growth, min_new_faces):
    """As shipped (a re-clustering at 10 and 20 of these 21 faces), and re-clustering after every /predict,
    where the store ends with the clusters of one batch of all faces."""
    from backend.config import Settings
    from backend.service import recluster
    from backend.service.app import CONTEXT, create_app

    monkeypatch.setattr(recluster, "AUTO_RECLUSTER_MIN_NEW_FACES", min_new_faces)
    directory, people = degraded_photos
    app = create_app(Settings(data_dir=tmp_path, local_files_root=directory, auto_recluster=growth))
    client = app.test_client()
    context = app.extensions[CONTEXT]
    store = context.store
    first_shown, reclusterings = {}, []
    for number, file in enumerate(people):
        task = {"id": number, "data": {"image": str(directory / file)}}
        response = client.post("/predict", json={"tasks": [task], "label_config": SHIPPED, "project": f"{PROJECT}.1"})
        assert response.status_code == 200, response.get_data(as_text=True)
        wait_for_checks(context)
        wait_for_jobs(store, PROJECT)  # (annotators open tasks slower than a small project re-clusters)
        shown = store.shown_ids(PROJECT)
        first_shown.update({(task_id, region): ids for (task_id, region), ids in shown.items()
                            if task_id == str(number)})
        faces, then = store.faces_since_recluster(PROJECT)
        if recluster_due(faces, then, growth):
            pytest.fail(f"re-clustering was due at {faces} faces and did not run")
        if then == faces:
            reclusterings.append(faces)
    assert reclusterings, "no re-clustering ran"

    final = store.faces(PROJECT)
    person_of = {str(number): people[file] for number, file in enumerate(people)}
    # The one face of each task whose person is known (the photos show no one else, but for a face a
    # degraded copy may also find in the background: those are not scored).
    scored = [i for i, task in enumerate(final.tasks) if final.regions[i] == min(
        r for t, r in zip(final.tasks, final.regions) if t == task)]
    truth = [person_of[final.tasks[i]] for i in scored]
    held = store.shown_ids(PROJECT)
    at_the_end = identity_scores(truth, [held[(final.tasks[i], final.regions[i])] for i in scored]).bcubed
    as_shown = identity_scores(truth, [first_shown[(final.tasks[i], final.regions[i])] for i in scored]).bcubed
    assert at_the_end[2] > as_shown[2]
    if reclusterings[-1] == len(final.tasks):  # the last re-clustering saw every face: the store holds the batch's clusters
        batch = cluster_identities(final.descriptors, context.annotator.identity_distance, final.quality)
        assert identity_scores(list(batch), list(final.identities)).bcubed == (1.0, 1.0, 1.0)
        assert at_the_end[2] == identity_scores(truth, list(batch[scored])).bcubed[2]
    else:
        assert min_new_faces > 1
