"""The vision pipeline on real photos with the default models: ensembles, alignment, identities."""
import json

import cv2
import numpy as np
import pytest

from backend.cli import main as cli
from backend.config import Settings
from backend.vision.alignment import ARCFACE_TEMPLATE_112, align_face, similarity_transform
from backend.vision.annotator import Annotator
from backend.vision.clustering import cluster_identities, identity_confidence
from backend.vision.detections import box_iou


@pytest.fixture(scope="module")
def annotator():
    return Annotator.from_settings(Settings())


def load(photos, name):
    return cv2.imread(str(photos / name))[..., ::-1].copy()


@pytest.fixture(scope="module")
def annotated(annotator, photos):
    names = ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "biden.jpg", "grace_hopper.jpg",
             "astronaut_eileen_collins.jpg", "street_bus.jpg"]
    return {name: annotator.annotate(load(photos, name)) for name in names}


def test_every_listed_face_is_found_once(annotated, faces_truth):
    # faces.json boxes are drawn by hand and roughly (see SOURCES.md): IoU 0.3 means "this face, once".
    for name, annotation in annotated.items():
        for truth in faces_truth[name]["faces"]:
            ious = box_iou(truth["box"], annotation.faces.boxes)[0]
            assert (ious >= 0.3).sum() == 1, f"{name}: {truth['box']} vs {annotation.faces.boxes.astype(int)}"


def test_fused_score_reflects_agreement(annotator, annotated):
    # Every default detector finds the portraits in both orientations, so their fused score stays high.
    for name in ("obama_1.jpg", "biden.jpg", "grace_hopper.jpg"):
        assert annotated[name].faces.scores.max() > 0.85, name
    assert annotator.faces.flip_tta and len(annotator.faces.detectors) == 3  # MTCNN and two BlazeFace models


def test_landmarks_are_complete_and_inside_the_face(annotated):
    for name, annotation in annotated.items():
        faces = annotation.faces
        assert faces.has_landmarks.all(), name  # MTCNN supplies the mouth corners the others lack
        for box, points in zip(faces.boxes, faces.landmarks):
            assert (points[:, 0] >= box[0]).all() and (points[:, 0] <= box[2]).all()
            assert (points[:, 1] >= box[1]).all() and (points[:, 1] <= box[3]).all()
            left_eye, right_eye, nose, mouth_left, mouth_right = points
            assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
            assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_alignment_puts_landmarks_on_the_template(annotated, photos):
    image = load(photos, "obama_1.jpg")
    landmarks = annotated["obama_1.jpg"].faces.landmarks[0]
    chip = align_face(image, landmarks)
    assert chip.shape == (112, 112, 3)
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    mapped = np.hstack([landmarks, np.ones((5, 1))]) @ matrix.T
    assert np.abs(mapped - ARCFACE_TEMPLATE_112).max() < 6  # a similarity cannot fit 5 points exactly
    # the eyes of the chip are darker than the skin between them
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(float)
    assert grey[48:56, 34:42].mean() < grey[40:48, 52:60].mean()


def test_identities_same_person_one_id_different_people_apart(annotator, annotated):
    names = ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "biden.jpg", "grace_hopper.jpg",
             "astronaut_eileen_collins.jpg"]
    identities = annotator.identify([annotated[n] for n in names])
    first = {n: int(labels[0]) for n, labels in zip(names, identities.labels)}
    assert first["obama_1.jpg"] == first["obama_2.jpg"] == first["obama_3.jpg"]
    others = [first[n] for n in names[3:]]
    assert len(set(others)) == 3 and first["obama_1.jpg"] not in others


def test_blurred_small_faces_get_low_identity_confidence(annotator, annotated, photos):
    # obama_1 shrunk to a quarter (a ~70 px face) and blurred: its descriptor drifts halfway to other people's.
    small = cv2.resize(load(photos, "obama_1.jpg"), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    degraded = annotator.annotate(cv2.GaussianBlur(small, (11, 11), 0))
    identities = annotator.identify([annotated["obama_2.jpg"], annotated["obama_3.jpg"], degraded])
    assert identities.confidence[0].max() > 0.8
    assert len(identities.confidence[2]) == 1 and identities.confidence[2][0] < 0.3
    assert degraded.quality[0] < 0.3 and annotated["obama_1.jpg"].quality[0] > 0.9


def test_clustering_by_hand():
    a, b = np.eye(3)[0], np.eye(3)[1]
    near_a = np.array([0.99, 0.14, 0]) / np.linalg.norm([0.99, 0.14, 0])
    labels = cluster_identities(np.array([a, near_a, b]), distance_threshold=0.1)
    assert labels[0] == labels[1] != labels[2]
    assert cluster_identities(np.zeros((0, 3)), 0.1).shape == (0,)
    confidence = identity_confidence(np.array([a, near_a, b]), labels, np.array([1.0, 0.5, 1.0]))
    assert confidence[0] > 0.95 and confidence[1] == pytest.approx(0.5 * confidence[0], rel=0.02)


def test_annotate_cli_writes_a_label_studio_import(photos, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "tasks.json"
    code = cli(["annotate", str(photos / "obama_1.jpg"), str(photos / "obama_3.jpg"), str(photos / "biden.jpg"),
                str(broken), "--out", str(out)])
    assert code == 0
    tasks = json.loads(out.read_text())
    assert [t["data"]["image"].rsplit("/", 1)[1] for t in tasks] == ["biden.jpg", "obama_1.jpg", "obama_3.jpg"]
    ids = {}
    for task in tasks:
        [prediction] = task["predictions"]
        assert prediction["model_version"].startswith("autoannotator-default")
        ids[task["data"]["image"].rsplit("/", 1)[1]] = [
            r["value"]["text"][0] for r in prediction["result"] if r["type"] == "textarea"]
    assert ids["obama_1.jpg"] == ids["obama_3.jpg"] and ids["obama_1.jpg"] != ids["biden.jpg"]
    assert "1 images failed" in capsys.readouterr().out


def test_face_guided_search_finds_people_of_a_group(photos, faces_truth):
    # The single-person pose detector (FACE_GUIDED_PERSONS is for it; the default's multi-person detectors
    # need no help) sees one of the two men with visible faces in the whole street photo; searching below
    # each face finds the other, and neither man gets two boxes.
    image = load(photos, "street_bus.jpg")
    truth = np.array([p["box"] for p in faces_truth["street_bus.jpg"]["people"]], dtype=float)
    guided = Annotator.from_settings(Settings(person_models=("blazepose",), face_guided_persons=True))
    persons = guided.annotate(image).persons
    matched = box_iou(truth, persons.boxes) >= 0.5
    assert matched[:2].any(axis=1).all(), persons.boxes.astype(int)
    assert matched.sum(axis=0).max() <= 1 and len(persons) == matched.any(axis=0).sum()
    unguided = Annotator.from_settings(Settings(person_models=("blazepose",), face_guided_persons=False))
    assert len(unguided.annotate(image).persons) == 1