"""The nearest stored faces of a new face, fast at a million faces: a vector index beside the database.

The database is the truth; an index is a cache of its descriptors that each process holds, one per
project and descriptor size, and brings up to date before each use (FaceStore._catch_up):

- Every face row has an `id`, numbered in the order faces are stored and never reused (face_sequence).
  A transaction that takes ids holds the sequence's row until it commits, so ids become visible in
  increasing order: reading the project's rows with an id above the last one an index holds, up to the
  sequence's committed value (in the same statement: one snapshot), gives it every face any process or
  replica has stored (with or without the project's lock). A request that stores faces searches its index
  first, then, holding the lock, reads the faces stored since with the rest of what it reads, and compares
  its faces with those directly: as if it had searched the caught-up index, one round trip fewer.
- What a face is (its identity, whether it is confirmed) is read from the database for the neighbours a
  search returns, never from the index: moves and renames need no index update.
- Deleted faces leave an index lazily: a neighbour whose row is gone leaves the index, and the search
  runs again without it, so that it never takes a live face's place. (The process that deletes faces also
  drops them itself, after its transaction commits.)
- A recreated database starts a new `generation` of the numbering: the index is dropped and rebuilt.

Up to EXACT_UP_TO faces the index searches exactly; above, it is an inverted-file index (faiss IVF,
LISTS k-means cells, vectors stored as float16) trained once on the faces it holds when it crosses that
size, searching the PROBES cells nearest each query. Descriptors longer than SEARCHED_DIM (the default's
1152) are searched, from REDUCED_FROM faces on, by their SEARCHED_DIM principal components, learnt from the
project's own faces (and again when the index becomes inverted), and the CANDIDATES nearest there are
measured again on the whole descriptors, which the index keeps too.
bench/identity_store.py measures its recall against exact search (bench/results/identity_store.md).

A process keeps its indexes in an IndexCache: at most INDEX_CACHE_MB of them in memory, the least recently
used leaving first, and each written to a file in INDEX_DIR with the last face id it holds, so that a new
process (a restarted worker, a new replica, an index that left the cache) reads the file and catches up on
the faces stored since, instead of reading all of a project's faces from the database. A file is a cache
too: one that is not whole (its checksum), not of this project and size, or of another numbering
generation, or ahead of the database's numbering, is ignored, and the index is rebuilt from the database.
(A database restored from a backup keeps its generation: a file written after the backup was taken is
ahead of it, and rebuilt, until the restored database has numbered as many faces again; so INDEX_DIR is
emptied when a database is restored.)

A re-clustering (storage.identities.cluster_project) links faces by the close pairs among each face's
nearest others: build_graph indexes all of a project's descriptors once (exact, or inverted-file with small
lists; long descriptors of large projects by their principal components), and close_pairs searches it for
a run of faces, measuring the candidates' distances on the whole descriptors; both run in shards, in this
process or on Ray (service/ray_recluster.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

# Below this many faces an exact search costs under a millisecond, and k-means has too few faces to
# learn LISTS cells from (faiss wants ~40 per cell).
EXACT_UP_TO = 40_000
LISTS = 1024
# Cells searched per query. Of the exact 16 nearest synthetic 128-d faces (bench/common.py) closer than 0.2,
# at 10^6 faces 16 found 0.9997 in 0.4 ms (8: 0.993, 32: 1.0 in 0.8 ms; 300 queries, as the recall of
# bench/identity_store.py, whose results are in bench/results/identity_store.md).
PROBES = 16
# Longer descriptors are searched in this many principal components: the default's 1152-d faces in cells
# of their whole descriptors cost 9x the time of 128-d ones a probe, and a person's faces, spread up to the
# default's threshold of 0.3, fall into more cells than 16 probes reach (recall 0.97 in 4.5 ms at 10^6
# faces). In 128 components, of the exact 16 nearest synthetic 1152-d faces closer than 0.6, at 10^6 faces
# 16 probes found 0.957, 32 0.991, 48 0.997 in 0.8 / 1.2 ms (median / p95; 300 queries, one thread) and
# 64 0.9987 in 1.1 / 1.6 ms; the same with 32 candidates as with 64.
SEARCHED_DIM = 128
REDUCED_PROBES = 48
# The nearest faces in the principal components, of which the k nearest on the whole descriptors are kept.
CANDIDATES = 32
PCA_SAMPLE = 20_000  # faces the principal components are learnt from
# Long descriptors are searched by principal components from this many faces on, exactly up to EXACT_UP_TO
# (the components learnt then again, from all the faces, with the lists): an exact search of 20,000 whole
# 1152-d faces took 4 ms, of 40,000 twice that.
REDUCED_FROM = 4_000
# k-means iterations when the index is trained (faiss's default is 25): training is a pause in one request
# (1-2 s at 40,000 faces on 2 busy cores), and the cells only need to split the faces, not be optimal.
TRAINING_ITERATIONS = 10
TRAINING_SAMPLE = 64 * LISTS
# The nearest-neighbour graph of a re-clustering (build_graph) above EXACT_UP_TO faces: a list per this many
# faces, this many lists searched per face, and k-means learns the lists from this many faces per list.
# Probes: the default descriptors' faces of one person spread further (up to their threshold of 0.3, ~25
# degrees) than dlib's alone (0.1): of synthetic 1152-d faces' exact 32 nearest closer than 0.3, at 10^6
# faces (3,906 lists) 4 probes found 0.82, 16 found 0.95 (lists of 64 faces and 4 probes: 0.96 in twice
# the time; fewer, larger lists did worse). A pair lost one way is mostly found the other way:
# re-clustering 10^6 such faces (bench/results/identity_store_recluster.md) gave BCubed F1 0.9964 against
# the planted people with 4 probes, 1.0000 with 16, in 181 s of clustering instead of 173 (128-d faces,
# spread for 0.1: 0.9998 with 4).
GRAPH_CELL = 256
GRAPH_PROBES = 16
GRAPH_TRAINING = 16
# Longer descriptors than this, of projects of at least GRAPH_REDUCED_FROM faces, are searched for
# candidate neighbours in their GRAPH_DIM principal components (learnt from up to GRAPH_PCA_SAMPLE of the
# project's own faces), and the candidates' distances are then measured on the whole descriptors: the
# default 1152-d descriptors cost 9x the memory and time of 128-d ones in the index, and the pairs that
# link faces are those of the whole descriptors all the same (bench/results/identity_store.md).
GRAPH_DIM = 128
GRAPH_REDUCED_FROM = 10_000
GRAPH_PCA_SAMPLE = 100_000
# Candidate pairs are measured again on the whole descriptors this many queries at a time (the gathered
# neighbours' descriptors: 1,000 x 33 x 1152 float32 = 150 MB).
REMEASURED_QUERIES = 1000
# Fewer vectors than this are added or searched on the calling thread alone: starting OpenMP's threads for
# one face cost 12 ms instead of 0.1 ms on a busy 2-core machine.
PARALLEL_FROM = 1000
_CORES = faiss.omp_get_max_threads()
# An index is written to its file when the faces it took since it was last written (or read) reach this
# many and this share of it: a new process then reads the file and catches up on at most that many faces
# from the database (at 10^6 faces: a 0.3 GB file for every 50,000 new faces). Smaller indexes are rebuilt
# from the database in well under a second.
SAVE_MIN = 1000
SAVE_FRACTION = 0.05
# Memory per face beyond its vector: its id, the maps from ids to vectors (IndexIDMap2's reverse map, the
# inverted index's hash table) and the lists' spare room. Measured with 128-d faces: 57 bytes exact (40,000
# faces: 569 bytes each), 86 inverted (10^6 faces: 343 bytes each, 327 MiB).
FACE_OVERHEAD_BYTES = 80
FILE_MAGIC = b"autoannotator face index 1\n"
FILE_TRAILER = struct.Struct("<QI")  # the payload's length and the CRC-32 of header and payload
# Files a writer killed mid-write left behind (it writes a temporary file, then renames it).
ABANDONED_AFTER_S = 3600


class FaceIndex:
    """Approximate nearest neighbours by inner product of unit descriptors of one size, keyed by face id.

    Thread-safe: `lock` is held by every method (faiss releases the GIL while it searches).
    """

    def __init__(self, dim: int, generation: str = ""):
        self.dim = dim
        self.generation = generation  # the face_sequence generation its ids belong to
        self.last_id = 0  # every face with an id up to this one has been added (or was not of this size)
        self.unsaved = 0  # faces added since it was last written to its file (or read from it)
        self.lock = threading.RLock()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))  # what is searched
        self._whole: faiss.IndexIVF | None = None  # the whole descriptors by id, when _index holds a reduction
        self._inverted = False

    def __len__(self) -> int:
        return self._index.ntotal

    def nbytes(self) -> int:
        """About the memory it takes: its searched vectors (float32 exact, float16 inverted), the whole
        ones' float16 copy when it searches a reduction, and FACE_OVERHEAD_BYTES in each index."""
        searched = (self.dim if self._whole is None else SEARCHED_DIM) * (2 if self._inverted else 4)
        whole = 0 if self._whole is None else self.dim * 2 + FACE_OVERHEAD_BYTES
        return len(self) * (searched + FACE_OVERHEAD_BYTES + whole)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self.lock:
            _threads_for(len(ids))
            ids, vectors = np.ascontiguousarray(ids, dtype=np.int64), _float32(vectors)
            self._index.add_with_ids(vectors, ids)
            if self._whole is not None:
                self._whole.add_with_ids(vectors, ids)
            held = self._index.ntotal
            if not self._inverted and held > EXACT_UP_TO:
                self._rebuild(inverted=True)
            elif self._whole is None and self.dim > SEARCHED_DIM and held > REDUCED_FROM:
                self._rebuild(inverted=False)
            self.unsaved += len(ids)

    def _rebuild(self, inverted: bool) -> None:
        """Index the faces held anew (holding lock): long descriptors by principal components learnt from
        them, exactly or in inverted lists learnt from them too."""
        ids, vectors = self._held()
        if self.dim > SEARCHED_DIM:
            reduction, reduced = _principal_components(vectors, SEARCHED_DIM, PCA_SAMPLE)
            inner = (_inverted_index(reduced, LISTS, REDUCED_PROBES, TRAINING_SAMPLE) if inverted
                     else faiss.IndexIDMap2(faiss.IndexFlatIP(SEARCHED_DIM)))
            searched = faiss.IndexPreTransform(faiss.NormalizationTransform(SEARCHED_DIM), inner)
            searched.prepend_transform(reduction)  # the principal components, then unit length
            if self._whole is None:
                self._whole = _inverted_index(vectors, 1, 1, 1)  # (one list: a store of float16 vectors by id)
                self._whole.set_direct_map_type(faiss.DirectMap.Hashtable)
                self._whole.add_with_ids(vectors, ids)
        else:
            searched = _inverted_index(vectors, LISTS, PROBES, TRAINING_SAMPLE)
        if inverted:
            faiss.extract_index_ivf(searched).set_direct_map_type(faiss.DirectMap.Hashtable)  # (see remove)
        searched.add_with_ids(vectors, ids)
        self._index, self._inverted = searched, inverted

    def _held(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids and vectors of the faces held (holding lock): the whole ones."""
        if self._whole is None:  # (exact, whole descriptors)
            return faiss.vector_to_array(self._index.id_map), self._index.index.reconstruct_n(0, self._index.ntotal)
        lists = self._whole.invlists
        ids = faiss.rev_swig_ptr(lists.get_ids(0), lists.list_size(0)).copy()
        return ids, self._whole.reconstruct_batch(ids)

    def remove(self, ids) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids):
            with self.lock:
                # The inverted index finds each id in its hash table; the exact one scans its ids, asking a set.
                self._index.remove_ids(faiss.IDSelectorArray(ids) if self._inverted else faiss.IDSelectorBatch(ids))
                if self._whole is not None:
                    self._whole.remove_ids(faiss.IDSelectorArray(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) ids of the nearest faces (-1 past the last) and their cosine similarities, nearest first."""
        queries = _float32(queries)
        with self.lock:
            if self._index.ntotal == 0:
                return np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), -np.inf, np.float32)
            _threads_for(len(queries))
            if self._whole is None:
                similarities, ids = self._index.search(queries, k)
                return ids, similarities
            _, ids = self._index.search(queries, max(k, CANDIDATES))
            found = ids >= 0
            whole = self._whole.reconstruct_batch(ids[found])
        similarities = np.full(ids.shape, -np.inf, np.float32)
        similarities[found] = np.einsum("qd,qd->q", np.repeat(queries, found.sum(axis=1), axis=0), whole)
        nearest = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, nearest, axis=1), np.take_along_axis(similarities, nearest, axis=1)


