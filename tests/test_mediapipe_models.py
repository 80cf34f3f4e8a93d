"""The MediaPipe detectors run with LiteRT: anchors, decoding, the PERSON box rule, and real photos."""

import cv2
import numpy as np
import pytest

from backend.vision.detections import FACE, PERSON, box_iou
from backend.vision.models.blazeface import FACE_ANCHOR_OPTIONS, BlazeFace
from backend.vision.models.mediapipe_ssd import decode_ssd, ssd_anchor_centres, weighted_nms
from backend.vision.models.blazepose import POSE_ANCHOR_OPTIONS, person_boxes
from tests.conftest import MODELS_DIR, background_crops, load_models, read_rgb

FACE_MODELS = ("blazeface", "blazeface_short")

# Share of the people listed in faces.json (photos with several people) that BlazePose must box at
# IoU >= 0.5. Measured: 1 of 4 on street_bus.jpg (the man in the beige coat; the detector does not
# fire on the other three, who are smaller or cut off by the frame), so this only guards against a
# regression to none.
PERSON_RECALL = 0.25
# The short-range model is meant for faces near the camera; faces narrower than this share of the
# image's longer side are too small for its 128 px input (street_bus.jpg's faces are 5-6 %).
SHORT_RANGE_MIN_FACE = 0.10


@pytest.fixture(scope="module")
def detectors(manifest):
    return load_models(manifest, (*FACE_MODELS, "blazepose"))


# --- anchors and decoding -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "input_size, options, count",
    [(128, FACE_ANCHOR_OPTIONS["short_range"], 896), (192, FACE_ANCHOR_OPTIONS["full_range"], 2304),
     (224, POSE_ANCHOR_OPTIONS, 2254)],
)
def test_anchor_counts_match_the_models(input_size, options, count):
    assert ssd_anchor_centres(input_size, **options).shape == (count, 2)


