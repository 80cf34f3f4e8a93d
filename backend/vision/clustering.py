"""Identity clustering: group face descriptors into people.

Average-linkage agglomerative clustering on cosine distance, not DBSCAN: on held-out small and blurred
faces (MTCNN boxes, dlib descriptors; measured when this project was planned, see issue 2) DBSCAN's single
chain of neighbours joined different people (BCubed F1 at best 0.86) where average linkage, which asks a
face to be close to the whole group, kept them apart (0.92).
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from .models.base import l2_normalise


# Faces below this quality (quality.face_quality) do not shape clusters: on the degraded faces of
# bench/identity_sequence.py, dark or blurred faces of 24-32 px of different people lie 0.03-0.06 apart (dlib),
# closer than one person's sharp faces, so average linkage let them carry other people's faces into the
# largest cluster; the 40 of its 99 faces at or above 0.3 cluster without an error at dlib's thresholds
# 0.08-0.10. With anchors from 0.15 or 0.2 up, such faces were among them again; from 0.4, too few were left.
ANCHOR_QUALITY = 0.3
# A face below ANCHOR_QUALITY joins the cluster of anchors nearest it when that lies within this many
# thresholds: such a face is uncertain, not someone new (there, 1.5 and 2 gave the same clusters; 1, a
# face founding its own cluster whenever it is merely uncertain, lost 0.02 of BCubed F1).
UNCERTAIN_REACH = 1.5
# A face's distance to a cluster is the mean distance of this many of the cluster's faces nearest it (all of
# them when it has fewer), as an identity's in the face store (storage.identities.VOTERS_PER_IDENTITY).
CLUSTER_VOTERS = 3


def cluster_identities(descriptors: np.ndarray, distance_threshold: float,
                       quality: np.ndarray | None = None) -> np.ndarray:
    """Cluster L2-normalised descriptors (N, D); returns an (N,) array of cluster labels 0..K-1.

    distance_threshold: cosine distance (1 - cosine similarity) at or above which two groups stay apart.
    quality: (N,) each face's quality (quality.face_quality), or None to treat all faces alike. Given, the
    faces at or above ANCHOR_QUALITY are clustered first; each other face then joins the anchors' cluster
    nearest it (nearest_clusters) if closer than UNCERTAIN_REACH thresholds, and the faces left over are
    clustered among themselves into clusters of their own.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    if quality is None:
        return _average_linkage(descriptors, distance_threshold)
    anchors = np.asarray(quality) >= ANCHOR_QUALITY
    if anchors.all() or not anchors.any():
        return _average_linkage(descriptors, distance_threshold)
    labels = np.empty(len(descriptors), dtype=np.int64)
    labels[anchors] = _average_linkage(descriptors[anchors], distance_threshold)
    uncertain = np.flatnonzero(~anchors)
    cluster, distance = nearest_clusters(descriptors[uncertain], descriptors[anchors], labels[anchors])
    joins = distance < UNCERTAIN_REACH * distance_threshold
    labels[uncertain[joins]] = cluster[joins]
    alone = uncertain[~joins]
    if len(alone):
        labels[alone] = labels[anchors].max() + 1 + _average_linkage(descriptors[alone], distance_threshold)
    return labels


def nearest_clusters(faces: np.ndarray, members: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of the unit descriptors `faces` (F, D), the cluster of `members` (M, D; labels (M,) 0..K-1)
    nearest it and its distance: a cluster's distance to a face is the mean cosine distance of its
    CLUSTER_VOTERS members nearest the face."""
    distances = 1.0 - faces @ members.T
    nearest = np.full(len(faces), np.inf)
    cluster = np.full(len(faces), -1, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    for label, part in enumerate(np.split(order, np.cumsum(np.bincount(labels))[:-1])):
        voters = min(CLUSTER_VOTERS, len(part))
        mean = np.partition(distances[:, part], voters - 1, axis=1)[:, :voters].mean(axis=1)
        closer = mean < nearest
        nearest[closer], cluster[closer] = mean[closer], label
    return cluster, nearest


def _average_linkage(descriptors: np.ndarray, distance_threshold: float) -> np.ndarray:
    """(scipy's linkage, which scikit-learn's AgglomerativeClustering runs too, without its per-call checks:
    re-clustering a project calls this once per group of linked faces, 10^5 times for 10^6 faces.)"""
    if len(descriptors) < 2:
        return np.zeros(len(descriptors), dtype=np.int64)
    tree = linkage(pdist(descriptors, "cosine"), method="average")
    # fcluster keeps merges at distances <= t: the largest float below the threshold keeps them < threshold.
    return fcluster(tree, np.nextafter(distance_threshold, 0.0), criterion="distance").astype(np.int64) - 1


def cluster_groups(descriptors: np.ndarray, distance_threshold: float, quality: np.ndarray | None,
                   groups: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """cluster_identities of each of several groups of faces on its own (quality: (N,) or None, as there).

    groups: (members, sizes): the row numbers in `descriptors` of the groups' faces, one group after the
    other, and each group's size. Returns the labels of the faces of `members`, in its order, numbered
    0..K-1 group after group (a group's clusters never share a label with another group's).
    """
    members, sizes = groups
    labels = np.empty(len(members), dtype=np.int64)
    start = next_label = 0
    for size in sizes.tolist():
        rows = members[start:start + size]
        if size == 1:
            local = np.zeros(1, dtype=np.int64)
        elif size == 2 and quality is None:  # average linkage of two faces: together when closer than the threshold
            together = float(descriptors[rows[0]].astype(np.float64) @ descriptors[rows[1]]) > 1.0 - distance_threshold
            local = np.array([0, 0 if together else 1])
        else:
            local = cluster_identities(descriptors[rows], distance_threshold,
                                       None if quality is None else quality[rows])
        labels[start:start + size] = next_label + local
        next_label += int(local.max()) + 1
        start += size
    return labels


def identity_confidence(descriptors: np.ndarray, labels: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """How much to trust each face's identity: the face's image quality times its closeness to its cluster.

    A face too small or blurred to identify gets a low score rather than a confident wrong id.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    confidence = np.zeros(len(descriptors), dtype=np.float32)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        centre = l2_normalise(descriptors[idx].mean(axis=0))
        similarity = descriptors[idx] @ centre
        # A lone face has nothing to agree with: its closeness is unknown, not perfect.
        closeness = similarity if len(idx) > 1 else np.full(len(idx), 0.8, dtype=np.float32)
        confidence[idx] = closeness.clip(0, 1)
    return (confidence * np.asarray(quality, dtype=np.float32)).clip(0, 1)
