"""Weighted boxes fusion against cases computed by hand and against the reference implementation
(ensemble-boxes, by the paper's authors) on the same inputs."""
import numpy as np
import pytest
from ensemble_boxes import weighted_boxes_fusion

from backend.vision.detections import FACE, PERSON, Detections, box_iou, nms
from backend.vision.fusion import CONF_TYPES, fuse_boxes


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


def reference_fusion(predictions, weights=None, iou_thr=0.55, skip_box_thr=0.0, conf_type="avg") -> np.ndarray:
    """The reference's answer as rows (label, score, x1, y1, x2, y2); our only difference: scores capped at 1."""
    boxes, scores, labels = weighted_boxes_fusion(
        [p.boxes.astype(np.float64) for p in predictions], [p.scores.astype(np.float64) for p in predictions],
        [p.labels for p in predictions], weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr,
        conf_type=conf_type)
    return np.column_stack([labels, np.minimum(scores, 1.0), boxes])


def in_rows(fused: Detections) -> np.ndarray:
    return np.column_stack([fused.labels, fused.scores, fused.boxes]).astype(np.float64)


def canonical(rows: np.ndarray) -> np.ndarray:
    """Rows in one order whatever the order of equal scores: by label, score (best first), x1, y1."""
    keys = np.round(rows, 5)
    return rows[np.lexsort((keys[:, 3], keys[:, 2], -keys[:, 1], keys[:, 0]))]


def assert_as_reference(predictions, **arguments):
    ours = in_rows(fuse_boxes(predictions, **arguments))
    expected = reference_fusion(predictions, **arguments)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(canonical(ours), canonical(expected), atol=1e-5)


def random_predictions(rng: np.random.Generator, models: int) -> list[Detections]:
    """Boxes of a few objects, each model finding some of them (several boxes per object at times), jittered,
    in [0, 1] coordinates as the reference expects; two labels."""
    objects = rng.integers(1, 6)
    centres = rng.uniform(0.2, 0.8, (objects, 2))
    sizes = rng.uniform(0.05, 0.3, (objects, 2))
    object_labels = rng.integers(0, 2, objects)
    predictions = []
    for _ in range(models):
        which = rng.integers(0, objects, rng.integers(0, 9))
        centre = centres[which] + rng.normal(0, 0.02, (len(which), 2))
        size = sizes[which] * rng.uniform(0.8, 1.25, (len(which), 2))
        boxes = np.clip(np.hstack([centre - size / 2, centre + size / 2]), 0, 1)
        predictions.append(Detections(boxes, rng.uniform(0.02, 1.0, len(which)), object_labels[which]))
    return predictions


@pytest.mark.parametrize("conf_type", CONF_TYPES)
@pytest.mark.parametrize("seed", range(40))
def test_random_inputs_fuse_as_the_reference(seed, conf_type):
    rng = np.random.default_rng(seed)
    models = int(rng.integers(1, 5))
    predictions = random_predictions(rng, models)
    weights = None if seed % 4 == 0 else rng.uniform(0.3, 3.0, models).round(2).tolist()
    assert_as_reference(predictions, weights=weights, iou_thr=float(rng.choice([0.3, 0.45, 0.55, 0.7])),
                        skip_box_thr=float(rng.choice([0.0, 0.1, 0.3])), conf_type=conf_type)


@pytest.mark.parametrize("conf_type", CONF_TYPES)
def test_one_model_voting_twice_for_a_cluster_scores_as_the_reference(conf_type):
    # Model A (weight 2) puts two boxes into one cluster, model B (weight 1) one box, model C (weight 0.5)
    # nothing: where the counts of boxes, of models and of absent models all differ.
    a = det([[0.10, 0.10, 0.30, 0.30], [0.12, 0.11, 0.31, 0.32], [0.60, 0.60, 0.70, 0.70]], [0.9, 0.5, 0.4])
    b = det([[0.11, 0.09, 0.29, 0.31]], [0.7])
    c = det([[0.62, 0.61, 0.72, 0.71]], [0.3], label=PERSON)  # on A's third box, but another label
    assert_as_reference([a, b, c], weights=[2, 1, 0.5], iou_thr=0.5, conf_type=conf_type)


def test_one_model_voting_twice_by_hand():
    a = det([[0.10, 0.10, 0.30, 0.30], [0.10, 0.10, 0.30, 0.30]], [0.9, 0.5])
    b = det([[0.10, 0.10, 0.30, 0.30]], [0.7])
    c = Detections.empty()
    weights = [2, 1, 0.5]
    # Weighted scores 1.8, 1.0, 0.7 from boxes of weights 2, 2, 1; models A and B voted, C is absent.
    scores = {conf_type: fuse_boxes([a, b, c], weights, conf_type=conf_type).scores[0] for conf_type in CONF_TYPES}
    assert scores["avg"] == pytest.approx(3.5 / 3 * 3 / 3.5)  # mean 3.5/3, times min(3 boxes, 3 models) / 3.5
    assert scores["max"] == pytest.approx(1.8 / 2)
    assert scores["box_and_model_avg"] == pytest.approx(3.5 / 5 * 3 / 3.5)
    assert scores["absent_model_aware_avg"] == pytest.approx(3.5 / (5 + 0.5))


def test_avg_above_one_is_capped_where_the_reference_passes_it():
    # A heavy model's two boxes in one cluster: mean weighted score 2 * 0.95, times min(2, 2) / (2 + 1) > 1.
    heavy = det([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3]], [0.95, 0.95])
    light = Detections.empty()
    _, reference_scores, _ = weighted_boxes_fusion([p.boxes for p in (heavy, light)],
                                                   [p.scores for p in (heavy, light)],
                                                   [p.labels for p in (heavy, light)], weights=[2, 1])
    assert reference_scores[0] == pytest.approx(2 * 0.95 * 2 / 3)
    fused = fuse_boxes([heavy, light], weights=[2, 1])
    assert fused.scores[0] == 1.0
    assert_as_reference([heavy, light], weights=[2, 1])


def test_box_of_no_area_is_skipped_as_by_the_reference():
    boxes = det([[0.1, 0.1, 0.1, 0.3], [0.5, 0.5, 0.6, 0.6]], [0.9, 0.8])
    with pytest.warns(UserWarning, match="Zero area"):
        assert_as_reference([boxes])
    assert len(fuse_boxes([boxes])) == 1


def test_body_keypoints_fuse_point_by_point_with_boxes_of_models_without_them():
    rng = np.random.default_rng(1)
    keypoints = rng.uniform(0, 100, (1, 17, 2)).astype(np.float32)
    with_points = det([[0, 0, 50, 100]], [0.8], label=PERSON, landmarks=keypoints)
    box_only = det([[2, 0, 52, 100]], [0.4], label=PERSON)  # (1, 5, 2) NaN: points unknown
    fused = fuse_boxes([with_points, box_only])
    assert fused.landmarks.shape == (1, 17, 2)
    np.testing.assert_allclose(fused.landmarks[0], keypoints[0], rtol=1e-6)  # the only model that knows them
    np.testing.assert_allclose(fused.boxes[0], [2 / 3, 0, 50 + 2 / 3, 100], rtol=1e-5)
