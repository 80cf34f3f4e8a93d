"""Weighted boxes fusion against cases computed by hand."""
import numpy as np
import pytest

from backend.vision.detections import FACE, PERSON, Detections, box_iou, nms
from backend.vision.fusion import fuse_boxes


def det(boxes, scores, label=FACE, landmarks=None):
    return Detections(np.array(boxes, float), np.array(scores, float), label, landmarks)


def test_two_models_agreeing_average_by_score():
    # Model A: (0,0,10,10) score 0.9; model B: (2,2,12,12) score 0.6. IoU = 64/136 = 0.47 > 0.4.
    fused = fuse_boxes([det([[0, 0, 10, 10]], [0.9]), det([[2, 2, 12, 12]], [0.6])], iou_thr=0.4)
    assert len(fused) == 1
    # coordinates: (0.9*0 + 0.6*2) / 1.5 = 0.8 ; (0.9*10 + 0.6*12) / 1.5 = 10.8
    np.testing.assert_allclose(fused.boxes[0], [0.8, 0.8, 10.8, 10.8], atol=1e-5)
    # score: mean 0.75, both of 2 models voted -> 0.75 * 2 / 2
    assert fused.scores[0] == pytest.approx(0.75)


def test_box_found_by_one_model_of_three_is_scored_down():
    alone = det([[50, 50, 60, 60]], [0.9])
    fused = fuse_boxes([alone, Detections.empty(), Detections.empty()])
    assert len(fused) == 1
    assert fused.scores[0] == pytest.approx(0.9 / 3)
    np.testing.assert_allclose(fused.boxes[0], [50, 50, 60, 60])


def test_weights_scale_votes():
    # A weighted 3, B weighted 1: coordinates weighted by score*weight = 0.6 and 0.2.
    fused = fuse_boxes([det([[0, 0, 10, 10]], [0.2]), det([[1, 1, 11, 11]], [0.2])], weights=[3, 1], iou_thr=0.5)
    np.testing.assert_allclose(fused.boxes[0], [0.25, 0.25, 10.25, 10.25], atol=1e-5)
    # mean weighted score (0.6+0.2)/2 = 0.4, times min(2,2) / sum(weights)=4 -> 0.2
    assert fused.scores[0] == pytest.approx(0.2)


def test_non_overlapping_boxes_and_labels_stay_apart():
    a = Detections.concat([det([[0, 0, 10, 10]], [0.8]), det([[0, 0, 10, 10]], [0.7], label=PERSON)])
    b = det([[100, 100, 110, 110]], [0.5])
    fused = fuse_boxes([a, b])
    assert sorted(fused.labels.tolist()) == [FACE, FACE, PERSON]
    assert len(fused) == 3


def test_landmarks_fused_point_by_point_ignoring_missing():
    nan = np.nan
    lm_a = [[[2, 3], [8, 3], [5, 5], [3, 8], [7, 8]]]
    lm_b = [[[4, 3], [10, 3], [7, 5], [nan, nan], [nan, nan]]]  # B knows no mouth corners
    fused = fuse_boxes([det([[0, 0, 10, 10]], [0.75], landmarks=lm_a), det([[0, 0, 10, 10]], [0.25], landmarks=lm_b)])
    # eyes and nose: 0.75 * A + 0.25 * B; mouth: A alone
    np.testing.assert_allclose(fused.landmarks[0, 0], [2.5, 3])
    np.testing.assert_allclose(fused.landmarks[0, 2], [5.5, 5])
    np.testing.assert_allclose(fused.landmarks[0, 3], [3, 8])


def test_landmark_unknown_to_every_model_stays_nan():
    fused = fuse_boxes([det([[0, 0, 10, 10]], [0.9])])
    assert np.isnan(fused.landmarks).all()


def test_skip_threshold_and_bad_arguments():
    fused = fuse_boxes([det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.05])], skip_box_thr=0.1)
    assert len(fused) == 1
    with pytest.raises(ValueError, match="conf_type"):
        fuse_boxes([det([[0, 0, 1, 1]], [1.0])], conf_type="median")
    with pytest.raises(ValueError, match="weights"):
        fuse_boxes([det([[0, 0, 1, 1]], [1.0])], weights=[1, 2])


def test_cluster_grows_by_its_running_average():
    # Three boxes in score order; the third overlaps the fused (average) box, not the first box alone.
    boxes = [[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]]
    # IoU(first, third) = 20/180 = 0.11 < 0.2, but IoU(fused first two = 2..12, third) = 40/160 = 0.25 > 0.2.
    fused = fuse_boxes([det([b], [0.9]) for b in boxes], iou_thr=0.2)
    assert len(fused) == 1
    np.testing.assert_allclose(fused.boxes[0], [4, 0, 14, 10], atol=1e-5)


def test_box_iou_and_nms():
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    kept = nms(det([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7]), 0.5)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7])


def test_flip_swaps_left_and_right_landmarks():
    lm = [[[2, 3], [8, 3], [5, 5], [3, 8], [7, 8]]]
    flipped = det([[1, 0, 9, 10]], [0.9], landmarks=lm).flipped(20)
    np.testing.assert_allclose(flipped.boxes[0], [11, 0, 19, 10])
    # the old right eye (x=8) becomes the new left eye at 20-8=12
    np.testing.assert_allclose(flipped.landmarks[0, 0], [12, 3])
    np.testing.assert_allclose(flipped.landmarks[0, 3], [13, 8])
