"""Interactive pre-annotation (/predict with the region an annotator just drew) and the Label Studio conventions
around it, on the default models and real photos: every control of a config filled, an edited face box
described anew, Start Training re-clustering the project.

The context items are what Label Studio 1.23's editor sends (a serialized result item: id, type, from_name,
to_name, original_width/height, value in percent with its labels); tests/integration/test_editor.py draws them
in the real editor.
"""
import json
import time

import cv2
import numpy as np
import pytest

from backend.service.label_config import parse_label_config
from backend.service.predictions import relabel_identities
from tests.test_api import app, client, inside, photos, regions, task  # noqa: F401 (fixtures)
from tests.test_label_config import BODY_JOINTS, SHIPPED

PROJECT = "5.1700000000"  # as Label Studio sends it: "<id>.<created at>"


@pytest.fixture(scope="module")
def known(client, photos):
    """Identities the project already has: its first photos predicted. {photo: identity of its face}."""
    names = ["obama_1.jpg", "biden.jpg", "grace_hopper.jpg"]
    response = client.post("/predict", json={"tasks": [task(photos, n, i) for i, n in enumerate(names, 1)],
                                             "label_config": SHIPPED, "project": PROJECT})
    assert response.status_code == 200, response.get_data(as_text=True)
    return {name: regions(p, "textarea")[0]["value"]["text"][0]
            for name, p in zip(names, response.get_json()["results"])}


def size_of(photos, name):
    height, width = cv2.imread(str(photos / name)).shape[:2]
    return width, height


def drawn_box(photos, name, box, label="Face", region="drawn1", control="boxes"):
    """A rectangle as Label Studio's editor serializes it. box: x1, y1, x2, y2 in pixels."""
    width, height = size_of(photos, name)
    x1, y1, x2, y2 = box
    return {"id": region, "type": "rectanglelabels", "from_name": control, "to_name": "image", "origin": "manual",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x1 / width * 100, "y": y1 / height * 100, "width": (x2 - x1) / width * 100,
                      "height": (y2 - y1) / height * 100, "rotation": 0, "rectanglelabels": [label]}}


def clicked_point(photos, name, point, label="nose", region="click1", control="landmarks"):
    width, height = size_of(photos, name)
    return {"id": region, "type": "keypointlabels", "from_name": control, "to_name": "image", "origin": "manual",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": point[0] / width * 100, "y": point[1] / height * 100, "width": 0.5,
                      "keypointlabels": [label]}}


def ask(client, photos, name, items, config=SHIPPED, project=PROJECT, status=200):
    """An interactive /predict as Label Studio sends it: one task, the drawn region last in the context."""
    body = {"tasks": [task(photos, name, 42)], "label_config": config, "project": project,
            "params": {"login": None, "password": None, "context": {"result": items}}}
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    if status != 200:
        return response.get_json()["detail"]
    [prediction] = response.get_json()["results"]
    return prediction


def loose(box, factor):
    """`box` grown (or shrunk) about its centre, as a hand-drawn box around a face is."""
    box = np.asarray(box, dtype=float)
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * factor
    return [*(centre - half), *(centre + half)]


def iou(region, box, photos, name):
    width, height = size_of(photos, name)
    v = region["value"]
    found = np.array([v["x"] * width, v["y"] * height, (v["x"] + v["width"]) * width,
                      (v["y"] + v["height"]) * height]) / 100
    low, high = np.maximum(found[:2], box[:2]), np.minimum(found[2:], box[2:])
    inter = np.prod((high - low).clip(0))
    area = lambda b: np.prod(np.asarray(b[2:]) - b[:2])  # noqa: E731
    return inter / (area(found) + area(np.asarray(box, float)) - inter)