class IndexCache:
    """One process's vector indexes, by (project, descriptor size): at most `max_bytes` of them in memory
    (FaceIndex.nbytes; the one used last stays whatever its size), the least recently used leaving first;
    each one written to a file in `directory` (None: never written) by a thread of its own, when it has
    taken enough new faces (SAVE_MIN, SAVE_FRACTION) and when it leaves with faces its file lacks.

    `get` gives the cached index, or the one its file holds, or an empty one; the caller catches it up
    with the database (FaceStore._catch_up), and calls `used` after adding faces to it."""

    def __init__(self, directory: Path | None, max_bytes: int):
        self.directory = Path(directory) if directory else None
        self.max_bytes = max_bytes
        self._indexes: OrderedDict[tuple[str, int], FaceIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}  # one reader of a key's file at a time
        self._saves: queue.Queue = queue.Queue()
        self._queued: set[int] = set()  # id() of the indexes waiting in _saves
        self._saver: threading.Thread | None = None
        if self.directory:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                for leftover in self.directory.glob(".*.tmp"):
                    if time.time() - leftover.stat().st_mtime > ABANDONED_AFTER_S:
                        leftover.unlink(missing_ok=True)
            except OSError as error:  # (a Ray node without the driver's folder): indexes stay in memory
                logger.warning("face indexes will not be written to %s: %s", self.directory, error)
                self.directory = None

    def get(self, project: str, dim: int) -> FaceIndex:
        key = (project, dim)
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._indexes:
                    return self._indexes[key]
            index = self._read(project, dim) or FaceIndex(dim)
            with self._lock:
                self._indexes[key] = index
                self._loading.pop(key, None)
                self._evict()
        return index

    def fresh(self, project: str, dim: int, generation: str) -> FaceIndex:
        """An empty index in place of the cached one: the database's face numbering is not the one it
        holds (a recreated database: another generation; one restored from a backup: fewer faces)."""
        index = FaceIndex(dim, generation)
        with self._lock:
            self._indexes[(project, dim)] = index
            self._indexes.move_to_end((project, dim))
        return index

    def used(self, project: str, index: FaceIndex) -> None:
        """After faces were added to `index`: written when enough of them are new, and others leave
        when the cache is over its size."""
        if index.unsaved >= max(SAVE_MIN, SAVE_FRACTION * len(index)):
            self._save(project, index)
        with self._lock:
            self._evict()

    def of_project(self, project: str) -> list[FaceIndex]:
        with self._lock:
            return [index for (indexed, _), index in self._indexes.items() if indexed == project]

    def items(self) -> list[tuple[tuple[str, int], FaceIndex]]:
        with self._lock:
            return list(self._indexes.items())

    def flush(self) -> None:
        """Wait until every index due to be written so far is written."""
        self._saves.join()

    def path(self, project: str, dim: int) -> Path | None:
        if self.directory is None:
            return None
        name = hashlib.blake2b(project.encode(), digest_size=16).hexdigest()  # project ids are any text
        return self.directory / f"{name}-{dim}.faiss"

    def _evict(self) -> None:
        """(holding _lock)"""
        total = sum(index.nbytes() for index in self._indexes.values())
        while len(self._indexes) > 1 and total > self.max_bytes:
            (project, _), index = self._indexes.popitem(last=False)
            total -= index.nbytes()
            if index.unsaved >= SAVE_MIN:
                self._save(project, index, holding_lock=True)

    def _save(self, project: str, index: FaceIndex, holding_lock: bool = False) -> None:
        if self.directory is None:
            return
        with (contextlib.nullcontext() if holding_lock else self._lock):
            if id(index) in self._queued:
                return
            self._queued.add(id(index))
            if self._saver is None:
                self._saver = threading.Thread(target=self._write_queued, name="face-index-saver", daemon=True)
                self._saver.start()
        self._saves.put((project, index))

    def _write_queued(self) -> None:
        while True:
            project, index = self._saves.get()
            try:
                self._write(project, index)
            finally:
                with self._lock:
                    self._queued.discard(id(index))
                self._saves.task_done()

    def _write(self, project: str, index: FaceIndex) -> None:
        """To a temporary file, renamed over the index's file once whole and on disk: a reader sees the old
        file or the new one. Searches of the index wait while it is serialised (~0.3 s for 10^6 faces)."""
        path = self.path(project, index.dim)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(temporary, "wb") as file:
                with index.lock:
                    header = json.dumps({"project": project, "dim": index.dim, "generation": index.generation,
                                         "last_id": int(index.last_id), "faces": len(index),
                                         "whole": index._whole is not None}).encode()
                    file.write(FILE_MAGIC + struct.pack("<I", len(header)) + header)
                    checksum, length = zlib.crc32(header), 0

                    def write(chunk: bytes) -> int:
                        nonlocal checksum, length
                        checksum, length = zlib.crc32(chunk, checksum), length + len(chunk)
                        return file.write(chunk)

                    for inner in (index._index, index._whole):
                        if inner is not None:
                            faiss.write_index(inner, faiss.PyCallbackIOWriter(write))
                    written = index.unsaved
                file.write(FILE_TRAILER.pack(length, checksum))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            _sync_directory(path.parent)
            with index.lock:
                index.unsaved -= written
            logger.info("face index of project %s (%d faces, up to face %d) written to %s", project, len(index),
                        index.last_id, path)
        except (OSError, RuntimeError) as error:  # a full disk, a faiss error: the index stays in memory
            logger.warning("cannot write the face index of project %s to %s: %s", project, path, error)
            temporary.unlink(missing_ok=True)

    def _read(self, project: str, dim: int) -> FaceIndex | None:
        """The index in the project's file, if the file is whole and of this project and size; None when
        there is none or it cannot be trusted (then the caller rebuilds it from the database, and the file
        is overwritten when the rebuilt index is written)."""
        path = self.path(project, dim)
        if path is None or not path.exists():
            return None
        started = time.perf_counter()
        try:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if file.read(len(FILE_MAGIC)) != FILE_MAGIC:
                    raise ValueError("not a face index file")
                [header_length] = struct.unpack("<I", file.read(4))
                header_bytes = file.read(header_length)
                header = json.loads(header_bytes)
                if header["project"] != project or header["dim"] != dim:
                    raise ValueError(f"it holds project {header['project']!r}, {header['dim']}-d descriptors")
                start = file.tell()
                file.seek(size - FILE_TRAILER.size)
                length, expected = FILE_TRAILER.unpack(file.read(FILE_TRAILER.size))
                if start + length + FILE_TRAILER.size != size:
                    raise ValueError("cut short")
                file.seek(start)
                checksum = zlib.crc32(header_bytes)
                for chunk in iter(lambda: file.read(min(1 << 24, start + length - file.tell())), b""):
                    checksum = zlib.crc32(chunk, checksum)
                if checksum != expected:
                    raise ValueError("its checksum does not match")
                file.seek(start)
                inner = faiss.read_index(faiss.PyCallbackIOReader(file.read))
                whole = faiss.read_index(faiss.PyCallbackIOReader(file.read)) if header.get("whole") else None
            if inner.ntotal != header["faces"] or inner.d != dim or (
                    whole is not None and (whole.ntotal != inner.ntotal or whole.d != dim)):
                raise ValueError("its index does not match its header")
            if dim > SEARCHED_DIM and whole is None and inner.ntotal > REDUCED_FROM:
                raise ValueError("an earlier version's: it searches the whole descriptors")
        except (OSError, ValueError, KeyError, TypeError, struct.error, RuntimeError) as error:
            logger.warning("face index file %s of project %s not used (%s): rebuilding it from the database",
                           path, project, error)
            return None
        index = FaceIndex(dim, header["generation"])
        index._index, index._whole = inner, whole
        ivf = faiss.try_extract_index_ivf(inner)
        index._inverted = ivf is not None
        if index._inverted:
            ivf.nprobe = PROBES if whole is None else REDUCED_PROBES
        index.last_id = int(header["last_id"])
        logger.info("face index of project %s (%d faces, up to face %d) read from %s in %.1f s", project,
                    len(index), index.last_id, path, time.perf_counter() - started)
        return index


