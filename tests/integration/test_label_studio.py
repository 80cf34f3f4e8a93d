"""The backend inside a real Label Studio, driven through Label Studio's own REST API the way a user's
browser drives it: create a project, upload photos, connect the backend, "Retrieve Predictions",
then submit an annotation and see Label Studio deliver the webhook.

The expected faces and identities come from tests/data/photos/faces.json (boxes in pixels, drawn
by hand, rough: a detected face counts when its centre lies inside the box).
"""
from __future__ import annotations

import copy
import re
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.storage import FaceStore

from .label_studio import REPO_ROOT

LABEL_CONFIG = REPO_ROOT / "label_config.xml"
ML_BACKEND_TITLE = "autoannotator"
FACE, PERSON = "Face", "Person"  # the <RectangleLabels> values in label_config.xml


@dataclass
class Controls:
    """The names in label_config.xml that predictions must use."""

    image: str  # the <Image> name, every region's to_name
    boxes: str  # <RectangleLabels> name
    box_labels: set[str]
    landmarks: str  # <KeyPointLabels> name
    landmark_labels: set[str]
    identity: str  # the per-region <TextArea> name


def read_controls(config: str) -> Controls:
    root = ElementTree.fromstring(config)
    labels = lambda tag: {label.get("value") for label in tag.iter("Label")}  # noqa: E731
    rectangles = root.find(".//RectangleLabels")
    keypoints = root.find(".//KeyPointLabels")
    return Controls(
        image=root.find(".//Image").get("name"),
        boxes=rectangles.get("name"),
        box_labels=labels(rectangles),
        landmarks=keypoints.get("name"),
        landmark_labels=labels(keypoints),
        identity=root.find(".//TextArea[@perRegion='true']").get("name"),
    )


@dataclass
class Project:
    id: int
    controls: Controls
    tasks: dict  # photo file name (or "broken") -> task id
    ml_backend: dict
    predictions: dict  # task id -> list of Label Studio's prediction objects


def photo_of(task: dict) -> str:
    """Label Studio stores an upload as /data/upload/<project>/<8 hex>-<original name>."""
    return re.sub(r"^[0-9a-f]{8}-", "", Path(task["data"]["image"]).name)


@pytest.fixture(scope="module")
def project(label_studio, backend, not_found_url, photos, faces_truth) -> Project:
    config = LABEL_CONFIG.read_text()
    project_id = label_studio.create_project("Faces and people", config)
    names = sorted(faces_truth)
    imported = label_studio.upload_files(project_id, [photos / name for name in names])
    assert imported["task_count"] == len(names), imported
    label_studio.import_tasks(project_id, [{"image": not_found_url}])  # a task whose image is gone
    tasks = {("broken" if t["data"]["image"] == not_found_url else photo_of(t)): t["id"]
             for t in label_studio.tasks(project_id)}
    assert set(tasks) == {*names, "broken"}

    ml_backend = label_studio.connect_ml_backend(project_id, backend.url, ML_BACKEND_TITLE, backend.auth)
    label_studio.retrieve_predictions(project_id)
    return Project(project_id, read_controls(config), tasks, ml_backend, label_studio.predictions(project_id))


def regions(result: list[dict], kind: str) -> list[dict]:
    return [r for r in result if r["type"] == kind]


def centre_px(region: dict) -> tuple[float, float]:
    v = region["value"]
    return ((v["x"] + v["width"] / 2) / 100 * region["original_width"],
            (v["y"] + v["height"] / 2) / 100 * region["original_height"])


def inside(point, box) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def boxes_labelled(result: list[dict], controls: Controls, label: str) -> list[dict]:
    return [r for r in regions(result, "rectanglelabels")
            if r["from_name"] == controls.boxes and r["value"]["rectanglelabels"] == [label]]


def identity_of(result: list[dict], controls: Controls, face_id: str) -> str:
    texts = [r["value"]["text"] for r in regions(result, "textarea")
             if r["from_name"] == controls.identity and r["id"] == face_id]
    assert len(texts) == 1 and len(texts[0]) == 1, f"face {face_id} has no single identity: {texts}"
    return texts[0][0]


def only_prediction(project: Project, photo: str) -> dict:
    found = project.predictions.get(project.tasks[photo], [])
    assert len(found) == 1, f"{photo}: expected one prediction, got {len(found)}"
    return found[0]


