"""`autoannotator eval`: metrics against hand-computed cases, both ground-truth formats, and the command end to end."""
import json
import shutil
from collections import Counter

import cv2
import numpy as np
import pytest

from backend.cli import main as cli
from bench.wider_face_to_coco import convert as wider_face_to_coco
from backend.evaluation.evaluate import configurations, evaluate
from backend.evaluation.ground_truth import GroundTruthError, Objects, load_ground_truth, match_images
from backend.evaluation.metrics import (IGNORED, average_precision, bcubed_scores, detection_scores,
                                        identity_scores, landmark_errors, match_boxes, pairwise_scores)
from backend.evaluation.report import draw_pr_curves
from backend.vision.models import load_model
from sklearn.metrics.cluster import contingency_matrix

# Six faces of three people (A, A, A, B, B, C) put into two clusters: {A, A, A, B} and {B, C}.
TRUE_PEOPLE = ["A", "A", "A", "B", "B", "C"]
CLUSTERS = [1, 1, 1, 1, 2, 2]


def test_bcubed_on_a_tiny_clustering():
    precision, recall, f1 = bcubed_scores(contingency_matrix(TRUE_PEOPLE, CLUSTERS))
    # Per face, share of its cluster that is its person: A 3/4 (x3), B 1/4, B 1/2, C 1/2 -> 3.5 / 6.
    assert precision == pytest.approx(7 / 12)
    # Per face, share of its person in its cluster: A 1 (x3), B 1/2 (x2), C 1 -> 5 / 6.
    assert recall == pytest.approx(5 / 6)
    assert f1 == pytest.approx(35 / 51)


def test_pairwise_scores_on_a_tiny_clustering():
    precision, recall, _ = pairwise_scores(contingency_matrix(TRUE_PEOPLE, CLUSTERS))
    # Pairs put together: 6 in the first cluster + 1 in the second; of them one person: the 3 A-A pairs.
    # Pairs of one person: 3 A-A + 1 B-B.
    assert (precision, recall) == (pytest.approx(3 / 7), pytest.approx(3 / 4))


def test_merges_and_splits():
    scores = identity_scores(TRUE_PEOPLE, CLUSTERS)
    assert (scores.faces, scores.people, scores.clusters) == (6, 3, 2)
    assert scores.merges == 1  # B is spread over both clusters
    assert scores.splits == 2  # each cluster holds two people
    perfect = identity_scores(["x", "x", "y"], [7, 7, 3])
    assert (perfect.merges, perfect.splits) == (0, 0)
    assert perfect.bcubed == perfect.pairwise == (1.0, 1.0, 1.0)


def test_landmark_error_is_normalised_by_the_box_diagonal():
    truth = np.tile(np.array([[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]], np.float32), (3, 1, 1))
    predicted = truth + np.array([3, 4], np.float32)  # every point 5 px off
    predicted[1, 3:] = np.nan  # second face: only three points predicted (as BlazeFace gives)
    predicted[1, 0] += (6, 8)  # ... and its left eye 15 px off
    predicted[2] = np.nan  # third face: no landmarks at all
    boxes = np.array([[0, 0, 30, 40]] * 3, np.float32)  # diagonal 50
    errors = landmark_errors(predicted, truth, boxes)
    assert errors[0] == pytest.approx(5 / 50)
    assert errors[1] == pytest.approx((15 + 5 + 5) / 3 / 50)
    assert np.isnan(errors[2])


@pytest.fixture
def two_images():
    first = Objects.build([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 70, 70]], ignore=[False, False, True])
    second = Objects.build([[0, 0, 10, 10]])
    boxes = [np.array([[0, 0, 10, 10], [21, 21, 31, 31], [52, 52, 60, 60], [80, 80, 90, 90], [1, 1, 11, 11],
                       [0, 20, 10, 30]], np.float32), np.zeros((0, 4), np.float32)]
    scores = [np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1], np.float32), np.zeros(0, np.float32)]
    return [first, second], boxes, scores