def _sync_directory(directory: Path) -> None:
    """A rename is on disk once its directory is."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class Graph:
    """What every shard of a re-clustering's nearest-neighbour search reads (close_pairs): all descriptors
    and an index of them all."""

    vectors: np.ndarray  # (N, D) float32, unit: the pairs' distances are measured on these
    searched: np.ndarray  # (N, d) float32, unit: what the index holds (vectors, or their GRAPH_DIM reduction)
    index: faiss.Index  # exact, or inverted with each face in its nearest list
    neighbours: int  # a face is paired with this many nearest others
    radius: float  # of which those closer than this are kept
    lists: np.ndarray | None  # inverted: (N, GRAPH_PROBES) the lists searched for each face, nearest first
    list_similarities: np.ndarray | None  # and their centroids' similarities to it


def build_graph(vectors: np.ndarray, neighbours: int, radius: float, executor, shards: list[tuple[int, int]],
                progress) -> Graph:
    """The index close_pairs searches, of unit float32 `vectors`: exact up to EXACT_UP_TO faces; above, an
    inverted-file index like FaceIndex's with a list per GRAPH_CELL faces, searching GRAPH_PROBES lists
    (every face is a query here, so the lists are kept small). Descriptors longer than GRAPH_DIM of
    GRAPH_REDUCED_FROM faces or more are indexed by their principal components (see GRAPH_DIM).

    Each face's nearest lists are found once, in `shards` (runs of rows: (first, past the last)) on
    `executor` (a storage.identities.Executor): where the face is stored and where its neighbours are
    looked for. progress: called with the fraction of them done."""
    n, dim = vectors.shape
    _threads_for(n)
    searched = vectors
    if dim > GRAPH_DIM and n >= GRAPH_REDUCED_FROM:
        _, searched = _principal_components(vectors, GRAPH_DIM, GRAPH_PCA_SAMPLE)
    if n <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(searched.shape[1])
        index.add(searched)
        return Graph(vectors, searched, index, neighbours, radius, None, None)
    lists = max(LISTS, n // GRAPH_CELL)
    index = _inverted_index(searched, lists, GRAPH_PROBES, GRAPH_TRAINING * lists)
    found = []
    for shard in executor.map(nearest_lists, (index.quantizer, searched), shards):
        found.append(shard)
        progress(len(found) / len(shards))
    similarities, nearest = (np.concatenate(part) for part in zip(*found))
    rows, home = np.arange(n, dtype=np.int64), np.ascontiguousarray(nearest[:, 0])  # (held: faiss reads them)
    index.add_core(n, faiss.swig_ptr(searched), faiss.swig_ptr(rows), faiss.swig_ptr(home))
    return Graph(vectors, searched, index, neighbours, radius, nearest, similarities)


def nearest_lists(quantizer: faiss.Index, vectors: np.ndarray, rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The GRAPH_PROBES lists nearest each of the faces rows[0]..rows[1]-1: (similarities, lists)."""
    queries = vectors[rows[0]:rows[1]]
    _threads_for(len(queries))
    return quantizer.search(queries, GRAPH_PROBES)