def test_connecting_the_backend_adds_its_training_webhook(label_studio, backend, project):
    assert project.ml_backend["state"] == "CO", project.ml_backend  # CO: connected
    webhooks = label_studio.api("GET", "/api/webhooks/").json()
    ours = [w for w in webhooks if w["project"] == project.id and w["url"] == backend.url + "/webhook"]
    assert len(ours) == 1, webhooks
    assert ours[0]["is_active"] and ours[0]["send_payload"]


def test_every_photo_gets_a_prediction_in_the_configs_terms(project, faces_truth):
    controls = project.controls
    model_version = project.ml_backend["model_version"]
    assert model_version
    for photo in faces_truth:
        prediction = only_prediction(project, photo)
        # Label Studio shows and filters predictions by model version; ours must be the connected one's.
        assert prediction["model_version"] == model_version
        assert isinstance(prediction["score"], float) and 0 < prediction["score"] <= 1
        result = prediction["result"]
        assert result, f"{photo}: empty prediction"
        ids = [r["id"] for r in result if r["type"] != "textarea"]
        assert len(ids) == len(set(ids)), f"{photo}: region ids repeat"
        for region in result:
            assert region["to_name"] == controls.image
            assert region["original_width"] > 0 and region["original_height"] > 0
            assert 0 <= region["value"]["x"] <= 100 and 0 <= region["value"]["y"] <= 100

        boxes = regions(result, "rectanglelabels")
        assert {r["from_name"] for r in boxes} == {controls.boxes}
        assert all(len(r["value"]["rectanglelabels"]) == 1 and r["value"]["rectanglelabels"][0] in controls.box_labels
                   for r in boxes)
        face_ids = {r["id"] for r in boxes_labelled(result, controls, FACE)}
        assert face_ids, f"{photo}: no face box"

        points = regions(result, "keypointlabels")
        assert points, f"{photo}: no landmarks"
        for point in points:
            assert point["from_name"] == controls.landmarks
            assert point["value"]["keypointlabels"][0] in controls.landmark_labels
            assert point["parentID"] in face_ids, f"{photo}: landmark {point['id']} does not belong to a face"
        for face_id in face_ids:
            assert identity_of(result, controls, face_id)


def test_faces_and_people_are_where_the_photos_show_them(project, faces_truth):
    controls = project.controls
    for photo, truth in faces_truth.items():
        result = only_prediction(project, photo)["result"]
        face_centres = [centre_px(r) for r in boxes_labelled(result, controls, FACE)]
        for face in truth["faces"]:
            assert any(inside(c, face["box"]) for c in face_centres), f"{photo}: missed the face of {face['person']}"
        # Recall on crowds is the vision tests' business; here a photo of people must show some of them.
        person_centres = [centre_px(r) for r in boxes_labelled(result, controls, PERSON)]
        found = [p for p in truth["people"] if any(inside(c, p["box"]) for c in person_centres)]
        assert bool(found) == bool(truth["people"]), f"{photo}: people found at {found}, expected {truth['people']}"


def photos_per_person(faces_truth) -> dict:
    photos = {}
    for photo, truth in faces_truth.items():
        for face in truth["faces"]:
            photos.setdefault(face["person"], []).append(photo)
    return photos


def test_the_same_person_gets_the_same_identity_across_tasks(project, faces_truth):
    identities = {}  # faces.json person -> the identity texts that their faces got
    for photo, truth in faces_truth.items():
        result = only_prediction(project, photo)["result"]
        for face in truth["faces"]:
            for region in boxes_labelled(result, project.controls, FACE):
                if inside(centre_px(region), face["box"]):
                    identities.setdefault(face["person"], set()).add(identity_of(result, project.controls, region["id"]))
    seen_twice = [person for person, photos in photos_per_person(faces_truth).items() if len(photos) > 1]
    assert seen_twice, "faces.json needs a person in two photos"
    for person in seen_twice:
        assert len(identities[person]) == 1, f"{person} got several identities: {identities[person]}"
    one_each = [next(iter(ids)) for ids in identities.values() if len(ids) == 1]
    assert len(one_each) == len(set(one_each)), f"different people share an identity: {identities}"


def test_a_broken_image_is_reported_and_does_not_stop_the_others(project, backend, not_found_url, faces_truth):
    broken = project.predictions.get(project.tasks["broken"], [])
    assert all(p["result"] == [] for p in broken), broken
    assert all(project.predictions.get(project.tasks[photo]) for photo in faces_truth)
    logged = [line for line in backend.log().splitlines() if not_found_url in line]
    assert any("404" in line for line in logged), f"the backend logged no 404 for {not_found_url}"


