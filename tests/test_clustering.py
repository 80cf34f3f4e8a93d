"""Quality-aware identity clustering (backend.vision.clustering) on real faces: the test photos' people, each
also shrunk, blurred and darkened as bench/identity_sequence.py does, through the default face ensemble and
descriptors."""
import json

import cv2
import numpy as np
import pytest

from backend.evaluation.metrics import identity_scores
from backend.vision.clustering import ANCHOR_QUALITY, UNCERTAIN_REACH, cluster_identities, nearest_clusters
from backend.vision.ensemble import DescriptorEnsemble, DetectorEnsemble
from backend.vision.models import load_model
from backend.vision.quality import face_quality
from tests.conftest import MODELS_DIR, PHOTOS, read_rgb

# (face width in px or None for the photo as it is, blurred, dark): a few of the benchmark's degradations
DEGRADATIONS = [(None, False, False), (72, False, False), (48, True, False), (32, False, True), (32, True, False),
                (24, True, True), (24, False, True)]


@pytest.fixture(scope="module")
def degraded_faces(manifest):
    """(descriptors, quality, people) of the known person's face in every degraded copy of every test photo
    where the default face ensemble finds it."""
    default = manifest.preset("default")
    finder = DetectorEnsemble([load_model(spec, MODELS_DIR) for spec in default["face"]], True, 0.4)
    describer = DescriptorEnsemble([load_model(spec, MODELS_DIR) for spec in default["descriptor"]])
    rng = np.random.default_rng(0)
    descriptors, quality, people = [], [], []
    for name, photo in json.loads((PHOTOS / "faces.json").read_text()).items():
        known = [face for face in photo["faces"] if not face["person"].startswith("bus_")]
        if not known:
            continue
        [face] = known
        original = read_rgb(PHOTOS / name)
        for width, blurred, dark in DEGRADATIONS:
            scale = 1.0 if width is None else width / (face["box"][2] - face["box"][0])
            pixels = original if width is None else cv2.resize(original, None, fx=scale, fy=scale,
                                                                interpolation=cv2.INTER_AREA)
            if blurred:
                pixels = cv2.GaussianBlur(pixels, (0, 0), 1.2)
            if dark:
                pixels = np.clip(pixels * 0.25 + rng.normal(0, 2, pixels.shape), 0, 255).astype(np.uint8)
            pixels = np.ascontiguousarray(pixels)
            found = finder.detect(pixels)
            box = np.array(face["box"], dtype=float) * scale
            centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
            inside = np.flatnonzero(((centres >= box[:2]) & (centres <= box[2:])).all(axis=1) & (found.scores >= 0.3))
            if not len(inside):
                continue
            best = found[inside[np.argmax(found.scores[inside])]:][:1]
            descriptors.append(describer.embed(pixels, best)[0])
            quality.append(face_quality(pixels, best, 32)[0])
            people.append(face["person"])
    assert len(people) >= 36  # of 42: the ensemble misses few of these faces
    return np.array(descriptors), np.array(quality), people, describer.identity_distance


def test_poor_faces_no_longer_mix_people(degraded_faces):
    # Average linkage of all faces at once let blurred and dark faces, which lie near everyone, pull faces of
    # others into a cluster; with the sharp faces clustered first, no cluster holds two people, and more of each
    # person's faces share a cluster.
    descriptors, quality, people, threshold = degraded_faces
    assert 0 < (quality >= ANCHOR_QUALITY).sum() < len(quality)
    everyone = identity_scores(people, cluster_identities(descriptors, threshold))
    anchored = identity_scores(people, cluster_identities(descriptors, threshold, quality))
    assert anchored.bcubed[0] == 1.0, anchored.bcubed
    assert anchored.bcubed[2] > everyone.bcubed[2], (anchored.bcubed, everyone.bcubed)


def test_a_poor_face_joins_the_nearest_cluster_of_sharp_faces(degraded_faces):
    descriptors, quality, _, threshold = degraded_faces
    labels = cluster_identities(descriptors, threshold, quality)
    anchors = quality >= ANCHOR_QUALITY
    np.testing.assert_array_equal(labels[anchors], cluster_identities(descriptors[anchors], threshold))
    poor = np.flatnonzero(~anchors)
    cluster, distance = nearest_clusters(descriptors[poor], descriptors[anchors], labels[anchors])
    near = distance < UNCERTAIN_REACH * threshold
    assert near.any()
    np.testing.assert_array_equal(labels[poor[near]], cluster[near])
    assert not np.isin(labels[poor[~near]], labels[anchors]).any()  # the others found clusters of their own


def test_without_quality_or_with_only_sharp_faces_it_is_plain_average_linkage(degraded_faces):
    descriptors, quality, _, threshold = degraded_faces
    plain = cluster_identities(descriptors, threshold)
    np.testing.assert_array_equal(cluster_identities(descriptors, threshold, np.ones(len(quality))), plain)
    np.testing.assert_array_equal(cluster_identities(descriptors, threshold, np.zeros(len(quality))), plain)


def test_a_project_is_reclustered_as_one_batch_is_clustered(degraded_faces, monkeypatch):
    """Re-clustering (storage.identities.cluster_project: linked groups, in shards) gives the quality-aware
    clusters of all faces at once: a poor face's pairs link up to UNCERTAIN_REACH thresholds."""
    from backend.storage import identities

    descriptors, quality, people, threshold = degraded_faces
    monkeypatch.setattr(identities, "SHARD_FACES", 7)  # groups and queries in several shards
    batch = cluster_identities(descriptors, threshold, quality)
    project = identities.cluster_project(descriptors, threshold, quality=quality)
    assert identity_scores(list(batch), project).bcubed == (1.0, 1.0, 1.0)
    assert identity_scores(people, project).bcubed[2] > identity_scores(
        people, identities.cluster_project(descriptors, threshold)).bcubed[2]
