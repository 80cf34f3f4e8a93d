"""The HTTP API as Label Studio calls it, on the default models and real photos, with real label configs."""
import json
import shutil

import pytest

from tests.conftest import PHOTOS
from tests.test_label_config import CHOICES_IDENTITY, FACES_ONLY, KEYPOINTS_ONLY, NOTHING, PERSONS_ONLY, SHIPPED


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The test photos, copied under the backend's LOCAL_FILES_ROOT: it reads no file outside it."""
    root = tmp_path_factory.mktemp("files")
    for photo in PHOTOS.iterdir():
        shutil.copy(photo, root / photo.name)
    return root


@pytest.fixture(scope="module")
def app(tmp_path_factory, photos):
    from backend.config import Settings
    from backend.service.app import create_app

    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data"), local_files_root=photos))
    app.testing = True
    return app


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def task(photos, name, task_id, key="image"):
    return {"id": task_id, "data": {key: str(photos / name)}}


def predict(client, tasks, config=SHIPPED, project="1.1"):
    response = client.post("/predict", json={"tasks": tasks, "label_config": config, "project": project})
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    return results


def regions(prediction, kind, from_name=None):
    return [r for r in prediction["result"] if r["type"] == kind and (from_name is None or r["from_name"] == from_name)]


def inside(region, box, width, height, slack=0.1):
    """The region's percent box lies within the truth box (pixels), give or take `slack` of its size."""
    v = region["value"]
    x1, y1 = v["x"] * width / 100, v["y"] * height / 100
    x2, y2 = x1 + v.get("width", 0) * width / 100, y1 + v.get("height", 0) * height / 100
    sx, sy = slack * (box[2] - box[0]), slack * (box[3] - box[1])
    return box[0] - sx <= x1 and x2 <= box[2] + sx and box[1] - sy <= y1 and y2 <= box[3] + sy


def test_health_and_setup(client):
    assert client.get("/health").get_json()["status"] == "UP"
    response = client.post("/setup", json={"project": "1.1", "schema": SHIPPED})
    assert response.status_code == 200
    assert response.get_json()["model_version"].startswith("autoannotator-default:faces=")


def test_setup_refuses_a_config_with_nothing_to_fill(client):
    response = client.post("/setup", json={"project": "1.1", "schema": NOTHING})
    assert response.status_code == 422
    assert "no control this backend can fill" in response.get_json()["detail"]


