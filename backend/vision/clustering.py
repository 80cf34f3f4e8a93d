"""Identity clustering: group face descriptors into people.

Average-linkage agglomerative clustering on cosine distance, not DBSCAN: on held-out small and blurred
faces (MTCNN boxes, dlib descriptors; measured when this project was planned, see issue 2) DBSCAN's single
chain of neighbours joined different people (BCubed F1 at best 0.86) where average linkage, which asks a
face to be close to the whole group, kept them apart (0.92).
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from .models.base import l2_normalise


def cluster_identities(descriptors: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Cluster L2-normalised descriptors (N, D); returns an (N,) array of cluster labels 0..K-1.

    distance_threshold: cosine distance (1 - cosine similarity) above which two groups stay apart.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    if len(descriptors) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(descriptors) == 1:
        return np.zeros(1, dtype=np.int64)
    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance_threshold
    )
    return model.fit_predict(descriptors).astype(np.int64)


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
