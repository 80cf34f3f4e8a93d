"""The nearest stored faces of a new face, fast at a million faces: a vector index beside the database.

The database is the truth; an index is a cache of its descriptors that each process holds in memory, one
per project and descriptor size, and brings up to date before each use (FaceStore._index):

- Every face row has an `id`, numbered in the order faces are stored and never reused (face_sequence).
  A transaction that takes ids holds the sequence's row until it commits, so ids become visible in
  increasing order: reading the project's rows with an id above the last one an index holds, up to the
  sequence's committed value, gives it every face any process or replica has stored, before it searches
  (with or without the project's lock).
- What a face is (its identity, whether it is confirmed) is read from the database for the neighbours a
  search returns, never from the index: moves and renames need no index update.
- Deleted faces leave an index lazily: a neighbour whose row is gone is dropped from the answer and from
  the index. (The process that deletes faces also drops them itself, after its transaction commits.)
- A recreated database starts a new `generation` of the numbering: the index is dropped and rebuilt.

Up to EXACT_UP_TO faces the index searches exactly; above, it is an inverted-file index (faiss IVF,
LISTS k-means cells, vectors stored as float16) trained once on the faces it holds when it crosses that
size, searching the PROBES cells nearest each query. bench/identity_store.py measures its recall against
exact search (bench/results/identity_store.md).
"""
from __future__ import annotations

import threading

import faiss
import numpy as np

# Below this many faces an exact search costs under a millisecond, and k-means has too few faces to
# learn LISTS cells from (faiss wants ~40 per cell).
EXACT_UP_TO = 40_000
LISTS = 1024
# Cells searched per query. Of the exact 16 nearest synthetic faces (bench/common.py) closer than 0.2, at
# 10^6 faces 16 found 0.9997 in 0.4 ms (8: 0.993, 32: 1.0 in 0.8 ms; 300 queries, as the recall of
# bench/identity_store.py, whose results are in bench/results/identity_store.md).
PROBES = 16
# k-means iterations when the index is trained (faiss's default is 25): training is a pause in one request
# (1-2 s at 40,000 faces on 2 busy cores), and the cells only need to split the faces, not be optimal.
TRAINING_ITERATIONS = 10
TRAINING_SAMPLE = 64 * LISTS
# knn_graph above EXACT_UP_TO faces: a list per this many faces, this many lists searched per face (on
# synthetic faces, 4 of 512 lists found 0.998 of the nearest faces closer than 0.2; re-clustering 10^6
# such faces gives BCubed F1 0.9998 against the planted people), and k-means learns the lists from this
# many faces per list.
GRAPH_CELL = 256
GRAPH_PROBES = 4
GRAPH_TRAINING = 16
# Fewer vectors than this are added or searched on the calling thread alone: starting OpenMP's threads for
# one face cost 12 ms instead of 0.1 ms on a busy 2-core machine.
PARALLEL_FROM = 1000
_CORES = faiss.omp_get_max_threads()