@pytest.mark.parametrize("body, message", [
    ("not json", "JSON object"),
    (json.dumps([1, 2]), "JSON object"),
    (json.dumps({"tasks": "abc"}), "'tasks' must be a list"),
    (json.dumps({"tasks": [], "label_config": "<View"}), "not valid XML"),
])
def test_malformed_predict_requests_get_4xx(client, body, message):
    response = client.post("/predict", data=body, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert message in response.get_json()["detail"]


def test_full_config_faces_landmarks_identities(client, photos, faces_truth):
    names = ["obama_1.jpg", "obama_2.jpg", "biden.jpg", "grace_hopper.jpg"]
    results = predict(client, [task(photos, n, i) for i, n in enumerate(names)])
    identity_of = {}
    for name, prediction in zip(names, results):
        truth = faces_truth[name]["faces"][0]["box"]
        height, width = _size(photos / name)
        assert prediction["model_version"].startswith("autoannotator-default")
        faces = [r for r in regions(prediction, "rectanglelabels") if r["value"]["rectanglelabels"] == ["Face"]]
        main = [f for f in faces if inside(f, truth, width, height, slack=0.25)]
        assert len(main) == 1, f"{name}: {faces}"
        face = main[0]
        assert face["original_width"] == width and face["original_height"] == height
        assert 0 < face["score"] <= 1
        points = [r for r in regions(prediction, "keypointlabels") if r["parentID"] == face["id"]]
        assert {p["value"]["keypointlabels"][0] for p in points} >= {"left_eye", "right_eye", "nose"}
        for point in points:
            assert inside(point, truth, width, height, slack=0.1), point
        eyes = {p["value"]["keypointlabels"][0]: p["value"] for p in points}
        assert eyes["left_eye"]["x"] < eyes["right_eye"]["x"]
        assert max(eyes["left_eye"]["y"], eyes["right_eye"]["y"]) < eyes["nose"]["y"]
        [identity] = [r for r in regions(prediction, "textarea") if r["id"] == face["id"]]
        assert identity["from_name"] == "identity" and identity["to_name"] == "image"
        assert identity["value"]["x"] == face["value"]["x"]
        identity_of[name] = identity["value"]["text"][0]
    assert identity_of["obama_1.jpg"] == identity_of["obama_2.jpg"]
    assert len({identity_of["obama_1.jpg"], identity_of["biden.jpg"], identity_of["grace_hopper.jpg"]}) == 3
    assert all(v.startswith("person_") for v in identity_of.values())


def test_broken_tasks_fail_alone(client, photos, caplog):
    text = photos / "notes.jpg"
    text.write_text("not an image")
    tasks = [
        task(photos, "grace_hopper.jpg", 1),
        {"id": 2, "data": {"image": str(photos / "missing.jpg")}},
        {"id": 3, "data": {"image": str(text)}},
        {"id": 4, "data": {"other": "no image key"}},
        {"id": 5},
        task(photos, "biden.jpg", 6),
    ]
    results = predict(client, tasks)
    assert [bool(r["result"]) for r in results] == [True, False, False, False, False, True]
    assert all(r["model_version"] for r in results)
    log = caplog.text
    assert "task 2: no prediction" in log and "no such file" in log
    assert "task 3: no prediction" in log and "not an image" in log
    assert "task 4: no prediction" in log and "no image URL" in log


def test_subset_configs(client, photos, faces_truth):
    [faces] = predict(client, [task(photos, "grace_hopper.jpg", 1, "photo")], FACES_ONLY)
    assert {r["type"] for r in faces["result"]} == {"rectanglelabels"}
    assert {r["value"]["rectanglelabels"][0] for r in faces["result"]} == {"FACE"}

    [keypoints] = predict(client, [task(photos, "grace_hopper.jpg", 1, "photo")], KEYPOINTS_ONLY)
    assert {r["type"] for r in keypoints["result"]} == {"keypointlabels"}
    assert {r["value"]["keypointlabels"][0] for r in keypoints["result"]} == {"Left Eye", "right-eye", "nose"}
    assert all("parentID" not in r for r in keypoints["result"])

    [persons] = predict(client, [task(photos, "street_bus.jpg", 1, "photo")], PERSONS_ONLY)
    assert persons["result"] and {r["value"]["rectanglelabels"][0] for r in persons["result"]} == {"Pedestrian"}
    assert all(r["score"] >= 0.6 for r in persons["result"])  # the control's model_score_threshold

    # identities are numbered per project: in a new project, the one face is person_1, a choice of the config
    [choices] = predict(client, [task(photos, "grace_hopper.jpg", 1, "photo")], CHOICES_IDENTITY, project="2.1")
    assert [r["value"]["choices"] for r in choices["result"] if r["type"] == "choices"] == [["person_1"]]


def test_people_in_a_street_photo(client, photos, faces_truth):
    [prediction] = predict(client, [task(photos, "street_bus.jpg", 1)])
    height, width = _size(photos / "street_bus.jpg")
    people = [r for r in regions(prediction, "rectanglelabels") if r["value"]["rectanglelabels"] == ["Person"]]
    faces = [r for r in regions(prediction, "rectanglelabels") if r["value"]["rectanglelabels"] == ["Face"]]
    for truth in faces_truth["street_bus.jpg"]["faces"]:
        assert any(inside(f, truth["box"], width, height, slack=0.3) for f in faces)
    assert people, "no person found in a street photo with four people"


def test_webhooks(client):
    body = {"action": "ANNOTATION_CREATED", "task": {"id": 1}, "annotation": {"id": 7, "result": []}}
    response = client.post("/webhook", json=body)
    assert response.status_code == 201 and response.get_json()["status"] == "received"
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {}}).status_code == 201
    for bad in ({"task": {"id": 1}}, {"action": "ANNOTATION_CREATED", "task": {"id": 1}, "annotation": "x"}):
        response = client.post("/webhook", json=bad)
        assert response.status_code == 400 and response.get_json()["detail"].startswith("/webhook:")
    assert client.post("/webhook", data="{oops", content_type="application/json").status_code == 400


def _size(path):
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        width, height = ImageOps.exif_transpose(image).size
    return height, width


def test_a_predict_past_its_deadline_answers_what_is_done(client, photos, caplog):
    """PREDICT_TIMEOUT: no task starts after it; the others are answered with no prediction at all (an empty
    list), which Label Studio saves nothing for, so that its next Retrieve Predictions sends them again."""
    import dataclasses

    from backend.service.app import CONTEXT, create_app

    context = client.application.extensions[CONTEXT]
    hurried = create_app(dataclasses.replace(context.settings, predict_timeout=0.3), context=context).test_client()
    tasks = [task(photos, name, i) for i, name in enumerate(["biden.jpg", "obama_1.jpg", "grace_hopper.jpg"])]
    response = hurried.post("/predict", json={"tasks": tasks, "label_config": SHIPPED, "project": "3.1"})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 3 and results[0]["result"] and results[1:] == [[], []]
    assert "deadline reached: 1 of 3 tasks predicted" in caplog.text
