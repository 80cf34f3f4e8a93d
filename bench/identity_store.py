"""Face store (backend.storage) speed and memory: assigning one face, and re-clustering a whole project.

    python -m bench.identity_store [--sizes 10000 100000] [--database-url postgresql://...]

For each size, a fresh project is filled with that many synthetic faces through FaceStore.assign, in
requests of FILL_BATCH faces (one task per face): 128-d unit descriptors (dlib_resnet's size), ten faces
per planted person on average, each face its person's direction plus noise that puts faces of one person
~0.03 cosine distance apart (inside dlib_resnet's identity_distance of 0.075) and people ~1 apart. Then:

- assign one face: ASSIGNS single-face requests (new tasks, faces of planted people), as /predict stores
  a one-image request: median and 95th percentile, with the database's commit (SQLite: fsync, WAL);
- recluster: read every face, cluster_project, relabel (write the moved faces, rebuild every identity's sum):
  what `autoannotator recluster` does before it talks to Label Studio.

Peak memory is Python's own allocations (numpy's included) during each step, measured by tracemalloc in a
second run of the step so that its overhead stays out of the timings; the process's peak resident size
(getrusage) is given too. SQLite runs in a temporary directory; --database-url adds a PostgreSQL run.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from backend.config import Settings
from backend.storage import FaceStore, NewFace, cluster_project
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect
from backend.vision.manifest import load_manifest

from .common import DIM, FACES_PER_PERSON, faces_of, machine, markdown_table, person_directions, write_results

FILL_BATCH = 1000
ASSIGNS = 50
NO_LANDMARKS = np.full((5, 2), np.nan)
BOX = np.array([10.0, 10.0, 60.0, 60.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--database-url", help="also run on this PostgreSQL database (postgresql://...)")
    args = parser.parse_args()
    threshold = load_manifest(Settings().manifest_path)["dlib_resnet"].options["identity_distance"]
    machine_line = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-identity-store-") as directory:
        stores = {"SQLite": FaceStore(SQLiteDialect(Path(directory) / "faces.sqlite3"))}
        if args.database_url:
            stores["PostgreSQL"] = FaceStore(PostgreSQLDialect(args.database_url))
        for database, store in stores.items():
            for size in args.sizes:
                project = f"bench-{size}-{time.time_ns()}"
                rows.append([database, f"{size:,}", *_measure(store, project, size, threshold)])
                print(rows[-1], flush=True)
    sections = [
        f"Synthetic faces ({DIM}-d, {FACES_PER_PERSON} per planted person), identity_distance {threshold}; "
        f"filled through FaceStore.assign in requests of {FILL_BATCH} faces. One process, one thread. The "
        "machine is shared with other jobs: times move by ~20% between runs.",
        markdown_table(["database", "stored faces", "fill (s)", "assign one face: median / p95 (ms)",
                        "assign peak (MiB)", "recluster (s): read + cluster + write", "recluster peak (MiB)",
                        "identities: planted / after fill / after recluster", "faces moved by recluster",
                        "process peak RSS so far (MiB)"], rows),
    ]
    write_results("identity_store", "Face store: assign and recluster", machine_line, sections)


def _measure(store: FaceStore, project: str, size: int, threshold: float) -> list[str]:
    rng = np.random.default_rng(size)
    people = max(1, size // FACES_PER_PERSON)
    directions = person_directions(rng, people)

    def new_faces(persons: np.ndarray, first_task: int) -> list[NewFace]:
        return [NewFace(str(first_task + i), "face1", BOX, NO_LANDMARKS, d, int(p))
                for i, (p, d) in enumerate(zip(persons, faces_of(rng, directions, persons)))]

    started = time.perf_counter()
    for first in range(0, size, FILL_BATCH):
        persons = rng.integers(0, people, min(FILL_BATCH, size - first))
        store.assign(project, new_faces(persons, first), "bench", threshold)
    fill_seconds = time.perf_counter() - started
    after_fill = len(np.unique(store.faces(project).identities))

    seconds = []
    for n in range(ASSIGNS):
        face = new_faces(rng.integers(0, people, 1), size + n)
        started = time.perf_counter()
        store.assign(project, face, "bench", threshold)
        seconds.append(time.perf_counter() - started)
    assign_peak = _peak_mib(lambda: [store.assign(project, new_faces(rng.integers(0, people, 1), size + ASSIGNS + n),
                                                  "bench", threshold) for n in range(5)])

    def recluster():
        before = store.faces(project)
        return store.relabel(project, before, cluster_project(before.descriptors, threshold))

    started = time.perf_counter()
    result = recluster()
    recluster_seconds = time.perf_counter() - started
    recluster_peak = _peak_mib(recluster)
    after_recluster = len(np.unique(store.faces(project).identities))
    return [f"{fill_seconds:.1f}", f"{np.median(seconds) * 1e3:.1f} / {np.percentile(seconds, 95) * 1e3:.1f}",
            f"{assign_peak:.1f}", f"{recluster_seconds:.1f}", f"{recluster_peak:.0f}",
            f"{people:,} / {after_fill:,} / {after_recluster:,}", f"{result['moved']:,}",
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"]


def _peak_mib(step) -> float:
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


if __name__ == "__main__":
    main()
