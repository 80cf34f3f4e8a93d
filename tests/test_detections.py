"""Detections: arrays of the wrong shape are refused, not reshaped; landmarks and keypoints of any count."""
import numpy as np
import pytest

from backend.vision.detections import (BODY_KEYPOINT_NAMES, FACE, LANDMARK_NAMES, PERSON, Detections,
                                       mirrored_order)

BOXES = np.array([[0, 0, 10, 10], [20, 20, 40, 50]], np.float32)


@pytest.mark.parametrize("field, value, message", [
    ("boxes", np.arange(8.0), r"boxes: expected shape \(N, 4\), got \(8,\)"),
    ("boxes", np.zeros((2, 5)), r"boxes: expected shape \(N, 4\), got \(2, 5\)"),
    ("boxes", np.zeros((1, 2, 4)), r"boxes: expected shape \(N, 4\), got \(1, 2, 4\)"),
    ("scores", np.ones((2, 1)), r"scores: expected shape \(2,\) for 2 boxes, got \(2, 1\)"),
    ("scores", np.ones(3), r"scores: expected shape \(2,\) for 2 boxes, got \(3,\)"),
    ("labels", np.zeros(3, int), r"labels: expected shape \(2,\) for 2 boxes or one label, got \(3,\)"),
    ("landmarks", np.zeros((2, 10)), r"landmarks: expected shape \(2, K, 2\) for 2 boxes, got \(2, 10\)"),
    ("landmarks", np.zeros((2, 5, 3)), r"landmarks: expected shape \(2, K, 2\) for 2 boxes, got \(2, 5, 3\)"),
    ("landmarks", np.zeros((1, 5, 2)), r"landmarks: expected shape \(2, K, 2\) for 2 boxes, got \(1, 5, 2\)"),
])
def test_wrong_shapes_are_refused_with_the_field_the_expected_and_the_actual_shape(field, value, message):
    arrays = {"boxes": BOXES, "scores": np.array([0.9, 0.8]), "labels": FACE, "landmarks": None, field: value}
    with pytest.raises(ValueError, match=message):
        Detections(**arrays)


def test_right_shapes_are_kept():
    one_label = Detections(BOXES, [0.9, 0.8], PERSON)
    assert one_label.labels.tolist() == [PERSON, PERSON]
    assert one_label.landmarks.shape == (2, 5, 2) and np.isnan(one_label.landmarks).all()
    per_box = Detections(BOXES, [0.9, 0.8], [FACE, PERSON], np.zeros((2, 17, 2)))
    assert per_box.labels.tolist() == [FACE, PERSON] and per_box.landmarks.shape == (2, 17, 2)
    empty = Detections.empty()
    assert (empty.boxes.shape, empty.scores.shape, empty.landmarks.shape) == ((0, 4), (0,), (0, 5, 2))
    assert len(Detections(np.zeros((0, 4)), [], FACE, np.zeros((0, 17, 2)))) == 0


def test_keypoints_of_any_count_with_nan_survive_selection_scaling_and_clipping():
    keypoints = np.random.default_rng(0).uniform(0, 50, (2, 17, 2)).astype(np.float32)
    keypoints[1, 5:] = np.nan  # the lower body hidden
    people = Detections(BOXES, [0.9, 0.8], PERSON, keypoints)
    second = people[1]
    assert second.landmarks.shape == (1, 17, 2)
    np.testing.assert_array_equal(second.landmarks[0], keypoints[1])
    scaled = people.scaled(2, 3, 10, 20)
    np.testing.assert_allclose(scaled.landmarks[0], keypoints[0] * [2, 3] + [10, 20])
    assert np.isnan(scaled.landmarks[1, 5:]).all() and not people.has_landmarks[1] and people.has_landmarks[0]
    assert people.clipped(30, 30).valid().landmarks.shape == (2, 17, 2)


def test_mirroring_swaps_left_and_right_body_keypoints():
    names = BODY_KEYPOINT_NAMES
    keypoints = np.zeros((1, 17, 2), np.float32)
    keypoints[0, :, 0] = np.arange(17)  # x = the keypoint's index, so the swap can be read off
    mirrored = Detections(BOXES[:1], [0.9], PERSON, keypoints).flipped(100)
    after = {name: 100 - mirrored.landmarks[0, i, 0] for i, name in enumerate(names)}
    assert after["nose"] == names.index("nose")
    assert after["left_shoulder"] == names.index("right_shoulder")
    assert after["right_ankle"] == names.index("left_ankle")
    assert mirrored_order(LANDMARK_NAMES) == [1, 0, 2, 4, 3]


def test_mirroring_refuses_points_whose_sides_are_unknown():
    known = Detections(BOXES, [0.9, 0.8], FACE, np.ones((2, 7, 2)))
    with pytest.raises(ValueError, match="cannot mirror 7 points"):
        known.flipped(100)
    unknown = Detections(BOXES, [0.9, 0.8], FACE, np.full((2, 7, 2), np.nan))
    assert np.isnan(unknown.flipped(100).landmarks).all()


def test_concatenation_takes_point_less_parts_and_refuses_mixed_point_sets():
    with_points = Detections(BOXES, [0.9, 0.8], PERSON, np.ones((2, 17, 2)))
    box_only = Detections(BOXES[:1], [0.5], PERSON)  # (1, 5, 2) NaN: no point known
    joined = Detections.concat([box_only, with_points, Detections.empty()])
    assert joined.landmarks.shape == (3, 17, 2)
    assert np.isnan(joined.landmarks[0]).all() and (joined.landmarks[1:] == 1).all()
    faces = Detections(BOXES, [0.9, 0.8], FACE, np.ones((2, 5, 2)))
    with pytest.raises(ValueError, match="5 and 17 points"):
        Detections.concat([faces, with_points])