def test_a_box_drawn_around_a_face_gets_the_face_its_landmarks_and_its_identity(client, photos, faces_truth, known):
    truth = faces_truth["obama_2.jpg"]["faces"][0]["box"]
    for factor in (0.8, 1.3):  # drawn a little inside the face, and loosely around it
        prediction = ask(client, photos, "obama_2.jpg", [drawn_box(photos, "obama_2.jpg", loose(truth, factor))])
        [box] = regions(prediction, "rectanglelabels")
        assert box["id"] == "drawn1" and box["from_name"] == "boxes" and box["value"]["rectanglelabels"] == ["Face"]
        assert iou(box, truth, photos, "obama_2.jpg") > 0.5, box
        points = regions(prediction, "keypointlabels")
        assert sorted(p["value"]["keypointlabels"][0] for p in points) == sorted(
            ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"])
        width, height = size_of(photos, "obama_2.jpg")
        for point in points:
            assert point["parentID"] == "drawn1" and inside(point, truth, width, height)
        assert len({p["id"] for p in points}) == 5 and "drawn1" not in {p["id"] for p in points}
        # The project already knows this man from obama_1.jpg: his identity, scored as /predict scores it.
        [identity] = regions(prediction, "textarea")
        assert identity["id"] == "drawn1" and identity["value"]["text"] == [known["obama_1.jpg"]]
        assert 0 < identity["score"] <= 1
        assert prediction["model_version"].startswith("autoannotator-")


def test_small_faces_in_a_crowd(client, photos, faces_truth, known):
    """The street photo's faces are 60-70 px wide; neither is a person the project knows. The refined box is
    the one /predict finds for the face in the whole image (the rough truth boxes frame faces ear to ear, as
    BlazeFace does; MTCNN and dlib frame them tighter)."""
    [whole] = client.post("/predict", json={"tasks": [task(photos, "street_bus.jpg", 7)], "label_config": SHIPPED}
                          ).get_json()["results"]
    width, height = size_of(photos, "street_bus.jpg")
    for index, face in enumerate(faces_truth["street_bus.jpg"]["faces"]):
        [predicted] = [r for r in regions(whole, "rectanglelabels") if r["value"]["rectanglelabels"] == ["Face"]
                       and inside(r, face["box"], width, height, slack=0.2)]
        v = predicted["value"]
        predicted_box = np.array([v["x"], v["y"], v["x"] + v["width"], v["y"] + v["height"]]) / 100 * [
            width, height, width, height]
        prediction = ask(client, photos, "street_bus.jpg", [drawn_box(photos, "street_bus.jpg", face["box"])])
        [box] = regions(prediction, "rectanglelabels")
        # The crop is seen at another scale than the whole image, so the fused framing differs a little.
        assert iou(box, predicted_box, photos, "street_bus.jpg") > 0.65 and box["score"] > 0.5, (index, box)
        assert len(regions(prediction, "keypointlabels")) == 5
        assert regions(prediction, "textarea") == []  # a new person: the webhook founds the identity on submit


def test_without_a_project_there_is_no_identity(client, photos, faces_truth):
    truth = faces_truth["biden.jpg"]["faces"][0]["box"]
    prediction = ask(client, photos, "biden.jpg", [drawn_box(photos, "biden.jpg", truth)], project=None)
    assert len(regions(prediction, "rectanglelabels")) == 1 and len(regions(prediction, "keypointlabels")) == 5
    assert regions(prediction, "textarea") == []


def test_only_the_last_region_of_the_context_is_answered(client, photos, faces_truth, known):
    """Label Studio sends every region of the drawn one's type and label, the new one last."""
    face = faces_truth["street_bus.jpg"]["faces"]
    earlier = drawn_box(photos, "street_bus.jpg", face[0]["box"], region="earlier")
    earlier["score"] = 0.9
    prediction = ask(client, photos, "street_bus.jpg",
                     [earlier, drawn_box(photos, "street_bus.jpg", face[1]["box"], region="new")])
    assert {r["id"] for r in regions(prediction, "rectanglelabels")} == {"new"}


def test_a_box_drawn_around_a_person(client, photos, faces_truth):
    person = faces_truth["street_bus.jpg"]["people"][0]["box"]
    prediction = ask(client, photos, "street_bus.jpg",
                     [drawn_box(photos, "street_bus.jpg", loose(person, 1.1), label="Person")])
    [box] = regions(prediction, "rectanglelabels")
    assert box["id"] == "drawn1" and box["value"]["rectanglelabels"] == ["Person"]
    assert iou(box, person, photos, "street_bus.jpg") > 0.6, box
    assert regions(prediction, "keypointlabels") == []  # the shipped config asks for no body joints

    with_joints = SHIPPED.replace("</View>\n</View>", f"</View>\n"
                                  f'<KeyPointLabels name="pose" toName="image">{BODY_JOINTS}</KeyPointLabels></View>')
    prediction = ask(client, photos, "street_bus.jpg",
                     [drawn_box(photos, "street_bus.jpg", loose(person, 1.1), label="Person")], config=with_joints)
    joints = regions(prediction, "keypointlabels")
    assert joints and {j["from_name"] for j in joints} == {"pose"} and {j["parentID"] for j in joints} == {"drawn1"}
    width, height = size_of(photos, "street_bus.jpg")
    for joint in joints:
        assert inside(joint, person, width, height, slack=0.2), joint


def test_a_landmark_clicked_on_a_face_gets_the_face(client, photos, faces_truth, known):
    truth = faces_truth["obama_3.jpg"]["faces"][0]["box"]
    centre = [(truth[0] + truth[2]) / 2, (truth[1] + truth[3]) / 2 + 15]
    prediction = ask(client, photos, "obama_3.jpg", [clicked_point(photos, "obama_3.jpg", centre)])
    [box] = regions(prediction, "rectanglelabels")
    assert box["id"] == "click1_face" and iou(box, truth, photos, "obama_3.jpg") > 0.5, box
    points = {p["value"]["keypointlabels"][0]: p for p in regions(prediction, "keypointlabels")}
    assert len(points) == 5 and {p["parentID"] for p in points.values()} == {"click1_face"}
    # The click becomes the nose the models found: it keeps its id, so Label Studio replaces it.
    assert points["nose"]["id"] == "click1" and inside(points["nose"], truth, *size_of(photos, "obama_3.jpg"))
    [identity] = regions(prediction, "textarea")
    assert identity["id"] == "click1_face" and identity["value"]["text"] == [known["obama_1.jpg"]]


def test_nothing_found_keeps_what_was_drawn(client, photos, faces_truth):
    """Label Studio deletes the drawn region when it accepts the answer: the answer must hold it."""
    facade = [400, 100, 460, 170]  # windows of the building, no face
    drawn = drawn_box(photos, "street_bus.jpg", facade)
    prediction = ask(client, photos, "street_bus.jpg", [drawn])
    [box] = regions(prediction, "rectanglelabels")
    assert box["id"] == "drawn1" and box["score"] == 0.0
    assert all(abs(box["value"][k] - drawn["value"][k]) < 1e-6 for k in ("x", "y", "width", "height"))
    assert regions(prediction, "keypointlabels") == []

    click = clicked_point(photos, "street_bus.jpg", [430, 130])
    assert ask(client, photos, "street_bus.jpg", [click])["result"] == [click]

    person = drawn_box(photos, "street_bus.jpg", facade, label="Person")
    assert ask(client, photos, "street_bus.jpg", [person])["result"] == [person]


def test_regions_of_controls_we_do_not_fill_come_back_as_drawn(client, photos):
    config = SHIPPED.replace("</View>\n</View>", '</View>\n<RectangleLabels name="cars" toName="image" smart="true">'
                                                  '<Label value="Car"/></RectangleLabels></View>')
    car = drawn_box(photos, "street_bus.jpg", [300, 300, 700, 600], label="Car", control="cars")
    assert ask(client, photos, "street_bus.jpg", [car], config=config)["result"] == [car]
    skipped = config.replace('<KeyPointLabels name="landmarks"', '<KeyPointLabels model_skip="true" name="landmarks"')
    click = clicked_point(photos, "obama_3.jpg", [380, 220])
    assert ask(client, photos, "obama_3.jpg", [click], config=skipped)["result"] == [click]


@pytest.mark.parametrize("items, message", [
    ("not a list", "must be a list"),
    ([{"type": "textarea", "id": "x", "value": {"text": ["a"]}}], "holds no drawn region"),
    ([{"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": ["Face"]}}],
     "needs an 'id'"),
    ([{"type": "rectanglelabels", "id": "r", "value": {"x": "a", "y": 1, "rectanglelabels": ["Face"]}}], "numeric"),
    ([{"type": "rectanglelabels", "id": "r", "value": {"x": 1, "y": 1, "width": 0, "height": 2,
                                                       "rectanglelabels": ["Face"]}}], "size positive"),
    ([{"type": "keypointlabels", "id": "r", "value": {"x": 1, "y": 1, "keypointlabels": "nose"}}], "list of labels"),
    ([{"type": "keypointlabels", "id": "r", "value": {"x": 1e300, "y": 1, "keypointlabels": ["nose"]}}],
     "inside the image"),
])
def test_malformed_contexts_get_400(client, photos, items, message):
    assert message in ask(client, photos, "street_bus.jpg", items, status=400)


