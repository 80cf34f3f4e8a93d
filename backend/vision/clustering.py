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


def cluster_identities(descriptors: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Cluster L2-normalised descriptors (N, D); returns an (N,) array of cluster labels 0..K-1.

    distance_threshold: cosine distance (1 - cosine similarity) at or above which two groups stay apart.
    (scipy's linkage, which scikit-learn's AgglomerativeClustering runs too, without its per-call checks:
    re-clustering a project calls this once per group of linked faces, 10^5 times for 10^6 faces.)
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    if len(descriptors) < 2:
        return np.zeros(len(descriptors), dtype=np.int64)
    tree = linkage(pdist(descriptors, "cosine"), method="average")
    # fcluster keeps merges at distances <= t: the largest float below the threshold keeps them < threshold.
    return fcluster(tree, np.nextafter(distance_threshold, 0.0), criterion="distance").astype(np.int64) - 1


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
