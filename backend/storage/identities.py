"""The arithmetic of project-wide identities, apart from the database: which known person a new face is,
how a whole project's faces cluster, and which identity number each new cluster inherits.

Descriptors are unit vectors; distances are cosine distances (1 - cosine similarity), as in
backend.vision.clustering.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..vision.clustering import ANCHOR_QUALITY, UNCERTAIN_REACH, cluster_groups
from ..vision.models.base import l2_normalise
from .vector_index import build_graph, close_pairs

# A face an annotator confirmed counts this many times in the votes that decide which person a new face
# is, and which identity number a re-clustered group keeps: people checked it, the models only guessed.
CONFIRMED_WEIGHT = 4.0
# How many of the nearest stored faces vote on a new face's identity.
NEIGHBOURS = 16
# A stored face's vote counts its quality (vote_weights), and at least this.
MIN_VOTE_QUALITY = 0.05
# An identity's distance to a new face is the mean distance of its this many faces nearest the face. On
# small, blurred and dark faces arriving one at a time (bench/results/identity_sequence.md, threshold 0.1):
# identity BCubed F1 0.81 with the nearest face alone, 0.855 with 3, 0.72 with all 16 (as one batch: 0.86).
VOTERS_PER_IDENTITY = 3
# Re-clustering links each face to the close ones among its this many nearest faces.
GRAPH_NEIGHBOURS = 32
# Average linkage needs all pairwise distances of a group (8 bytes each): a group of faces linked by close
# pairs that is larger than this is first cut by a stricter closeness (see _components).
MAX_EXACT_GROUP = 6000
# Re-clustering cuts its work into shards of about this many faces (queries of the graph search, linked
# groups to cluster), which an Executor runs in this process or on a Ray cluster's workers.
SHARD_FACES = 50_000

Progress = Callable[[float], None]


def face_weights(confirmed) -> np.ndarray:
    return np.where(np.asarray(confirmed, dtype=bool), CONFIRMED_WEIGHT, 1.0)


def vote_weights(confirmed, quality) -> np.ndarray:
    """How much a stored face's vote counts: confirmed faces more, and blurred or tiny faces, whose descriptors
    drift towards everyone's, less (never nothing: a person seen only in poor photos still has a vote)."""
    return face_weights(confirmed) * np.maximum(np.asarray(quality, dtype=np.float64), MIN_VOTE_QUALITY)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Identity arithmetic runs in float64: an identity's descriptor sum adds up thousands of descriptors."""
    return l2_normalise(np.asarray(vectors, dtype=np.float64))