def test_an_unreadable_image_gets_422(client, photos):
    body = {"tasks": [{"id": 1, "data": {"image": str(photos / "missing.jpg")}}], "label_config": SHIPPED,
            "params": {"context": {"result": [drawn_box(photos, "street_bus.jpg", [1, 1, 50, 50])]}}}
    response = client.post("/predict", json=body)
    assert response.status_code == 422 and "no such file" in response.get_json()["detail"]
    body["tasks"].append(body["tasks"][0])
    assert client.post("/predict", json=body).status_code == 400


# Label Studio's conventions in /predict -----------------------------------------------------------------

def test_every_control_is_filled_and_model_skip_honoured(client, photos):
    config = """<View><Image name="image" value="$image"/>
      <RectangleLabels name="boxes" toName="image"><Label value="Head" predicted_values="face"/></RectangleLabels>
      <RectangleLabels name="more" toName="image"><Label value="face"/></RectangleLabels>
      <KeyPointLabels name="landmarks" toName="image"><Label value="nose"/><Label value="left_eye"/></KeyPointLabels>
      <KeyPointLabels name="skipped" toName="image" model_skip="true"><Label value="nose"/></KeyPointLabels>
      <TextArea name="identity" toName="image" perRegion="true"/>
      <Choices name="known" toName="image" perRegion="true"><Choice value="Grace" predicted_values="person_1"/>
      </Choices></View>"""
    response = client.post("/predict", json={"tasks": [task(photos, "grace_hopper.jpg", 1)],
                                             "label_config": config, "project": "6.1"})
    [prediction] = response.get_json()["results"]
    boxes = regions(prediction, "rectanglelabels")
    assert sorted((b["id"], b["from_name"], b["value"]["rectanglelabels"][0]) for b in boxes) == [
        ("face1", "boxes", "Head"), ("face1-more", "more", "face")]
    assert boxes[0]["value"]["x"] == boxes[1]["value"]["x"]
    points = regions(prediction, "keypointlabels")
    assert {(p["from_name"], p["parentID"]) for p in points} == {("landmarks", "face1")} and len(points) == 2
    # Grace Hopper is the project's first person: both identity controls show her, the Choice by its
    # predicted_values.
    assert regions(prediction, "textarea")[0]["value"]["text"] == ["person_1"]
    [choice] = regions(prediction, "choices")
    assert choice["id"] == "face1" and choice["value"]["choices"] == ["Grace"]

    # Identities rewritten later (recluster, the review page) change every identity control, and nothing else.
    spec = parse_label_config(config)
    renamed = relabel_identities(prediction["result"], spec, {"face1": "Grace Hopper"}.get)
    assert regions({"result": renamed}, "textarea")[0]["value"]["text"] == ["Grace Hopper"]
    assert regions({"result": renamed}, "choices") == []  # no Choice shows that name: the annotator picks one
    assert [r for r in renamed if r["type"] not in ("textarea", "choices")] == [
        r for r in prediction["result"] if r["type"] not in ("textarea", "choices")]
    unchanged = relabel_identities(prediction["result"], spec, {"face1": "person_1"}.get)
    assert unchanged == prediction["result"]


