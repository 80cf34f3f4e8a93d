"""Face store (backend.storage) at 10^5 and 10^6 faces: assigning one face, the vector index's recall
against exact search, and re-clustering the whole project.

    python -m bench.identity_store [--sizes 100000 1000000] [--database-url postgresql://...] [--no-recluster]
                                   [--no-assign] [--dim 1152] [--threshold 0.3]

Each (database, size) runs in a child process of its own, so that its peak memory is its own. A fresh
project is filled with `size` synthetic faces (bench/common.py: unit descriptors of --dim, by default the
default preset's joined size, 1152; ten faces per planted person on average, spread for --threshold, by
default the default descriptors' identity_distance: a person's faces ~0.3 thresholds apart, people ~1
apart; `--dim 128 --threshold 0.1` are dlib's ResNet alone), written in bulk with their
planted person as identity (filling a million faces through FaceStore.assign would take most of an hour
here; the assignment itself is what is timed below). Then:

- cold start without an index file: the first assignment, whose process has no index yet and reads every
  face from the database into one (what a replica did after it started before indexes were written; its
  search waits while the index it built is copied to its file, in the background); then the time that
  writing the index to INDEX_DIR takes;
- cold start with the index file: another process's first assignment, which reads the file and catches
  up on the faces stored since it was written (those the assignments below stored), and how much resident
  memory the index it read takes there;
- assign one face: ASSIGNS single-face requests (new tasks, faces of planted people) through
  FaceStore.assign_with_confidence, as /predict stores a one-image request, commit included (SQLite:
  fsync, WAL): median and 95th percentile, and whether each joined its planted person; and ASSIGNS / 4
  faces of new people (each founds an identity);
- recall: for RECALL_QUERIES new faces, the NEIGHBOURS nearest faces the index returns against the exact
  nearest ones (numpy over all descriptors): of the exact ones closer than RECALL_RADIUS (twice the
  threshold: every face that can vote), the share found; and of all NEIGHBOURS exact ones, the share found
  (those past the radius are other people, ~1 away, in no particular order);
- recluster, in a child process of its own as `autoannotator recluster` runs: read every face,
  cluster_project, relabel (write moved faces, rebuild every identity's sum): what it does before it talks
  to Label Studio; its BCubed F1 against the planted people, and that process's peak resident memory;
  then (after the peak was taken) the recall of the graph's close pairs: of each of PAIR_QUERIES faces'
  GRAPH_NEIGHBOURS exact nearest faces closer than the threshold (numpy over all descriptors), the share
  that close_pairs returns (long descriptors: searched in their principal components, then measured whole).

Beside the assignment's time, the time of an empty write transaction (the project's lock and a commit:
SQLite's fsync) says how much of it is the database's durability rather than the search.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from backend.storage import FaceStore, NewFace, cluster_project
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect
from backend.storage.identities import GRAPH_NEIGHBOURS, NEIGHBOURS, InProcess, _row_shards
from backend.storage.vector_index import build_graph, close_pairs

from .common import (FACES_PER_PERSON, REPO_ROOT, default_descriptors, faces_of, machine, markdown_table, noise_for,
                     person_directions, write_results)

BULK_ROWS = 20_000
ASSIGNS = 400
RECALL_QUERIES = 500
PAIR_QUERIES = 1000
EXACT_QUERIES = 100  # queries compared with every stored face at once (100 x 10^6 float32: 0.4 GB)
NO_LANDMARKS = np.full((5, 2), np.nan)
BOX = np.array([10.0, 10.0, 60.0, 60.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--database-url", help="also run on this PostgreSQL database (postgresql://...)")
    parser.add_argument("--no-recluster", action="store_true", help="leave the whole-project re-clustering out")
    parser.add_argument("--no-assign", action="store_true", help="fill and re-cluster only")
    add_descriptor_arguments(parser)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # step, database, size, project, index dir
    args = parser.parse_args()
    if args.child:
        step, where, size, project, index_dir = args.child
        steps = {"fill": _fill, "assign": _fill_and_assign, "load": _load, "recluster": _recluster}
        print(json.dumps(steps[step](where, int(size), project, Path(index_dir), args.dim, args.threshold)))
        return

    threshold = args.threshold
    machine_line = machine()
    rows, warmed = [], []
    with tempfile.TemporaryDirectory(prefix="bench-identity-store-") as directory:
        databases = {"SQLite": str(Path(directory) / "faces.sqlite3")}
        if args.database_url:
            databases["PostgreSQL"] = args.database_url
        for database, where in databases.items():
            for size in args.sizes:
                r, project = {}, f"bench-{size}-{time.time_ns()}"
                index_dir = Path(directory) / f"indexes-{database}-{size}"
                steps = (("fill",) if args.no_assign else ("assign", "load")) + (
                    () if args.no_recluster else ("recluster",))
                for step in steps:
                    command = [sys.executable, "-m", "bench.identity_store", "--child", step, where, str(size), project,
                               str(index_dir), "--dim", str(args.dim), "--threshold", str(threshold)]
                    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"{database} {size} {step}: {done.stderr[-3000:]}")
                    r.update(json.loads(done.stdout.strip().splitlines()[-1]))
                shutil.rmtree(index_dir, ignore_errors=True)
                warmed.append(r)
                rows.append([database, f"{size:,}", f"{r['fill']:.0f}"] + ([] if args.no_assign else [
                    f"{r['median_ms']:.1f} / {r['p95_ms']:.1f}", f"{r['new_median_ms']:.1f} / {r['new_p95_ms']:.1f}",
                    f"{r['commit_ms']:.1f} / {r['commit_p95_ms']:.1f}", f"{r['joined']:.3f}",
                    f"{r['near_recall']:.4f} ({r['near']:,})", f"{r['recall']:.3f}", f"{r['build']:.1f}",
                    f"{r['save']:.1f} ({r['file_mib']:,.0f} MiB)", f"{r['load']:.2f} ({r['caught_up']:,})",
                    f"{r['index_mib']:,.0f} ({r['index_estimate_mib']:,.0f})"]) + ([] if args.no_recluster else [
                    f"{r['recluster']:.0f} ({r['read']:.0f} + {r['cluster']:.0f} + {r['write']:.0f})",
                    f"{r['recluster_f1']:.4f}", f"{r['moved']:,}", f"{r['peak_mib']:,.0f}",
                    f"{r['pair_recall']:.4f} ({r['pairs']:,})"]))
                print(rows[-1], flush=True)
    default_dim, default_threshold = default_descriptors()
    which = ("the default descriptors'" if (args.dim, threshold) == (default_dim, default_threshold)
             else "dlib's ResNet alone" if (args.dim, threshold) == (128, 0.1) else "chosen")
    sections = [
        f"Synthetic faces ({args.dim}-d, {FACES_PER_PERSON} per planted person, noise {noise_for(threshold):.2f}: "
        f"bench/common.py), identity_distance {threshold:g} ({which}), {NEIGHBOURS} nearest faces vote; each "
        "database and size in a child process. The machine is shared with other jobs: times move by ~20% or "
        "more between runs.",
        markdown_table(["database", "stored faces", "bulk fill (s)"] + ([] if args.no_assign else [
                           "assign one face of a known person: median / p95 (ms)",
                           "assign one face of a new person: median / p95 (ms)",
                           "an empty write transaction: median / p95 (ms)", "assigned to their planted person",
                           f"index recall, neighbours closer than {2 * threshold:g} (how many)",
                           f"index recall@{NEIGHBOURS}, all", "cold start without an index file (s)",
                           "writing the index file (s)", "cold start with the index file (s; faces caught up)",
                           "index memory (MiB resident; FaceIndex.nbytes)"]) + ([] if args.no_recluster else [
                           "recluster (s): read + cluster + write", "recluster BCubed F1 vs planted",
                           "faces moved by recluster", "recluster peak memory (MiB, resident)",
                           f"recluster's close pairs: recall of the exact ones closer than {threshold:g} "
                           f"among {GRAPH_NEIGHBOURS} nearest ({PAIR_QUERIES:,} faces; how many)"]), rows),
    ] + ([] if args.no_assign else [
        "How to read it: an assignment is one index search and two round trips to "
        "the database (PostgreSQL: statements pipelined), one that reads and one that writes and commits; "
        "a new person's takes a third, for its identity number. Most of its "
        "time is the database's, and the empty write transaction next to it (the project's lock and a commit: "
        "PostgreSQL's WAL flush, SQLite's fsync) moves with the load of the machine and its disk, which "
        "other jobs share. The recall that counts "
        f"is the first: every stored face close enough to vote (within twice the threshold) is found. Past "
        f"a person's ~{FACES_PER_PERSON} faces, the next nearest synthetic faces are other people, all ~1 "
        "away and about as far as each other, so which of them come back is of no consequence (recall@16, "
        "all). A cold start is once per process and project (a worker's first request of a project, or "
        "its first after the project's index left the cache): with the index file it reads the file and "
        "the faces stored after it was written; the bulk fill writes the rows and rebuilds every identity's "
        "descriptor sum. PostgreSQL: the assignments are timed after pg_prewarm read what they look up (the faces' "
        "rows and their id index, identities and their sums: ~0.9 GiB at 10^6 faces) into shared buffers"
        + (", as a server in service holds them" if any(r.get("warmed") for r in warmed) else
           " (not this time: the extension could not be created)") + "; the server's settings are in the "
        "README."]) + (["Re-clustering was left out of this run (`--no-recluster`): the README has "
                                "its last figures."] if args.no_recluster else [])
    name = "identity_store_recluster" if args.no_assign else "identity_store"
    path = write_results(name, "Face store at 10^5 and 10^6 faces: " + (
        "recluster" if args.no_assign else "assign, index recall, recluster"), machine_line, sections)
    command = " ".join(["python -m bench.identity_store", *sys.argv[1:]])
    path.write_text(path.read_text().replace(f"`python -m bench.{name}`", f"`{command}`"))


def add_descriptor_arguments(parser: argparse.ArgumentParser) -> None:
    """--dim and --threshold of the synthetic faces: by default the default preset's joined descriptor."""
    dim, threshold = default_descriptors()
    parser.add_argument("--dim", type=int, default=dim, help=f"descriptor size (default: {dim}, the default "
                        "preset's descriptors joined)")
    parser.add_argument("--threshold", type=float, default=threshold, help="identity_distance; the planted "
                        f"people are spread for it (default: {threshold:g}, the default descriptors')")