class FaceIndex:
    """Approximate nearest neighbours by inner product of unit descriptors of one size, keyed by face id.

    Thread-safe: `lock` is held by every method (faiss releases the GIL while it searches).
    """

    def __init__(self, dim: int, generation: str = ""):
        self.dim = dim
        self.generation = generation  # the face_sequence generation its ids belong to
        self.last_id = 0  # every face with an id up to this one has been added (or was not of this size)
        self.lock = threading.RLock()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._inverted = False

    def __len__(self) -> int:
        return self._index.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self.lock:
            _threads_for(len(ids))
            self._index.add_with_ids(_float32(vectors), np.ascontiguousarray(ids, dtype=np.int64))
            if not self._inverted and self._index.ntotal > EXACT_UP_TO:
                vectors = self._index.index.reconstruct_n(0, self._index.ntotal)
                inverted = _inverted_index(vectors, LISTS, PROBES, TRAINING_SAMPLE)
                inverted.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids without scanning every list
                inverted.add_with_ids(vectors, faiss.vector_to_array(self._index.id_map))
                self._index, self._inverted = inverted, True

    def remove(self, ids) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids):
            with self.lock:
                # The inverted index finds each id in its hash table; the exact one scans its ids, asking a set.
                self._index.remove_ids(faiss.IDSelectorArray(ids) if self._inverted else faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) ids of the nearest faces (-1 past the last) and their cosine similarities, nearest first."""
        with self.lock:
            if self._index.ntotal == 0:
                return np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), -np.inf, np.float32)
            _threads_for(len(queries))
            similarities, ids = self._index.search(_float32(queries), k)
        return ids, similarities


def knn_graph(descriptors: np.ndarray, k: int, progress=None, chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Each descriptor's k nearest others: (N, k) row numbers (-1 where fewer were found) and cosine
    distances (inf there). Exact up to EXACT_UP_TO descriptors; above, an inverted-file index like
    FaceIndex's with a list per GRAPH_CELL faces, searching GRAPH_PROBES lists: every face is a query here,
    so the lists are kept small. progress: called with the fraction of rows searched."""
    vectors = _float32(descriptors)
    n, dim = vectors.shape
    _threads_for(n)
    if n <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
    else:
        lists = max(LISTS, n // GRAPH_CELL)
        index = _inverted_index(vectors, lists, GRAPH_PROBES, GRAPH_TRAINING * lists)
        # Each face's nearest lists, found once: where it is stored, and where it is searched for.
        list_similarities, nearest_lists = index.quantizer.search(vectors, GRAPH_PROBES)
        rows, home = np.arange(n, dtype=np.int64), np.ascontiguousarray(nearest_lists[:, 0])  # (held: faiss reads them)
        index.add_core(n, faiss.swig_ptr(vectors), faiss.swig_ptr(rows), faiss.swig_ptr(home))
    neighbours = np.empty((n, k), np.int64)
    distances = np.empty((n, k), np.float32)
    for start in range(0, n, chunk):
        if n <= EXACT_UP_TO:
            similarities, rows = index.search(vectors[start:start + chunk], k + 1)
        else:
            similarities, rows = index.search_preassigned(vectors[start:start + chunk], k + 1,
                                                          nearest_lists[start:start + chunk],
                                                          list_similarities[start:start + chunk])
        # Drop each face itself from its own answer (among exact duplicates it may not come first), or the
        # farthest answer when the face was not found.
        own = rows == np.arange(start, start + len(rows))[:, None]
        first_own = own & (np.cumsum(own, axis=1) == 1)
        dropped = np.where(first_own.any(axis=1), first_own.argmax(axis=1), k)
        keep = np.arange(k + 1) != dropped[:, None]
        neighbours[start:start + len(rows)] = rows[keep].reshape(len(rows), k)
        distances[start:start + len(rows)] = 1.0 - similarities[keep].reshape(len(rows), k)
        if progress:
            progress(min(start + chunk, len(descriptors)) / len(descriptors))
    distances[neighbours < 0] = np.inf
    return neighbours, distances


def _inverted_index(vectors: np.ndarray, lists: int, probes: int, sample: int):
    """An empty IVF index (float16 vectors) of `lists` k-means cells learnt from `sample` of the vectors."""
    dim = vectors.shape[1]
    inverted = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_fp16,
                                             faiss.METRIC_INNER_PRODUCT)
    inverted.cp.niter = TRAINING_ITERATIONS
    inverted.cp.min_points_per_centroid = min(inverted.cp.min_points_per_centroid, sample // lists)  # (no warning)
    chosen = np.random.default_rng(0).choice(len(vectors), min(len(vectors), sample), replace=False)
    inverted.train(vectors[np.sort(chosen)])
    inverted.nprobe = probes
    return inverted


def _threads_for(count: int) -> None:
    """OpenMP's thread count is the calling thread's own setting: this sets it for this thread's next call."""
    faiss.omp_set_num_threads(_CORES if count >= PARALLEL_FROM else 1)


def _float32(vectors) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)