def test_matching_and_fixes(two_images):
    truth, boxes, scores = two_images
    # 0.9 and 0.8 find the two faces (IoU 1 and 81/119); 0.7 lies on the don't-care region; 0.6 is nowhere;
    # 0.5 duplicates a face already taken; 0.1 touches nothing.
    assert match_boxes(truth[0], boxes[0], scores[0]).tolist() == [0, 1, IGNORED, -1, -1, -1]
    result = detection_scores(truth, boxes, scores, threshold=0.3)
    assert (result.shown, result.true, result.false, result.missing) == (5, 2, 2, 1)
    assert (result.recall, result.precision) == (pytest.approx(2 / 3), pytest.approx(2 / 4))


def test_average_precision_against_a_hand_count(two_images):
    truth, boxes, scores = two_images
    ap50, ap50_95, recall, precision = average_precision(truth, boxes, scores)
    # The two best boxes are right and nothing after them is: precision 1 up to recall 2/3, i.e. at 67 of
    # COCO's 101 recall points (0, 0.01, ..., 0.66), then nothing.
    assert ap50 == pytest.approx(67 / 101)
    assert recall.max() == pytest.approx(0.66) and (precision == 1).all()
    assert ap50_95 < ap50  # the second box (IoU 0.68) stops counting above IoU 0.65
    perfect = average_precision(truth, [t.boxes for t in truth], [np.ones(len(t)) for t in truth])
    assert perfect[:2] == (pytest.approx(1.0), pytest.approx(1.0))