def test_anchor_centres_by_hand():
    short = ssd_anchor_centres(128, **FACE_ANCHOR_OPTIONS["short_range"])
    # stride 8: a 16x16 grid, two anchors per cell, row by row
    np.testing.assert_allclose(short[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[1], short[0])
    np.testing.assert_allclose(short[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[2 * 16], [0.5 / 16, 1.5 / 16])  # second row
    # the three stride-16 layers share an 8x8 grid: six anchors per cell, starting after 512
    np.testing.assert_allclose(short[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(short[518], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(short[-1], [7.5 / 8, 7.5 / 8])

    full = ssd_anchor_centres(192, **FACE_ANCHOR_OPTIONS["full_range"])
    np.testing.assert_allclose(full[48], [0.5 / 48, 1.5 / 48])  # one anchor per cell of a 48x48 grid

    pose = ssd_anchor_centres(224, **POSE_ANCHOR_OPTIONS)
    np.testing.assert_allclose(pose[28 * 28 * 2], [0.5 / 14, 0.5 / 14])  # first of the 14x14 grid
    np.testing.assert_allclose(pose[28 * 28 * 2 + 14 * 14 * 2 + 6], [1.5 / 7, 0.5 / 7])  # 7x7 grid, 6 per cell


def test_decode_one_row_by_hand():
    # anchor at the centre; box centre 12.8 px right of it, 25.6 px square; keypoint 6.4 px up-left
    row = np.array([[12.8, 0.0, 25.6, 25.6, -6.4, -6.4]], np.float32)
    boxes, keypoints = decode_ssd(row, np.array([[0.5, 0.5]], np.float32), 128)
    np.testing.assert_allclose(boxes, [[0.5, 0.4, 0.7, 0.6]], atol=1e-6)
    np.testing.assert_allclose(keypoints, [[[0.45, 0.45]]], atol=1e-6)


def test_weighted_nms_blends_a_cluster_and_keeps_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
    keypoints = np.array([[[5, 5]], [[7, 5]], [[55, 55]]], np.float32)
    scores = np.array([0.6, 0.2, 0.5], np.float32)
    kept_boxes, kept_keypoints, kept_scores = weighted_nms(boxes, keypoints, scores, 0.3)
    np.testing.assert_allclose(kept_scores, [0.6, 0.5])
    np.testing.assert_allclose(kept_boxes, [[0.5, 0, 10.5, 10], [50, 50, 60, 60]])  # 3:1 score-weighted mean
    np.testing.assert_allclose(kept_keypoints, [[[5.5, 5]], [[55, 55]]])


def test_person_box_of_an_upright_and_of_a_leaning_person():
    # hips at (100, 200), scale point 100 px above: r = 100, head to feet 100..300, 0.7 r wide
    face = np.array([[85, 110, 115, 140]], np.float32)
    upright = np.array([[[100, 200], [100, 100], [100, 150], [100, 60]]], np.float32)
    np.testing.assert_allclose(person_boxes(face, upright), [[65, 100, 135, 300]], atol=1e-4)
    # torso leaning right by 45 degrees: the head moves right, the legs still hang straight down
    leaning = upright.copy()
    leaning[0, 1] = [100 + 100 / np.sqrt(2), 200 - 100 / np.sqrt(2)]
    x1, y1, x2, y2 = person_boxes(face, leaning)[0]
    assert x2 > 135 + 60 and y1 > 100 and y2 == pytest.approx(300) and x1 == pytest.approx(65, abs=1e-3)


def test_wrong_variant_for_the_file_is_refused(manifest):
    from dataclasses import replace

    mixed_up = replace(manifest["blazeface"], options={"variant": "short_range"})  # full-range file
    with pytest.raises(ValueError):
        BlazeFace(mixed_up, MODELS_DIR)


# --- faces on real photos ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", FACE_MODELS)
def test_blazeface_finds_the_listed_faces_with_their_landmarks(name, detectors, photos, faces_truth):
    found = expected = 0
    for file, truth in faces_truth.items():
        image = read_rgb(photos / file)
        faces = np.array([face["box"] for face in truth["faces"]], np.float32).reshape(-1, 4)
        if name == "blazeface_short":
            faces = faces[(faces[:, 2] - faces[:, 0]) >= SHORT_RANGE_MIN_FACE * max(image.shape[:2])]
        detections = detectors[name].detect(image)
        assert (detections.labels == FACE).all()
        for face in faces:
            expected += 1
            overlaps = box_iou(face, detections.boxes)[0]
            assert overlaps.size and overlaps.max() >= 0.4, f"{name} missed the face {face} in {file}"
            found += 1
            match = detections[int(overlaps.argmax())]
            x1, y1, x2, y2 = match.boxes[0]
            left_eye, right_eye, nose, mouth_left, mouth_right = match.landmarks[0]
            for point in (left_eye, right_eye, nose):
                assert x1 <= point[0] <= x2 and y1 <= point[1] <= y2, f"{file}: landmark outside its box"
            assert left_eye[0] < right_eye[0], f"{file}: left_eye must be the image-left eye"
            assert np.isnan(mouth_left).all() and np.isnan(mouth_right).all()
    assert expected >= 6 and found == expected  # the photo set really exercised the detector


@pytest.mark.parametrize("name", FACE_MODELS)
def test_blazeface_finds_no_face_without_people(name, detectors, photos):
    for region, image in background_crops(photos).items():
        assert len(detectors[name].detect(image)) == 0, f"{name} boxed a face in the {region}"
    assert len(detectors[name].detect(np.full((300, 400, 3), 128, np.uint8))) == 0


# --- people on real photos ---------------------------------------------------------------------------

def test_blazepose_boxes_the_people_of_group_photos(detectors, photos, faces_truth):
    found = listed = 0
    for file, truth in faces_truth.items():
        if len(truth["people"]) < 2:
            continue
        people = np.array([person["box"] for person in truth["people"]], np.float32)
        detections = detectors["blazepose"].detect(read_rgb(photos / file))
        assert (detections.labels == PERSON).all() and np.isnan(detections.landmarks).all()
        overlaps = box_iou(people, detections.boxes).reshape(len(people), len(detections))
        listed += len(people)
        found += int((overlaps >= 0.5).any(axis=1).sum())
        # nothing boxed that is not a person (the bus, for one)
        assert (overlaps.max(axis=0, initial=0) >= 0.3).all(), f"{file}: a box on no listed person"
    assert listed >= 4
    assert found / listed >= PERSON_RECALL, f"{found} of {listed} people found"


def test_blazepose_boxes_the_whole_body_in_portraits(detectors, photos, faces_truth):
    portraits = [file for file, truth in faces_truth.items() if len(truth["faces"]) == 1 and not truth["people"]]
    assert len(portraits) >= 4
    for file in portraits:
        image = read_rgb(photos / file)
        face = np.array(faces_truth[file]["faces"][0]["box"], np.float32)
        detections = detectors["blazepose"].detect(image)
        assert len(detections) == 1, f"{file}: {len(detections)} people"
        x1, y1, x2, y2 = detections.boxes[0]
        # the body box holds the face and reaches well below it (to the frame's bottom or the legs)
        assert x1 <= face[0] + 0.2 * (face[2] - face[0]) and face[2] - 0.2 * (face[2] - face[0]) <= x2
        assert y1 <= face[1] + 0.2 * (face[3] - face[1])
        assert y2 - face[3] >= 2 * (face[3] - face[1]) or y2 >= image.shape[0] - 1
        assert 0 <= x1 and 0 <= y1 and x2 <= image.shape[1] and y2 <= image.shape[0]  # clipped to the image


def test_blazepose_boxes_nothing_without_people(detectors, photos):
    for region, image in background_crops(photos).items():
        assert len(detectors["blazepose"].detect(image)) == 0, f"a person boxed in the {region}"
    assert len(detectors["blazepose"].detect(np.full((300, 400, 3), 128, np.uint8))) == 0


# --- coordinates ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("file, scale, left, top", [("biden.jpg", 0.6, 80, 40), ("grace_hopper.jpg", 0.5, 400, 0)])
@pytest.mark.parametrize("name", (*FACE_MODELS, "blazepose"))
def test_outputs_are_in_the_pixels_of_the_given_image(name, file, scale, left, top, detectors, photos):
    """A resized copy pasted into a larger grey canvas (another aspect ratio, content off the origin)
    gives the same objects once its coordinates are mapped back."""
    image = read_rgb(photos / file)
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((small.shape[0] + top, small.shape[1] + left, 3), 114, np.uint8)
    canvas[top:, left:] = small
    original = detectors[name].detect(image)
    moved = detectors[name].detect(canvas)
    assert len(original) == len(moved) == 1
    mapped_back = moved.scaled(1 / scale, 1 / scale, -left / scale, -top / scale)
    assert box_iou(original.boxes, mapped_back.boxes)[0, 0] >= 0.75
    if name in FACE_MODELS:
        face_width = original.boxes[0, 2] - original.boxes[0, 0]
        drift = np.abs(original.landmarks[0, :3] - mapped_back.landmarks[0, :3]).max()
        assert drift <= 0.08 * face_width