def _open(where: str, index_dir: Path | None = None) -> FaceStore:
    return FaceStore(PostgreSQLDialect(where) if where.startswith("postgres") else SQLiteDialect(Path(where)),
                     index_dir)


def _warm(store: FaceStore) -> bool:
    """PostgreSQL: read what an assignment looks up (faces' rows and their id index, identities and their
    sums) into shared buffers with pg_prewarm, as a server in service holds them; the bulk fill and the cold
    start pushed them out for the 5.7 GiB of descriptors they wrote and read. Whether it could (the
    extension, from PostgreSQL's contrib, needs a superuser to be created)."""
    if not isinstance(store.dialect, PostgreSQLDialect):
        return False
    db = store._connection()
    try:
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    except Exception:  # (psycopg.Error: not a superuser, or no contrib)
        return False
    db.execute("SELECT pg_prewarm(c.oid) FROM pg_class c WHERE c.relname IN ('faces', 'faces_by_id', 'identities', "
               "'identities_pkey') OR c.oid = (SELECT reltoastrelid FROM pg_class WHERE relname = 'identities') OR "
               "c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = (SELECT reltoastrelid FROM pg_class "
               "WHERE relname = 'identities'))").fetchall()
    return True


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _planted(size: int, dim: int, threshold: float, descriptors: bool = True):
    """The same people and faces in every step: (rng, directions, planted person of each face, descriptors
    or None)."""
    rng = np.random.default_rng(size)
    directions = person_directions(rng, max(1, size // FACES_PER_PERSON), dim)
    planted = rng.integers(0, len(directions), size)
    return rng, directions, planted, faces_of(rng, directions, planted, noise_for(threshold)) if descriptors else None


def _fill(where: str, size: int, project: str, index_dir: Path, dim: int, threshold: float) -> dict:
    _, _, planted, descriptors = _planted(size, dim, threshold)
    return {"fill": _bulk_fill(_open(where, index_dir), project, planted, descriptors)}


def _fill_and_assign(where: str, size: int, project: str, index_dir: Path, dim: int, threshold: float) -> dict:
    store = _open(where, index_dir)
    rng, directions, planted, descriptors = _planted(size, dim, threshold)
    noise = noise_for(threshold)
    people = len(directions)
    outcome = {"fill": _bulk_fill(store, project, planted, descriptors)}
    # Not held while assignments are timed: a worker holds no 4.3 GiB of descriptors (at 10^6 faces), which
    # would leave the page cache that much less of the database. The same ones again for the recall below.
    del descriptors

    def request(person: int, task: str):
        [face] = faces_of(rng, directions, np.array([person]), noise)
        return [NewFace(task, "face1", BOX, NO_LANDMARKS, face, 0)]

    identity_of = dict(zip(planted.tolist(), (planted + 1).tolist()))  # the bulk fill's identity numbers
    started = time.perf_counter()
    store.assign(project, request(0, "first"), "bench", threshold)
    outcome["build"] = time.perf_counter() - started
    store.flush_indexes()  # the index it built, written in the background (the search above waited for its copy)
    [(_, built)] = store._indexes.items()
    started = time.perf_counter()
    store._indexes._write(project, built)  # what that took, on this thread
    outcome["save"] = time.perf_counter() - started
    outcome["file_mib"] = sum(f.stat().st_size for f in index_dir.glob("*.faiss")) / 2**20
    outcome["warmed"] = _warm(store)

    seconds, joined = [], 0
    for n, person in enumerate(rng.choice(np.unique(planted), ASSIGNS, replace=False).tolist()):
        faces = request(person, f"new-{n}")
        started = time.perf_counter()
        [assignment] = store.assign_with_confidence(project, faces, "bench", threshold)
        seconds.append(time.perf_counter() - started)
        joined += assignment.identity == f"person_{identity_of[person]}"
    outcome.update(median_ms=float(np.median(seconds) * 1e3), p95_ms=float(np.percentile(seconds, 95) * 1e3),
                   joined=joined / ASSIGNS)
    seconds = []
    for n, face in enumerate(faces_of(rng, person_directions(rng, ASSIGNS // 4, dim), np.arange(ASSIGNS // 4), noise)):
        started = time.perf_counter()
        store.assign_with_confidence(project, [NewFace(f"stranger-{n}", "face1", BOX, NO_LANDMARKS, face, 0)],
                                     "bench", threshold)
        seconds.append(time.perf_counter() - started)
    outcome.update(new_median_ms=float(np.median(seconds) * 1e3),
                   new_p95_ms=float(np.percentile(seconds, 95) * 1e3))
    seconds = []
    for _ in range(ASSIGNS // 4):
        started = time.perf_counter()
        with store._locked(f"project:{project}") as db:
            store._run(db, "UPDATE face_sequence SET last_face = last_face + 1")
        seconds.append(time.perf_counter() - started)
    outcome.update(commit_ms=float(np.median(seconds) * 1e3), commit_p95_ms=float(np.percentile(seconds, 95) * 1e3))

    [(_, index)] = store._indexes.items()
    queries = faces_of(rng, directions, rng.integers(0, people, RECALL_QUERIES), noise)
    found, _ = index.search(queries, NEIGHBOURS)
    descriptors = _planted(size, dim, threshold)[3]
    ids = _face_ids(store, project)  # row i of `descriptors` is face ids[i]
    hits = near_hits = near = 0
    for first in range(0, RECALL_QUERIES, EXACT_QUERIES):
        distances = 1.0 - queries[first:first + EXACT_QUERIES] @ descriptors.T
        nearest = np.argpartition(distances, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        for row, answer, exact in zip(distances, found[first:first + EXACT_QUERIES], nearest):
            returned = set(answer.tolist())
            close = exact[row[exact] < 2 * threshold]
            hits += sum(ids[i] in returned for i in exact)
            near_hits += sum(ids[i] in returned for i in close)
            near += len(close)
    outcome.update(recall=hits / (RECALL_QUERIES * NEIGHBOURS), near_recall=near_hits / max(near, 1), near=near)
    return outcome


def _load(where: str, size: int, project: str, index_dir: Path, dim: int, threshold: float) -> dict:
    """Another process's first assignment: it reads the index file, written after the first assignment of
    _fill_and_assign, and catches up on the faces stored since; and the memory the index takes there."""
    store = _open(where, index_dir)
    [face] = person_directions(np.random.default_rng(0), 1, dim)  # (not all the planted faces: memory is measured)
    resident = _resident_mib()
    started = time.perf_counter()
    store.assign(project, [NewFace("first-of-another", "face1", BOX, NO_LANDMARKS, face, 0)], "bench", threshold)
    seconds = time.perf_counter() - started
    [(_, index)] = store._indexes.items()
    return dict(load=seconds, index_mib=_resident_mib() - resident, index_estimate_mib=index.nbytes() / 2**20,
                caught_up=index.unsaved)


def _recluster(where: str, size: int, project: str, index_dir: Path, dim: int, threshold: float) -> dict:
    store = _open(where)
    started = time.perf_counter()
    before = store.faces(project)
    read = time.perf_counter()
    labels = cluster_project(before.descriptors, threshold)
    clustered = time.perf_counter()
    result = store.relabel(project, before, labels)
    written = time.perf_counter()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bulk = np.array([task.isdigit() for task in before.tasks])
    planted = _planted(size, dim, threshold, descriptors=False)[2][[int(task) for task in np.array(before.tasks)[bulk]]]
    return dict(read=read - started, cluster=clustered - read, write=written - clustered, recluster=written - started,
                moved=result["moved"], recluster_f1=_bcubed_f1(planted, labels[bulk]), peak_mib=peak_mib,
                **_pair_recall(before.descriptors, threshold))


def _pair_recall(descriptors: np.ndarray, threshold: float) -> dict:
    """Of the exact GRAPH_NEIGHBOURS nearest faces closer than the threshold of the first PAIR_QUERIES
    faces (the store's order: planted people at random), the share that cluster_project's close pairs hold
    (a graph as cluster_project builds it, its pairs of those faces)."""
    n = len(descriptors)
    graph = build_graph(descriptors, GRAPH_NEIGHBOURS, threshold, InProcess(),
                        _row_shards(n), lambda fraction: None)
    first, second, _ = close_pairs(graph, (0, PAIR_QUERIES))
    del graph
    found = set(zip(first.tolist(), second.tolist()))
    expected = 0
    hits = 0
    for start in range(0, PAIR_QUERIES, EXACT_QUERIES):
        distances = 1.0 - descriptors[start:start + EXACT_QUERIES] @ descriptors.T
        distances[np.arange(len(distances)), np.arange(start, start + len(distances))] = np.inf
        nearest = np.argpartition(distances, GRAPH_NEIGHBOURS, axis=1)[:, :GRAPH_NEIGHBOURS]
        for face, (row, exact) in enumerate(zip(distances, nearest), start=start):
            close = exact[row[exact] < threshold]
            expected += len(close)
            hits += sum((face, int(other)) in found for other in close)
    return {"pair_recall": hits / max(expected, 1), "pairs": expected}


def _bcubed_f1(people: np.ndarray, clusters: np.ndarray) -> float:
    """backend.evaluation.metrics.bcubed_scores on a sparse table (10^5 people x 10^5 clusters)."""
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(people, clusters, sparse=True).tocoo()
    shared = table.data.astype(np.float64) ** 2
    precision = (shared / np.asarray(table.sum(axis=0)).ravel()[table.col]).sum() / len(people)
    recall = (shared / np.asarray(table.sum(axis=1)).ravel()[table.row]).sum() / len(people)
    return float(2 * precision * recall / (precision + recall))


def _bulk_fill(store: FaceStore, project: str, planted: np.ndarray, descriptors: np.ndarray) -> float:
    """Write the faces as assign would have, face i in task "i", identity planted[i] + 1, in one transaction."""
    started = time.perf_counter()
    landmarks = NO_LANDMARKS.astype(np.float32).tobytes()
    with store._locked(f"project:{project}") as db:
        ids = store._face_ids(db, len(planted))
        for start in range(0, len(planted), BULK_ROWS):
            stop = min(start + BULK_ROWS, len(planted))
            store._many(db, "INSERT INTO faces (project, id, task, region, x1, y1, x2, y2, landmarks, descriptor, "
                            "identity, model_version, confirmed) VALUES (?, ?, ?, 'face1', 10, 10, 60, 60, ?, ?, ?, "
                            "'bench', ?)",
                        [(project, int(ids[i]), str(i), landmarks, descriptors[i].tobytes(), int(planted[i]) + 1, False)
                         for i in range(start, stop)])
        store._many(db, "INSERT INTO identities (project, identity, name, faces, weight, descriptor_sum) "
                        "VALUES (?, ?, NULL, 0, 0, ?)", [(project, int(p) + 1, b"") for p in np.unique(planted)])
        store._run(db, "INSERT INTO projects (project, last_identity) VALUES (?, ?)", (project, int(planted.max()) + 1))
        store._rebuild_identities(db, project)
    return time.perf_counter() - started


def _face_ids(store: FaceStore, project: str) -> np.ndarray:
    rows = store._run(store._connection(), "SELECT task, id FROM faces WHERE project = ?", (project,)).fetchall()
    ids = np.zeros(len(rows), np.int64)
    for task, face_id in rows:
        if task.isdigit():
            ids[int(task)] = face_id
    return ids


if __name__ == "__main__":
    main()
