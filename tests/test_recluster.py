"""Re-clustering a project in shards (backend.storage.identities.cluster_project): where the shards are cut
does not change the clusters, with the exact graph index and with the inverted one. Ray runs the same
shards: tests/integration/test_recluster_ray.py."""
from __future__ import annotations

import numpy as np
import pytest

from backend.storage import identities, vector_index
from backend.storage import identities as identity_math
from backend.vision.clustering import cluster_identities
from bench.common import FACES_PER_PERSON, faces_of, noise_for, person_directions
from bench.identity_store import _bcubed_f1

FACES = 3000
THRESHOLD = 0.1  # dlib_resnet's identity_distance; the synthetic faces are made for it


def planted_faces(count: int = FACES, seed: int = 3, dim: int = 128,
                  threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(people, descriptors): synthetic faces, about FACES_PER_PERSON of each planted person, spread for
    `threshold`."""
    rng = np.random.default_rng(seed)
    people = rng.integers(0, count // FACES_PER_PERSON, count)
    return people, faces_of(rng, person_directions(rng, people.max() + 1, dim), people, noise_for(threshold))


@pytest.mark.parametrize("inverted", [False, True])
def test_shards_give_the_clusters_of_one_shard(monkeypatch, inverted):
    people, descriptors = planted_faces()
    if inverted:  # the inverted-file graph index of large projects, with lists for this size
        monkeypatch.setattr(vector_index, "EXACT_UP_TO", FACES // 3)
        monkeypatch.setattr(vector_index, "LISTS", 16)
    whole = identities.cluster_project(descriptors, THRESHOLD)
    seen = []
    monkeypatch.setattr(identities, "SHARD_FACES", 700)  # 5 shards of queries; groups cut at ~700 faces
    sharded = identities.cluster_project(descriptors, THRESHOLD, seen.append)
    np.testing.assert_array_equal(sharded, whole)
    assert _bcubed_f1(people, sharded) > 0.99
    assert seen == sorted(seen) and seen[-1] == 1.0  # progress only moves forward, to the end


def test_long_descriptors_are_searched_reduced_and_linked_by_their_whole_distances(monkeypatch):
    """Descriptors longer than GRAPH_DIM (the default's 1152) of many faces: candidates from their principal
    components, distances measured on the whole descriptors; the clusters are the planted people."""
    monkeypatch.setattr(vector_index, "GRAPH_REDUCED_FROM", 1000)
    monkeypatch.setattr(vector_index, "GRAPH_DIM", 32)
    people, descriptors = planted_faces(dim=256, threshold=0.3)
    graph = vector_index.build_graph(descriptors, identities.GRAPH_NEIGHBOURS, 0.3, identities.InProcess(), [(0, FACES)],
                                     lambda fraction: None)
    assert graph.searched.shape == (FACES, 32)
    first, second, distance = vector_index.close_pairs(graph, (0, FACES))
    np.testing.assert_allclose(distance, 1.0 - np.einsum("ij,ij->i", descriptors[first], descriptors[second]),
                               atol=1e-5)
    same = people[:, None] == people[None, :]
    np.fill_diagonal(same, False)
    assert len(first) >= 0.99 * same.sum()  # nearly every pair of one person's faces
    assert _bcubed_f1(people, identities.cluster_project(descriptors, 0.3)) > 0.99


def test_close_pairs_are_the_exact_ones_on_few_faces():
    """Up to EXACT_UP_TO faces the graph is exact: each face paired with its nearest others, those closer
    than the radius kept, as numpy finds them over all pairs."""
    _, descriptors = planted_faces(400)
    graph = vector_index.build_graph(descriptors, 5, 0.5, identities.InProcess(), [(0, 400)], lambda fraction: None)
    first, second, distance = vector_index.close_pairs(graph, (0, 400))
    every = 1.0 - descriptors.astype(np.float64) @ descriptors.T.astype(np.float64)
    np.fill_diagonal(every, np.inf)
    nearest = np.argsort(every, axis=1)[:, :5]
    expected = {(face, other) for face in range(400) for other in nearest[face].tolist() if every[face, other] < 0.5}
    assert set(zip(first.tolist(), second.tolist())) == expected
    np.testing.assert_allclose(distance, every[first, second], atol=1e-5)


def test_a_pair_just_past_the_threshold_stays_apart():
    """The graph keeps pairs a little past the threshold (its distances may be float16-rounded); the
    clustering measures them again: two faces join only when closer than the threshold."""
    rng = np.random.default_rng(5)
    first, across = identities.unit(rng.normal(size=(2, 128)))
    across = identities.unit(across - (across @ first) * first)  # at right angles to `first`

    def at(distance: float) -> np.ndarray:
        return (1 - distance) * first + np.sqrt(1 - (1 - distance) ** 2) * across

    for distance, expected in ((THRESHOLD - 5e-4, [0, 0]), (THRESHOLD + 5e-4, [0, 1]), (0.5, [0, 1])):
        assert identities.cluster_project(np.stack([first, at(distance)]), THRESHOLD).tolist() == expected
    assert identities.cluster_project(first[None], THRESHOLD).tolist() == [0]


def test_runs_of_near_copies_of_one_person_are_joined():
    """Two runs of 40 near-copies of one person (frames of two shots, crops of two photos), 0.04 apart:
    each face's GRAPH_NEIGHBOURS nearest are copies in its own run, yet the runs are one person, as the
    batch clustering of all faces says; the other people stay apart."""
    rng = np.random.default_rng(5)
    shot = identity_math.unit(rng.normal(size=128))
    other_shot = identity_math.unit(shot + rng.normal(scale=0.28 / np.sqrt(128), size=128))
    assert 0.03 < 1.0 - shot @ other_shot < 0.05
    copies = [identity_math.unit(centre + rng.normal(scale=0.01 / np.sqrt(128), size=(40, 128)))
              for centre in (shot, other_shot)]
    people, others = planted_faces(200, seed=8)
    descriptors = np.concatenate([*copies, others]).astype(np.float32)
    labels = identities.cluster_project(descriptors, THRESHOLD)
    assert len(set(labels[:80].tolist())) == 1 and labels[0] not in labels[80:]
    np.testing.assert_array_equal(_partition(labels), _partition(cluster_identities(descriptors, THRESHOLD)))
    assert _bcubed_f1(people, labels[80:]) > 0.99


def _partition(labels: np.ndarray) -> np.ndarray:
    """Labels numbered in the order their clusters first appear: equal for equal partitions."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]