# Webhooks: an edited face box, Start Training ---------------------------------------------------------------

def face_of(prediction):
    [box] = [r for r in regions(prediction, "rectanglelabels") if r["id"] == "face1"]
    return box


def annotation_webhook(photos, name, task_id, project, result):
    return {"action": "ANNOTATION_UPDATED", "project": {"id": project, "label_config": SHIPPED},
            "task": {"id": task_id, "project": project, "data": {"image": str(photos / name)}},
            "annotation": {"id": task_id * 10, "result": result}}


def test_an_edited_face_box_is_described_anew(app, client, photos):
    project, store = "8", app.extensions["autoannotator"].store
    [prediction] = client.post("/predict", json={"tasks": [task(photos, "obama_1.jpg", 1)], "label_config": SHIPPED,
                                                  "project": f"{project}.1"}).get_json()["results"]
    face = face_of(prediction)
    before = store.faces(project).descriptors[0].copy()

    response = client.post("/webhook", json=annotation_webhook(photos, "obama_1.jpg", 1, int(project), [face]))
    assert response.status_code == 201 and response.get_json()["confirmed"] == 1
    assert np.array_equal(store.faces(project).descriptors[0], before)  # the box as predicted: nothing to do

    moved = json.loads(json.dumps(face))
    moved["value"]["x"] += moved["value"]["width"] * 0.3  # the annotator dragged it off the face's centre
    response = client.post("/webhook", json=annotation_webhook(photos, "obama_1.jpg", 1, int(project), [moved]))
    assert response.status_code == 201 and response.get_json()["confirmed"] == 1
    after = store.faces(project).descriptors[0]
    assert not np.allclose(after, before) and float(after @ before) > 0.5  # another crop of the same face
    width = size_of(photos, "obama_1.jpg")[0]
    assert abs(store.boxes(project, "1")["face1"][0] - moved["value"]["x"] / 100 * width) < 1e-3


def test_start_training_reclusters_the_project(client, photos, known):
    project = int(PROJECT.split(".")[0])
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert response.status_code == 201, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["status"] in ("started", "running"), answer
    if answer["status"] == "started":
        deadline = time.monotonic() + 120
        while (status := client.get(f"/recluster/{answer['job']}").get_json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["status"] == "done" and status["result"]["faces"] >= 3, status
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"title": "no id"}})
    assert response.status_code == 400 and "no project id" in response.get_json()["detail"]
