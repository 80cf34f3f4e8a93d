"""The arithmetic of project-wide identities, apart from the database: which known person a new face is,
how a whole project's faces cluster, and which identity number each new cluster inherits.

Descriptors are unit vectors; distances are cosine distances (1 - cosine similarity), as in
backend.vision.clustering.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..vision.clustering import cluster_identities
from ..vision.models.base import l2_normalise

# A face an annotator confirmed counts this many times in its identity's centroid, and in the vote that
# decides which identity number a re-clustered group keeps: people checked it, the models only guessed.
CONFIRMED_WEIGHT = 4.0
# Re-clustering compares every pair of faces in blocks of about this many similarities (4 bytes each).
PAIR_BLOCK = 1 << 24
# Average linkage needs all pairwise distances of a group (8 bytes each): a group of faces linked by close
# pairs that is larger than this is first cut by a stricter closeness (see _components).
MAX_EXACT_GROUP = 6000

Progress = Callable[[float], None]


def face_weights(confirmed) -> np.ndarray:
    return np.where(np.asarray(confirmed, dtype=bool), CONFIRMED_WEIGHT, 1.0)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Identity arithmetic runs in float64: centroids are sums of up to thousands of descriptors."""
    return l2_normalise(np.asarray(vectors, dtype=np.float64))


def match_groups(groups: np.ndarray, centroids: np.ndarray, threshold: float) -> np.ndarray:
    """Which known identity each group of new faces is: (G,) index into `centroids`, or -1 for a new person.

    groups: (G, D) unit mean descriptor of each group (faces that one request's clustering put together);
    centroids: (I, D) unit centroids of the project's identities. A group joins the nearest identity closer
    than `threshold`, one group per identity: the request's clustering already said the groups are different
    people, so when two want the same identity the closer one gets it and the other takes its next choice or
    founds a new identity (Hungarian assignment, where founding costs exactly the threshold).
    """
    found = np.full(len(groups), -1, dtype=np.int64)
    if len(groups) == 0 or len(centroids) == 0:
        return found
    distance = 1.0 - np.asarray(groups, dtype=np.float64) @ np.asarray(centroids, dtype=np.float64).T
    candidates = np.flatnonzero((distance < threshold).any(axis=0))
    if len(candidates) == 0:
        return found
    cost = np.full((len(groups), len(candidates) + len(groups)), np.inf)
    near = distance[:, candidates]
    cost[:, : len(candidates)] = np.where(near < threshold, near, np.inf)
    cost[np.arange(len(groups)), len(candidates) + np.arange(len(groups))] = threshold
    rows, columns = linear_sum_assignment(cost)
    joined = columns < len(candidates)
    found[rows[joined]] = candidates[columns[joined]]
    return found


def cluster_project(descriptors: np.ndarray, threshold: float, progress: Progress | None = None) -> np.ndarray:
    """Average-linkage clustering of all of a project's faces: (N,) labels 0..K-1.

    The same clustering as backend.vision.clustering.cluster_identities on all faces at once, without
    its N x N distance matrix: average linkage only ever joins groups whose mean distance is below the
    threshold, so some pair across them is closer than that; so no cluster spans two groups of faces that
    no chain of close pairs connects, and clustering each such group on its own gives the same clusters.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    progress = progress or (lambda fraction: None)
    first, second, distance = _close_pairs(descriptors, threshold, lambda f: progress(0.8 * f))
    labels = np.empty(len(descriptors), dtype=np.int64)
    next_label = 0
    groups = _components(len(descriptors), first, second, distance, threshold)
    for done, members in enumerate(groups):
        if len(members) == 1:
            labels[members] = next_label
            next_label += 1
        else:
            local = cluster_identities(descriptors[members], threshold)
            labels[members] = next_label + local
            next_label += int(local.max()) + 1
        if done % 1000 == 0:
            progress(0.8 + 0.2 * done / len(groups))
    progress(1.0)
    return labels


def _close_pairs(descriptors: np.ndarray, threshold: float, progress: Progress):
    """Every pair i < j closer than the threshold, by blocks of rows against all later rows.

    The threshold is widened a little: these pairs only decide which faces may share a cluster, and the
    clustering itself measures the distances again in double precision.
    """
    n = len(descriptors)
    widened = threshold + 1e-4
    rows_per_block = max(1, PAIR_BLOCK // max(n, 1))
    firsts, seconds, distances = [], [], []
    for start in range(0, n, rows_per_block):
        stop = min(start + rows_per_block, n)
        distance = 1.0 - descriptors[start:stop] @ descriptors[start:].T
        row, column = np.nonzero(distance < widened)
        later = column > row  # column is counted from `start`, like row: the upper triangle, no self-pairs
        firsts.append(start + row[later])
        seconds.append(start + column[later])
        distances.append(distance[row[later], column[later]])
        progress(1 - (n - stop) ** 2 / n**2)  # the work left is the triangle below the remaining rows
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)


def _components(n, first, second, distance, radius) -> list[np.ndarray]:
    """Faces linked by chains of pairs closer than `radius`, as index arrays. A linked group too large for
    an exact average linkage is split by linking it again at a stricter radius (an approximation: faces
    that only looser pairs linked can no longer share a cluster)."""
    graph = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    order = np.argsort(component, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(component, minlength=count))[:-1])
    result = []
    for members in groups:
        if len(members) <= MAX_EXACT_GROUP or radius < 1e-3:  # (below that radius only near-copies are left)
            result.append(members)
            continue
        inside = np.isin(first, members) & (distance < radius * 0.8)
        local = np.searchsorted(members, [first[inside], second[inside]])  # members is sorted
        result += [members[part] for part in
                   _components(len(members), local[0], local[1], distance[inside], radius * 0.8)]
    return result


def carry_over(old_identities: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[int, int]:
    """Which old identity number each new cluster keeps: {cluster label: identity}; clusters left out get
    new numbers. Each identity goes to at most one cluster, chosen to keep the most (weighted) faces where
    they were (Hungarian assignment on the clusters x identities overlap)."""
    identities, old = np.unique(np.asarray(old_identities), return_inverse=True)
    clusters = int(labels.max()) + 1 if len(labels) else 0
    overlap = coo_matrix((weights, (labels, old)), shape=(clusters, len(identities))).tocsr()  # sums repeats
    # Clusters and identities that share no face never compete: solve each linked set on its own.
    linked = coo_matrix((np.ones(overlap.nnz), overlap.nonzero()), shape=overlap.shape)
    both = coo_matrix((np.r_[linked.data, linked.data],
                       (np.r_[linked.row, linked.col + clusters], np.r_[linked.col + clusters, linked.row])),
                      shape=(clusters + len(identities),) * 2)
    count, component = connected_components(both, directed=False)
    order = np.argsort(component, kind="stable")
    kept = {}
    for nodes in np.split(order, np.cumsum(np.bincount(component, minlength=count))[:-1]):
        rows, columns = nodes[nodes < clusters], nodes[nodes >= clusters] - clusters
        if len(rows) == 1 and len(columns) == 1:  # the common case, without the slow sparse slicing
            kept[int(rows[0])] = int(identities[columns[0]])
            continue
        votes = overlap[rows][:, columns].toarray()
        chosen_rows, chosen_columns = linear_sum_assignment(votes, maximize=True)
        for r, c in zip(chosen_rows, chosen_columns):
            if votes[r, c] > 0:
                kept[int(rows[r])] = int(identities[columns[c]])
    return kept