def close_pairs(graph: Graph, rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs closer than graph.radius of each of the faces rows[0]..rows[1]-1 and its graph.neighbours
    nearest others (in the searched space): (face, other face, cosine distance of their whole descriptors),
    each an array."""
    start, stop = rows
    queries = graph.searched[start:stop]
    _threads_for(len(queries))
    if graph.lists is None:  # (the face itself is usually one of the nearest)
        similarities, found = graph.index.search(queries, graph.neighbours + 1)
    else:
        similarities, found = graph.index.search_preassigned(
            queries, graph.neighbours + 1, graph.lists[start:stop], graph.list_similarities[start:stop])
    faces = np.broadcast_to(np.arange(start, stop)[:, None], found.shape)
    if graph.searched is not graph.vectors:  # reduced: the candidates' distances, measured on the whole ones
        for first in range(0, len(found), REMEASURED_QUERIES):
            part = slice(first, first + REMEASURED_QUERIES)
            others = graph.vectors[np.maximum(found[part], 0)]
            similarities[part] = np.einsum("qd,qkd->qk", graph.vectors[start + first:start + first + len(others)],
                                           others)
    distances = 1.0 - similarities
    close = (found >= 0) & (found != faces) & (distances < graph.radius)
    return faces[close], found[close], distances[close]


def _principal_components(vectors: np.ndarray, dim: int, sample: int) -> tuple[faiss.PCAMatrix, np.ndarray]:
    """The `dim` principal components learnt from `sample` of the vectors, and the vectors in them at unit
    length: (N, dim) float32, applied `sample` rows at a time (apply's result is a new array)."""
    reduction = faiss.PCAMatrix(vectors.shape[1], dim)
    reduction.train(_sample(vectors, sample))
    reduced = np.empty((len(vectors), dim), np.float32)
    for start in range(0, len(vectors), sample):
        reduced[start:start + sample] = reduction.apply(vectors[start:start + sample])
    faiss.normalize_L2(reduced)
    return reduction, reduced


def _sample(vectors: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` of the vectors, chosen at random (always the same ones), in their order."""
    chosen = np.random.default_rng(0).choice(len(vectors), min(len(vectors), count), replace=False)
    return vectors[np.sort(chosen)]


def _inverted_index(vectors: np.ndarray, lists: int, probes: int, sample: int):
    """An empty IVF index (float16 vectors) of `lists` k-means cells learnt from `sample` of the vectors."""
    dim = vectors.shape[1]
    inverted = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_fp16,
                                             faiss.METRIC_INNER_PRODUCT)
    inverted.cp.niter = TRAINING_ITERATIONS
    inverted.cp.min_points_per_centroid = min(inverted.cp.min_points_per_centroid, sample // lists)  # (no warning)
    inverted.train(_sample(vectors, sample))
    inverted.nprobe = probes
    return inverted


def _threads_for(count: int) -> None:
    """OpenMP's thread count is the calling thread's own setting: this sets it for this thread's next call."""
    faiss.omp_set_num_threads(_CORES if count >= PARALLEL_FROM else 1)


def _float32(vectors) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)