def test_a_submitted_annotation_reaches_the_backend_through_the_webhook(label_studio, backend, project, faces_truth):
    """An annotator opens a pre-annotated task, moves a face box, names the face and submits."""
    photo = next(photos[0] for photos in photos_per_person(faces_truth).values() if len(photos) > 1)
    task_id = project.tasks[photo]
    prediction = only_prediction(project, photo)
    result = copy.deepcopy(prediction["result"])
    for region in result:
        region.pop("score", None)  # annotations carry no model scores
    face = boxes_labelled(result, project.controls, FACE)[0]
    face["value"]["x"] = min(face["value"]["x"] + 1.5, 100 - face["value"]["width"])
    for region in regions(result, "textarea"):
        if region["id"] == face["id"]:
            region["value"]["text"] = ["Barack Obama"]

    webhook_calls_before = len(webhook_calls(backend))
    annotation = label_studio.api(
        "POST", f"/api/tasks/{task_id}/annotations/?project={project.id}",
        json={"result": result, "lead_time": 42.0, "parent_prediction": prediction["id"], "project": project.id},
    ).json()

    stored = label_studio.api("GET", f"/api/annotations/{annotation['id']}/").json()["result"]
    stored_face = next(r for r in boxes_labelled(stored, project.controls, FACE) if r["id"] == face["id"])
    assert stored_face["value"]["x"] == pytest.approx(face["value"]["x"])
    assert identity_of(stored, project.controls, face["id"]) == "Barack Obama"

    # Label Studio posts webhooks before it answers, but give the backend's log a moment to be written.
    deadline = time.monotonic() + 10
    while not annotation_received(backend, task_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert annotation_received(backend, task_id), "the backend logged no ANNOTATION_CREATED webhook for the task"
    statuses = webhook_calls(backend)[webhook_calls_before:]
    assert statuses and all(200 <= s < 300 for s in statuses), f"/webhook answered {statuses}"


def test_the_name_an_annotator_gave_reaches_the_persons_other_photos(label_studio, project, faces_truth):
    """After the annotation above named a face, its person's other photos are predicted with that name."""
    person, photos = next((p, photos) for p, photos in photos_per_person(faces_truth).items() if len(photos) > 1)
    others = photos[1:]
    for photo in others:  # drop their predictions, so that "Retrieve Predictions" asks the backend again
        for prediction in project.predictions[project.tasks[photo]]:
            label_studio.api("DELETE", f"/api/predictions/{prediction['id']}/", expect=204)
    label_studio.retrieve_predictions(project.id)
    predictions = label_studio.predictions(project.id)
    for photo in others:
        [prediction] = predictions[project.tasks[photo]]
        truth = next(face["box"] for face in faces_truth[photo]["faces"] if face["person"] == person)
        [face] = [r for r in boxes_labelled(prediction["result"], project.controls, FACE) if inside(centre_px(r), truth)]
        assert identity_of(prediction["result"], project.controls, face["id"]) == "Barack Obama", photo


def test_deleting_an_annotation_takes_back_what_it_taught(label_studio, backend, project):
    """Label Studio's ANNOTATIONS_DELETED webhook: the task's faces are no longer confirmed in the store."""
    photo = "grace_hopper.jpg"
    task = str(project.tasks[photo])
    prediction = only_prediction(project, photo)
    result = [{k: v for k, v in region.items() if k != "score"} for region in prediction["result"]]
    store = FaceStore.open("", backend.data_dir)

    def confirmed() -> list[bool]:
        faces = store.faces(str(project.id))
        return [bool(c) for t, c in zip(faces.tasks, faces.confirmed) if t == task]

    assert confirmed() and not any(confirmed())
    annotation = label_studio.api("POST", f"/api/tasks/{task}/annotations/?project={project.id}",
                                  json={"result": result, "project": project.id}).json()
    wait_for(lambda: all(confirmed()), "the submitted annotation did not confirm the task's faces")
    label_studio.api("DELETE", f"/api/annotations/{annotation['id']}/", expect=204)
    wait_for(lambda: confirmed() and not any(confirmed()), "deleting the annotation left its faces confirmed")
    assert re.search(r"ANNOTATIONS_DELETED: project \d+, 1 annotations", backend.log())


def wait_for(condition, message: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def webhook_calls(backend) -> list[int]:
    """The HTTP status of every POST /webhook in gunicorn's access log, in order."""
    return [int(m) for m in re.findall(r'"POST /webhook [^"]*" (\d{3})', backend.log())]


def annotation_received(backend, task_id: int) -> bool:
    return bool(re.search(rf"ANNOTATION_CREATED\b.*\btask {task_id}\b", backend.log()))