def test_label_studio_export(tmp_path):
    size = {"original_width": 200, "original_height": 100}
    regions = [
        {"id": "f1", "type": "rectanglelabels", **size,
         "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "rectanglelabels": ["Face"]}},
        {"id": "f2", "type": "rectanglelabels", **size,
         "value": {"x": 60, "y": 20, "width": 10, "height": 20, "rotation": 0, "rectanglelabels": ["Face"]}},
        # Rotated 90 degrees clockwise about its top-left corner (100, 10): a 20x20 px box turns to its left.
        {"id": "p1", "type": "rectanglelabels", **size,
         "value": {"x": 50, "y": 10, "width": 10, "height": 20, "rotation": 90, "rectanglelabels": ["Person"]}},
        {"id": "k1", "parentID": "f1", "type": "keypointlabels", **size,
         "value": {"x": 25, "y": 40, "width": 0.5, "keypointlabels": ["left_eye"]}},
        {"id": "k2", "type": "keypointlabels", **size,  # no parentID: it lies inside f1 only
         "value": {"x": 30, "y": 45, "width": 0.5, "keypointlabels": ["nose"]}},
        {"id": "f1", "type": "textarea", **size, "value": {"text": ["alice"]}},
    ]
    export = [
        {"id": 1, "data": {"image": "/data/upload/1/1a2b3c4d-photo.jpg"},
         "annotations": [{"was_cancelled": True, "result": []}, {"was_cancelled": False, "result": regions}],
         "predictions": [{"result": [regions[1]]}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=set/unlabelled.jpg"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    (truth,) = load_ground_truth(path, face_labels=("face",), person_labels=("person",))
    assert truth.file_name == "1a2b3c4d-photo.jpg"
    np.testing.assert_allclose(truth.faces.boxes, [[20, 20, 80, 60], [120, 20, 140, 40]])
    np.testing.assert_allclose(truth.persons.boxes, [[80, 10, 100, 30]], atol=1e-4)
    assert truth.faces.identities == ["alice", None]
    np.testing.assert_allclose(truth.faces.landmarks[0, [0, 2]], [[50, 40], [60, 45]])
    assert np.isnan(truth.faces.landmarks[0, [1, 3, 4]]).all() and np.isnan(truth.faces.landmarks[1]).all()

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "photo.jpg").write_bytes(b"")
    pairs, missing = match_images([truth], tmp_path / "images")
    assert [p.name for _, p in pairs] == ["photo.jpg"] and missing == []


def test_coco_export(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "sub/a.jpg", "width": 100, "height": 100},
                   {"id": 8, "file_name": "b.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "face", "keypoints": ["nose", "left_eye", "right_eye"]},
                       {"id": 2, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0,
             "keypoints": [25, 30, 2, 15, 25, 2, 0, 0, 0], "attributes": {"identity": "bob", "occluded": False}},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [60, 60, 10, 10], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 50, 100], "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    first, second = load_ground_truth(path)
    assert first.file_name == "sub/a.jpg"
    np.testing.assert_allclose(first.faces.boxes, [[10, 20, 40, 60], [60, 60, 70, 70]])
    assert first.faces.ignore.tolist() == [False, True]
    assert first.faces.identities == ["bob", None]
    np.testing.assert_allclose(first.faces.landmarks[0, :3], [[15, 25], [np.nan, np.nan], [25, 30]])
    np.testing.assert_allclose(first.persons.boxes, [[0, 0, 50, 100]])
    assert len(second.faces) == 0 and len(second.persons) == 0  # an image with nothing on it is truth too

    path.write_text(json.dumps({"tasks": []}))
    with pytest.raises(GroundTruthError, match="neither a Label Studio"):
        load_ground_truth(path)


def test_wider_face_boxes_become_coco(tmp_path):
    lines = """0--Parade/0_Parade_a.jpg
2
10 20 30 40 0 0 0 0 0 0
5 5 8 8 2 0 0 0 1 0
1--Handshaking/1_Handshaking_b.jpg
0
0 0 0 0 0 0 0 0 0 0
2--Demonstration/2_Demonstration_c.jpg
1
50 60 20 25 0 0 0 1 0 0
""".splitlines()
    path = tmp_path / "wider.json"
    path.write_text(json.dumps(wider_face_to_coco(lines, min_size=10)))
    first, empty, last = load_ground_truth(path)
    assert (first.file_name, empty.file_name, last.file_name) == (
        "0--Parade/0_Parade_a.jpg", "1--Handshaking/1_Handshaking_b.jpg", "2--Demonstration/2_Demonstration_c.jpg")
    np.testing.assert_allclose(first.faces.boxes, [[10, 20, 40, 60], [5, 5, 13, 13]])
    assert first.faces.ignore.tolist() == [False, True]  # 8 px: under --min-size
    assert len(empty.faces) == 0
    assert last.faces.ignore.tolist() == [True]  # WIDER's "invalid" flag
    every_other = wider_face_to_coco(lines, every=2)
    assert [i["file_name"] for i in every_other["images"]] == ["0--Parade/0_Parade_a.jpg",
                                                                "2--Demonstration/2_Demonstration_c.jpg"]


def test_eval_command_refuses_what_it_cannot_score(tmp_path, photos, capsys):
    common = ["eval", "--gt", str(photos / "ground_truth_coco.json"), "--out", str(tmp_path / "report")]
    assert cli(common + ["--images", str(tmp_path)]) == 2
    assert "none of the 7 ground-truth images" in capsys.readouterr().err
    assert cli(common + ["--images", str(photos), "--presets", "no_such_preset"]) == 2
    assert "unknown preset 'no_such_preset'" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_eval_command_end_to_end(tmp_path, photos, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("obama_1.jpg", "grace_hopper.jpg", "street_bus.jpg"):
        shutil.copy(photos / name, images / name)
    out = tmp_path / "report"
    code = cli(["eval", "--gt", str(photos / "ground_truth_coco.json"), "--images", str(images), "--out", str(out),
                "--presets", "fast", "--flip", "off"])
    assert code == 0
    report = (out / "report.md").read_text()
    assert "4 ground-truth images not found" in report
    assert "Ground truth: 4 faces (4 with an identity, 4 people; 0 with landmarks), 6 persons" in report
    faces_table = report.split("## Faces")[1].split("##")[0]
    # BlazeFace full-range finds all four faces of these photos; the short-range model misses the small
    # faces on the street (it is made for faces within two metres of the camera).
    assert "| fast | 1.000 |" in faces_table and "| blazeface | 1.000 |" in faces_table
    assert "| blazeface_short | 1.000 |" not in faces_table
    for png in ("faces_pr.png", "persons_pr.png", "worst_misses.png"):
        image = cv2.imread(str(out / png))
        assert image is not None and image.shape[0] > 200 and image.std() > 10, png
    assert "fast" in capsys.readouterr().out


def one_class_coco(photos, path, kind: str):
    """The repository's ground truth with only the faces or only the persons, as a face-only (person-only)
    set would come: the other category is not even declared."""
    coco = json.loads((photos / "ground_truth_coco.json").read_text())
    keep = {c["id"] for c in coco["categories"] if c["name"] == kind}
    coco["categories"] = [c for c in coco["categories"] if c["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] in keep]
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def two_photos(tmp_path, photos):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("grace_hopper.jpg", "street_bus.jpg"):
        shutil.copy(photos / name, images / name)
    return images


def test_eval_on_face_only_ground_truth(tmp_path, photos, two_photos, capsys):
    gt = one_class_coco(photos, tmp_path / "faces.json", "face")
    out = tmp_path / "report"
    assert cli(["eval", "--gt", str(gt), "--images", str(two_photos), "--out", str(out), "--presets", "fast",
                "--flip", "off"]) == 0
    report = (out / "report.md").read_text()
    assert "The ground truth has no persons: people are not scored" in report
    assert "## People" not in report and "people missing" not in report and not (out / "persons_pr.png").exists()
    assert "| fast | 1.000 |" in report.split("## Faces")[1].split("##")[0]  # BlazeFace finds the 3 faces
    assert "## Identities" in report and "person AP50" not in capsys.readouterr().out


def test_eval_on_person_only_ground_truth(tmp_path, photos, two_photos, capsys):
    gt = one_class_coco(photos, tmp_path / "persons.json", "person")
    out = tmp_path / "report"
    assert cli(["eval", "--gt", str(gt), "--images", str(two_photos), "--out", str(out), "--presets", "fast",
                "--flip", "off"]) == 0
    report = (out / "report.md").read_text()
    assert "The ground truth has no faces: faces, landmarks and identities are not scored" in report
    assert "## Faces" not in report and "## Identities" not in report and not (out / "faces_pr.png").exists()
    people = report.split("## People")[1].split("##")[0]
    assert "| blazepose |" in people and "| fast |" in people
    # no face model runs: the search below faces (FACE_GUIDED_PERSONS) is off by default
    assert "| fast | – | blazepose | – | no |" in report
    assert "| blazeface |" not in report
    printed = capsys.readouterr().out
    assert "person AP50" in printed and "face AP50" not in printed


def test_pr_plot_of_boxes_without_truth_does_not_crash(tmp_path):
    # What crashed `eval` on a face-only COCO file after all the work: the person boxes it showed had no
    # truth to match, so recall and precision were NaN, and the plot's dot could not be placed.
    no_truth = detection_scores([Objects.build(np.zeros((0, 4)))], [np.array([[0, 0, 10, 10]], np.float32)],
                                [np.array([0.9], np.float32)], threshold=0.3)
    all_ignored = detection_scores([Objects.build([[0, 0, 10, 10]], ignore=[True])],
                                   [np.array([[0, 0, 10, 10]], np.float32)], [np.array([0.9], np.float32)], 0.3)
    assert no_truth.shown == all_ignored.shown == 1
    assert np.isnan(no_truth.recall) and np.isnan(all_ignored.precision)
    draw_pr_curves([("no truth", no_truth), ("all ignored", all_ignored)], "people", tmp_path / "pr.png")
    assert cv2.imread(str(tmp_path / "pr.png")) is not None


def test_each_model_runs_once_per_image_whatever_the_configurations(photos, two_photos, manifest, monkeypatch):
    import backend.evaluation.evaluate as evaluate_module
    from backend.config import Settings
    from backend.service.images import decode_image

    settings = Settings()
    load_image = lambda path: decode_image(path.read_bytes(), str(path), settings)  # noqa: E731
    pairs, _ = match_images(load_ground_truth(photos / "ground_truth_coco.json"), two_photos)
    whole_image_shapes = {load_image(path).pixels.shape for _, path in pairs}
    whole_image_runs = Counter()

    def counted(spec, models_dir):  # the real model; its runs on whole images are counted
        model = load_model(spec, models_dir)
        if spec.task != "descriptor":
            detect = model.detect

            def detect_and_count(image):
                if image.shape in whole_image_shapes:
                    whole_image_runs[spec.name, image.shape, hash(image.tobytes())] += 1
                return detect(image)
            model.detect = detect_and_count
        return model

    monkeypatch.setattr(evaluate_module, "load_model", counted)
    configs = configurations(manifest, settings, ["fast"], ["blazeface", "blazepose"], [False, True])
    assert len(configs) == 6
    steps = []

    class Recorder:
        def __init__(self, total):
            steps.append(total)

        def update(self, count=1):
            steps.append(count)

        def close(self):
            pass

    results = evaluate(pairs, configs, manifest, settings, load_image, Recorder, keep_shown=configs[-1])
    # fast uses blazeface, blazeface_short, blazepose and dlib_resnet; the single models are scored with the
    # default's descriptors (dlib_resnet and faceres): 2 images x 5 models
    assert steps[0] == 2 * 5 and sum(steps[1:]) == steps[0]
    assert len({(name, shape) for name, shape, _ in whole_image_runs}) == 3 * 2  # 3 detectors on 2 images ...
    assert Counter(whole_image_runs.values()) == {1: 3 * 2 * 2}  # ... once upright and once mirrored, no more
    assert [r.shown is not None for r in results] == [False] * 5 + [True]  # only the gallery's boxes are kept
    assert results[-1].configuration.name == "fast+flip" and len(results[-1].shown) == 2


def test_eval_leaves_out_the_slow_preset_unless_asked(tmp_path, photos, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photos / "grace_hopper.jpg", images)
    out = tmp_path / "report"
    assert cli(["eval", "--gt", str(photos / "ground_truth_coco.json"), "--images", str(images), "--out", str(out),
                "--flip", "off"]) == 0
    report = (out / "report.md").read_text()
    assert "presets not scored, slow: accurate (score with --accurate)" in report
    assert "| default |" in report and "| fast |" in report
    assert "accurate" not in report.split("## Configurations")[1] and "dlib_mmod" not in report


def test_eval_scores_reduced_images_in_the_image_pixels(tmp_path, photos, two_photos, monkeypatch):
    # Above MAX_WORK_PIXELS the service runs the models on a reduced image and scales boxes back; eval must
    # score those boxes against the truth in the image's own pixels, and draw them on the reduced pixels.
    out = {}
    for budget in ("16000000", "120000"):  # the photos whole, then at about 1/3 and 1/4 of their side
        monkeypatch.setenv("MAX_WORK_PIXELS", budget)
        out[budget] = tmp_path / budget
        assert cli(["eval", "--gt", str(photos / "ground_truth_coco.json"), "--images", str(two_photos),
                    "--out", str(out[budget]), "--presets", "fast", "--flip", "off", "--match-iou", "0.4"]) == 0
    whole, reduced = ((out[b] / "report.md").read_text() for b in ("16000000", "120000"))
    # BlazeFace still finds the three faces where they are: 3 shown, none missing, none false. (Reduced, the
    # street photo's faces are 12-15 px wide, and BlazeFace frames one at IoU 0.4-0.5 with its box; boxes
    # scaled back wrong would miss by far.)
    for report in (whole, reduced):
        assert "| 3 | 0 | 0 |" in next(line for line in report.split("## Faces")[1].splitlines()
                                      if line.startswith("| blazeface |"))
    assert cv2.imread(str(out["120000"] / "worst_misses.png")) is not None
