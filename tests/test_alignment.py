"""Face alignment: the least-squares similarity fit to the ArcFace template, on known transforms and a real face."""
import cv2
import numpy as np
import pytest

from backend.vision.alignment import ARCFACE_TEMPLATE_112, align_face, similarity_transform
from tests.conftest import MODELS_DIR, PHOTOS, read_rgb


def similarity(angle_degrees: float, scale: float, shift) -> np.ndarray:
    angle = np.radians(angle_degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, np.asarray(shift, np.float64)[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The same fit by a generic solver: u = c x - s y + tx, v = s x + c y + ty is linear in (c, s, tx, ty)."""
    x, y = src.T
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.vstack([np.column_stack([x, -y, ones, zeros]), np.column_stack([y, x, zeros, ones])])
    (c, s, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    return np.array([[c, -s, tx], [s, c, ty]])


@pytest.mark.parametrize("angle, scale, shift", [(0, 1, (0, 0)), (30, 2.5, (-40, 17)), (-170, 0.31, (250, -3)),
                                                 (90, 7.0, (1000.5, 2000.25))])
def test_a_known_similarity_is_recovered_exactly(angle, scale, shift):
    # Landmarks in a photo = the template moved by a known similarity; the fit must give back its inverse.
    known = similarity(angle, scale, shift)
    landmarks = apply(known, ARCFACE_TEMPLATE_112)
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(apply(matrix, landmarks), ARCFACE_TEMPLATE_112, atol=1e-6)
    np.testing.assert_allclose(matrix[:, :2] @ known[:, :2], np.eye(2), atol=1e-9)


def test_noisy_points_give_the_least_squares_fit():
    rng = np.random.default_rng(0)
    for _ in range(20):
        landmarks = apply(similarity(rng.uniform(-180, 180), rng.uniform(0.2, 5), rng.uniform(-500, 500, 2)),
                          ARCFACE_TEMPLATE_112) + rng.normal(0, 4, (5, 2))
        matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
        np.testing.assert_allclose(matrix, least_squares_similarity(landmarks, ARCFACE_TEMPLATE_112), atol=1e-9)
        # and it is a similarity: equal scale on both axes, no shear, no reflection
        (c, minus_s), (s, c2) = matrix[:, :2]
        assert c == pytest.approx(c2) and s == pytest.approx(-minus_s)


def test_one_point_off_moves_the_fit_as_least_squares_does():
    # A robust fit (LMEDS) would vote a misplaced mouth corner out and fit the other four exactly; the
    # least-squares fit the template was made with spreads the error over all five.
    landmarks = ARCFACE_TEMPLATE_112.astype(np.float64).copy()
    landmarks[4] += (12, 9)
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(matrix, least_squares_similarity(landmarks, ARCFACE_TEMPLATE_112), atol=1e-9)
    assert np.abs(apply(matrix, landmarks[:4]) - ARCFACE_TEMPLATE_112[:4]).max() > 0.5


def test_missing_landmarks_are_left_out():
    known = similarity(-25, 1.7, (60, 80))
    landmarks = apply(known, ARCFACE_TEMPLATE_112)
    landmarks[3:] = np.nan  # no mouth corners, as dlib's and BlazeFace's landmarks
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    full = apply(known, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(apply(matrix, full), ARCFACE_TEMPLATE_112, atol=1e-6)  # exact: the same transform
    landmarks[1:] = np.nan
    with pytest.raises(ValueError, match="degenerate: 1 known"):
        similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.full((5, 2), 40.0), ARCFACE_TEMPLATE_112)  # every point in one place


@pytest.fixture(scope="module")
def real_face(manifest):
    from backend.vision.models import load_model

    image = read_rgb(PHOTOS / "obama_1.jpg")
    faces = load_model(manifest["mtcnn"], MODELS_DIR).detect(image)
    best = int(np.argmax(faces.scores))
    assert faces.has_landmarks[best]
    return image, faces.landmarks[best].astype(np.float64)


def test_real_face_lands_on_the_template(real_face):
    image, landmarks = real_face
    chip = align_face(image, landmarks)
    assert chip.shape == (112, 112, 3)
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(matrix, least_squares_similarity(landmarks, ARCFACE_TEMPLATE_112), atol=1e-9)
    assert np.abs(apply(matrix, landmarks) - ARCFACE_TEMPLATE_112).max() < 6  # 5 points, 4 parameters
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(float)
    assert grey[48:56, 34:42].mean() < grey[40:48, 52:60].mean()  # eyes darker than the skin between them


def test_alignment_undoes_a_rotation_of_the_photo(real_face):
    # Rotate and shrink the photo about the face by a known amount: the chip must come out as before.
    image, landmarks = real_face
    centre = tuple(landmarks.mean(axis=0))
    turn = cv2.getRotationMatrix2D(centre, 35, 0.8)
    turned = cv2.warpAffine(image, turn, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR)
    upright, rotated = align_face(image, landmarks), align_face(turned, apply(turn, landmarks))
    difference = np.abs(upright.astype(float) - rotated.astype(float))[8:104, 8:104]  # away from the borders
    assert difference.mean() < 6, difference.mean()


def test_three_landmarks_give_nearly_the_five_point_chip(real_face):
    image, landmarks = real_face
    partial = landmarks.copy()
    partial[3:] = np.nan
    from_three = similarity_transform(partial, ARCFACE_TEMPLATE_112)
    # the eyes and nose of the real face land within a few pixels of the template from three points too
    assert np.abs(apply(from_three, landmarks[:3]) - ARCFACE_TEMPLATE_112[:3]).max() < 6
    assert align_face(image, partial).shape == (112, 112, 3)


def test_a_smaller_face_scale_keeps_the_face_centred_with_more_around_it(real_face):
    # face_scale 0.5 on a chip twice the size is the same face at the same size, with as much again around it:
    # its middle half must be the 112-px ArcFace chip.
    image, landmarks = real_face
    chip, wide = align_face(image, landmarks, 112), align_face(image, landmarks, 224, face_scale=0.5)
    assert wide.shape == (224, 224, 3)
    difference = np.abs(wide[56:168, 56:168].astype(float) - chip.astype(float))[4:108, 4:108]
    assert difference.mean() < 3, difference.mean()