def match_groups(group_of: np.ndarray, thresholds: np.ndarray, identities: np.ndarray, weights: np.ndarray,
                 distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which known identity each group of new faces is, by the votes of the stored faces nearest them.

    group_of: (F,) the group of each new face (faces that the request's clustering put together);
    thresholds: (G,) each group's threshold;
    identities, weights, distances: (F, k) each face's nearest stored faces: their identity (-1 where none),
    their vote (vote_weights) and their cosine distance.

    An identity is a candidate for a group when one of its faces is within the group's threshold; the
    group's distance to it is the weighted mean distance of its VOTERS_PER_IDENTITY faces nearest each face
    of the group (average linkage over the part of the identity nearest the group: a person's other looks
    do not count against a face, a lone look-alike face does not pull it in). A group joins the nearest
    candidate closer than its threshold; two groups of one request never join the same identity (the
    request's clustering said they are different people): the pairing maximises the total margin under the
    thresholds.

    Returns (G,) the identity each group joins (-1: a new person) and (G,) its distance to that identity,
    or to the nearest identity among its neighbours when it joins none (inf when it has no neighbours).
    """
    groups = len(thresholds)
    joined = np.full(groups, -1, dtype=np.int64)
    nearest = np.full(groups, np.inf)
    # Each face's neighbours nearest first; of each identity, only its VOTERS_PER_IDENTITY nearest vote.
    order = np.argsort(distances, axis=1, kind="stable")
    identities, weights, distances = (np.take_along_axis(a, order, axis=1) for a in (identities, weights, distances))
    same = identities[:, :, None] == identities[:, None, :]
    rank = (same & np.tri(identities.shape[1], k=-1, dtype=bool).T[None]).sum(axis=1)  # earlier ones of its identity
    known = (identities >= 0) & (rank < VOTERS_PER_IDENTITY)
    if not known.any():
        return joined, nearest
    face_group = np.broadcast_to(np.asarray(group_of)[:, None], identities.shape)[known]
    pair_keys, pair_of = np.unique(np.stack([face_group, identities[known]]), axis=1, return_inverse=True)
    weight = np.bincount(pair_of, weights[known])
    distance = np.bincount(pair_of, weights[known] * distances[known]) / weight
    within = np.zeros(pair_keys.shape[1], dtype=bool)
    within[pair_of[distances[known] < thresholds[face_group]]] = True
    pair_group, pair_identity = pair_keys
    np.minimum.at(nearest, pair_group, distance)
    margin = thresholds[pair_group] - distance
    chosen = within & (margin > 0)
    rows, columns = best_matching(pair_group[chosen], pair_identity[chosen], margin[chosen])
    joined[rows] = columns
    span = int(pair_identity.max()) + 1  # the pairs are sorted by group, then identity
    nearest[rows] = distance[np.searchsorted(pair_group * span + pair_identity, rows * span + columns)]
    return joined, nearest


def assignment_confidence(quality: np.ndarray, distance: np.ndarray, threshold: np.ndarray,
                          joined: np.ndarray) -> np.ndarray:
    """How much to trust a face's identity: its quality times how clearly the vote decided. A face that
    joined a person at distance 0, or that founded one with no person within twice its threshold, is
    clear (1); one at its threshold either way is a toss-up (0.5)."""
    ratio = np.asarray(distance, dtype=np.float64) / (2.0 * np.asarray(threshold, dtype=np.float64))
    clarity = np.where(np.asarray(joined) >= 0, 1.0 - ratio, ratio).clip(0.5, 1.0)
    return (np.asarray(quality, dtype=np.float64) * clarity).clip(0.0, 1.0)


def best_matching(rows: np.ndarray, columns: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs among the (rows[i], columns[i]) with the greatest total score, each row and each column
    in at most one pair; repeated pairs add their scores, and a pair with a total score of 0 or less is
    never chosen. Rows and columns are any integers. Returns the chosen rows and their columns.

    Rows and columns that share no pair never compete: each linked set is solved on its own (the Hungarian
    algorithm), and most sets are one row and one column.
    """
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if (rows == rows[0]).all():  # one row (a request of one person): its best column, without the machinery
        column_values, column_of = np.unique(columns, return_inverse=True)
        total = np.bincount(column_of, scores)
        best = int(np.argmax(total))
        return (rows[:1], column_values[best:best + 1]) if total[best] > 0 else (rows[:0], columns[:0])
    row_values, row_of = np.unique(rows, return_inverse=True)
    column_values, column_of = np.unique(columns, return_inverse=True)
    n_rows, n_columns = len(row_values), len(column_values)
    total = coo_matrix((scores, (row_of, column_of)), shape=(n_rows, n_columns)).tocsr()  # sums repeats
    total.eliminate_zeros()
    linked = total.tocoo()
    both = coo_matrix((np.ones(2 * linked.nnz), (np.r_[linked.row, linked.col + n_rows],
                                                 np.r_[linked.col + n_rows, linked.row])),
                      shape=(n_rows + n_columns,) * 2)
    count, component = connected_components(both, directed=False)
    sizes = np.bincount(component, minlength=count)
    chosen_rows, chosen_columns = [], []
    # The common case, a row and a column that only have each other, without slicing the matrix.
    alone = sizes[component[linked.row]] == 2
    pick = alone & (linked.data > 0)
    chosen_rows.append(linked.row[pick])
    chosen_columns.append(linked.col[pick])
    order = np.argsort(component, kind="stable")
    for nodes in np.split(order, np.cumsum(sizes)[:-1]):
        if len(nodes) <= 2:
            continue
        set_rows, set_columns = nodes[nodes < n_rows], nodes[nodes >= n_rows] - n_rows
        votes = total[set_rows][:, set_columns].toarray()
        picked_rows, picked_columns = linear_sum_assignment(votes, maximize=True)
        good = votes[picked_rows, picked_columns] > 0
        chosen_rows.append(set_rows[picked_rows[good]])
        chosen_columns.append(set_columns[picked_columns[good]])
    chosen_rows, chosen_columns = np.concatenate(chosen_rows), np.concatenate(chosen_columns)
    return row_values[chosen_rows], column_values[chosen_columns]


class Executor(Protocol):
    """Runs function(*shared, item) for each item: in this process (InProcess), or as tasks on a Ray cluster
    (backend/service/ray_recluster.py)."""

    def map(self, function: Callable, shared: tuple, items: Sequence) -> Iterator:
        """The results in the items' order. Every call reads `shared` (a cluster sends it once to all)."""


class InProcess:
    def map(self, function: Callable, shared: tuple, items: Sequence) -> Iterator:
        return (function(*shared, item) for item in items)


def cluster_project(descriptors: np.ndarray, threshold: float, progress: Progress | None = None,
                    executor: Executor | None = None, quality: np.ndarray | None = None) -> np.ndarray:
    """Average-linkage clustering of all of a project's faces: (N,) labels 0..K-1.

    The same clustering as backend.vision.clustering.cluster_identities on all faces at once, without its
    N x N distance matrix: average linkage only ever joins groups whose mean distance is below the
    threshold, so some pair across them is closer than that; so no cluster spans two groups of faces that
    no chain of close pairs connects, and clustering each such group on its own gives the same clusters.
    The close pairs come from each face's GRAPH_NEIGHBOURS nearest faces (vector_index.build_graph and
    close_pairs; long descriptors of large projects: the nearest in their principal components, measured
    again whole): a person's faces are linked by chains of near neighbours however many faces the person
    has, so only a close pair whose faces are both far down each other's lists and linked by no chain is
    lost. Runs of near-copies (more than GRAPH_NEIGHBOURS frames of one shot) fill each other's lists: the
    linked groups are searched again, one face of each, so that two runs of one person are linked too.

    quality: (N,) each face's quality, as cluster_identities takes it (None: all alike). A face below
    ANCHOR_QUALITY may join a cluster up to UNCERTAIN_REACH thresholds away, so its pairs link up to there.

    The search for each face's nearest faces and the clustering of the linked groups run in shards of
    about SHARD_FACES faces on `executor` (default: this process, one shard after the other); the
    labels do not depend on where the shards ran.
    """
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    progress = progress or (lambda fraction: None)
    executor = executor or InProcess()
    n = len(descriptors)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    # Widened a little: the graph's distances are float16-rounded, and the clustering measures them again.
    uncertain = None if quality is None else np.asarray(quality) < ANCHOR_QUALITY
    reach = threshold * (UNCERTAIN_REACH if uncertain is not None and uncertain.any() else 1.0)
    first, second, distance = _close_pairs(descriptors, reach, executor, lambda fraction: progress(0.6 * fraction))
    # A face whose GRAPH_NEIGHBOURS nearest are all near-copies of it (video frames, crops of one photo) is
    # linked to its copies alone: such a run of copies is an island, however close another run of its
    # person is. So the linked groups are searched again, one face of each for them all: a close pair of
    # those links two groups as any close pair does.
    count, group = _linked(n, first, second)
    if count > 1 and np.bincount(group).max() > GRAPH_NEIGHBOURS:
        _, chosen = np.unique(group, return_index=True)
        linked = _close_pairs(descriptors[chosen], reach, executor, lambda fraction: progress(0.6 + 0.1 * fraction))
        first, second, distance = (np.concatenate([mine, theirs]) for mine, theirs in zip(
            (first, second, distance), (chosen[linked[0]], chosen[linked[1]], linked[2])))
    if reach > threshold:  # past the threshold, only pairs with an uncertain face link
        linking = (distance < threshold) | uncertain[first] | uncertain[second]
        first, second, distance = first[linking], second[linking], distance[linking]
    shards = _shards(_components(n, first, second, distance, reach))
    labels = np.empty(n, dtype=np.int64)
    next_label = 0
    for done, (local, (members, _)) in enumerate(  # (the executor's results first: read to their end)
            zip(executor.map(cluster_groups, (descriptors, threshold, quality), shards), shards), start=1):
        labels[members] = next_label + local
        next_label += int(local.max()) + 1
        progress(0.7 + 0.3 * done / len(shards))
    return labels


def _close_pairs(descriptors: np.ndarray, radius: float, executor: Executor,
                 progress: Progress) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face, other face, distance) of the pairs closer than `radius` among each face's GRAPH_NEIGHBOURS
    nearest, searched in shards on `executor`."""
    n = len(descriptors)
    queries = _row_shards(n)
    graph = build_graph(descriptors, min(GRAPH_NEIGHBOURS, n - 1), radius + 1e-3, executor, queries,
                        lambda fraction: progress(0.3 * fraction))
    pairs = []
    for found in executor.map(close_pairs, (graph,), queries):
        pairs.append(found)
        progress(0.3 + 0.7 * len(pairs) / len(queries))
    del graph  # (its index, lists and reduced descriptors: ~1 GiB at 10^6 faces)
    return tuple(np.concatenate(part) for part in zip(*pairs))


def _row_shards(n: int) -> list[tuple[int, int]]:
    """Faces 0..n-1 in runs of SHARD_FACES: (first, past the last) of each."""
    return [(start, min(start + SHARD_FACES, n)) for start in range(0, n, SHARD_FACES)]


def _shards(groups: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The groups in runs of about SHARD_FACES faces, as cluster_groups takes them: (members, sizes)."""
    shards, run, faces = [], [], 0
    for members in groups:
        run.append(members)
        faces += len(members)
        if faces >= SHARD_FACES:
            shards.append(run)
            run, faces = [], 0
    if run:
        shards.append(run)
    return [(np.concatenate(run), np.array([len(members) for members in run])) for run in shards]


def _linked(n: int, first: np.ndarray, second: np.ndarray) -> tuple[int, np.ndarray]:
    """The groups that the pairs (first[i], second[i]) link faces 0..n-1 into: (how many, each face's group)."""
    return connected_components(coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(n, n)),
                                 directed=False)


def _components(n, first, second, distance, radius) -> list[np.ndarray]:
    """Faces linked by chains of pairs closer than `radius`, as index arrays. A linked group too large for
    an exact average linkage is split by linking it again at a stricter radius (an approximation: faces
    that only looser pairs linked can no longer share a cluster)."""
    count, component = _linked(n, first, second)
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
    they were."""
    clusters, identities = best_matching(np.asarray(labels), np.asarray(old_identities), np.asarray(weights))
    return dict(zip(clusters.tolist(), identities.tolist()))

