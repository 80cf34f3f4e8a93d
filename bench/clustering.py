"""Identity clustering (backend.vision.clustering.cluster_identities) time and peak memory by number of faces;
with --ray, re-clustering whole projects in this process and on Ray.

    python -m bench.clustering [--sizes 10000 20000 100000 1000000] [--memory-limit-gib 16] [--dim 1152]
                               [--threshold 0.3]
    python -m bench.clustering --ray [--sizes 1000000] [--database-url postgresql://...]

The descriptors are synthetic (bench/common.py): unit vectors of --dim (default: the default preset's
descriptors joined, 1152-d), ten faces per person on average, each face its person's direction plus noise
that puts faces of one person ~0.3 --threshold apart (default: the default descriptors' identity_distance,
0.3), while different people are ~1 apart; `--dim 128 --threshold 0.1` are dlib's ResNet alone.

Each size runs in a child process whose address space is capped (RLIMIT_AS), so that a size which does not
fit fails there with MemoryError instead of driving a shared machine into the OOM killer. Average-linkage
agglomerative clustering (scipy's linkage) holds all n(n-1)/2 pairwise distances as float64. A whole
project is re-clustered without that matrix (backend.storage.identities.cluster_project; measured at 10^6
faces by bench/identity_store.py).

--ray: a project of `size` such faces is written to a face store (SQLite in a temporary folder, and the
PostgreSQL database of --database-url) as bench/identity_store.py does, then re-clustered as
`autoannotator recluster` does it (service.recluster.recluster: read the faces, cluster them, write the
identities; no Label Studio), in a child process of its own: once in that process, then on a local Ray
cluster that the child starts first (Ray's start is not timed), of this machine's cores. The second run
starts from the first's identities, so it moves no face when it finds the same clusters. Peak memory is
the largest sum, sampled every SAMPLE_SECONDS, of the proportional set size (PSS: shared pages, as Ray's
object store, counted once) of the child and every process it started (Ray's processes and workers).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import FACES_PER_PERSON, REPO_ROOT, faces_of, machine, markdown_table, noise_for, person_directions, \
    write_results
from .identity_store import add_descriptor_arguments

CHILD_TIMEOUT = 240  # seconds per size
SAMPLE_SECONDS = 0.5  # --ray: how often the memory of a re-clustering and its processes is read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help="numbers of faces (default: 10^4, 2x10^4, 10^5, "
                        "10^6; with --ray: 10^6)")
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--ray", action="store_true", help="re-cluster whole projects in a process and on Ray")
    parser.add_argument("--database-url", help="--ray: also with this PostgreSQL face store (postgresql://...)")
    add_descriptor_arguments(parser)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one size, in the child process
    parser.add_argument("--recluster", nargs=4, help=argparse.SUPPRESS)  # --ray's child: where, mode, size, project
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.memory_limit_gib, args.dim, args.threshold)))
        return
    if args.recluster:
        _recluster_child(*args.recluster, args.dim, args.threshold)
        return
    if args.ray:
        _ray_main(args.sizes or [1_000_000], args.database_url, args.dim, args.threshold)
        return

    args.sizes = args.sizes or [10_000, 20_000, 100_000, 1_000_000]
    machine_line = machine()
    rows = []
    for size in args.sizes:
        command = [sys.executable, "-m", "bench.clustering", "--child", str(size),
                   "--memory-limit-gib", str(args.memory_limit_gib), *_descriptor_arguments(args.dim, args.threshold)]
        try:
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
            outcome = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {
                "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
        except subprocess.TimeoutExpired:
            outcome = {"error": f"not done after {CHILD_TIMEOUT} s (stopped)"}
        distances_gib = size * (size - 1) / 2 * 8 / 2**30
        rows.append([f"{size:,}", f"{distances_gib:,.1f}",
                     f"{outcome['seconds']:.1f}" if "seconds" in outcome else "–",
                     f"{outcome['peak_mib']:,.0f}" if "peak_mib" in outcome else "–",
                     f"{outcome['baseline_mib']:,.0f}" if "baseline_mib" in outcome else "–",
                     f"{outcome['bcubed_f1']:.4f}" if "bcubed_f1" in outcome else "–",
                     outcome.get("error", "ok")])
        print(rows[-1], flush=True)
    sections = [
        f"Synthetic descriptors ({args.dim}-d, {FACES_PER_PERSON} faces per person on average, identity_distance "
        f"{args.threshold:g}); each size in a child "
        f"process capped at {args.memory_limit_gib:g} GiB of address space. The machine is shared with other "
        "jobs: times move by ~20% between runs.",
        markdown_table(["faces", "pairwise distances (GiB, float64)", "seconds", "peak memory (MiB)",
                        "peak before clustering (MiB)", "BCubed F1 vs planted people", "outcome"], rows),
        "Average linkage needs every pairwise distance at once: scipy keeps the n(n-1)/2 float64 distances "
        "and a working copy of them, so the peak is about 8 n^2 bytes and time grows with n^2 too. About "
        "55,000 faces fill 24 GiB (and take a few minutes). `cluster_identities` has no fallback beyond that: "
        "it raises MemoryError (without a cap, the kernel's OOM killer ends the process). Nothing in it "
        "scales to 100k or 1M faces. The service clusters the faces of one /predict batch at a time, and "
        "`autoannotator annotate` all faces of its run; a run over a large collection at once would need a "
        "different method (a sparse nearest-neighbour graph as connectivity, or assigning faces in chunks "
        "to known identities).",
    ]
    write_results("clustering", "Identity clustering time and memory", machine_line, sections)


def _child(size: int, limit_gib: float, dim: int, threshold: float) -> dict:
    limit = int(limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from backend.evaluation.metrics import bcubed_scores
    from backend.vision.clustering import cluster_identities
    from sklearn.metrics.cluster import contingency_matrix

    rng = np.random.default_rng(0)
    people = rng.integers(0, max(1, size // FACES_PER_PERSON), size)
    descriptors = faces_of(rng, person_directions(rng, people.max() + 1, dim), people, noise_for(threshold))
    outcome = {"baseline_mib": _peak_mib()}  # Python, libraries and the descriptors
    started = time.perf_counter()
    try:
        labels = cluster_identities(descriptors, threshold)
    except MemoryError as error:
        return {**outcome, "error": f"MemoryError after {time.perf_counter() - started:.1f} s: {error}"[:160]}
    outcome["seconds"] = time.perf_counter() - started
    outcome["peak_mib"] = _peak_mib()
    outcome["bcubed_f1"] = bcubed_scores(contingency_matrix(people, labels))[2]
    return outcome


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _descriptor_arguments(dim: int, threshold: float) -> list[str]:
    """What a child process is told of the synthetic faces."""
    return ["--dim", str(dim), "--threshold", str(threshold)]


def _ray_main(sizes: list[int], database_url: str | None, dim: int, threshold: float) -> None:
    from .identity_store import _bulk_fill, _open, _planted

    machine_line = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-clustering-ray-") as directory:
        databases = {"SQLite": str(Path(directory) / "faces.sqlite3")}
        if database_url:
            databases["PostgreSQL"] = database_url
        for database, where in databases.items():
            for size in sizes:
                project = f"bench-ray-{size}-{time.time_ns()}"
                _, _, planted, descriptors = _planted(size, dim, threshold)
                fill = _bulk_fill(_open(where), project, planted, descriptors)
                del planted, descriptors
                for mode, run in (("in-process", "in this process"), ("ray", "Ray, local cluster")):
                    r = _measured_recluster(where, mode, size, project, dim, threshold)
                    rows.append([database, f"{size:,}", f"{fill:.0f}", run,
                                 f"{r['seconds']:.0f} ({r['read']:.0f} + {r['cluster']:.0f} + {r['write']:.0f})",
                                 f"{r['peak_mib'] / 1024:.2f}", f"{r['driver_mib'] / 1024:.2f}",
                                 f"{r['others_mib'] / 1024:.2f}", f"{r['clusters']:,}", f"{r['moved']:,}",
                                 f"{r['f1']:.4f}"])
                    print(rows[-1], flush=True)
    sections = [
        f"Synthetic faces ({dim}-d, identity_distance {threshold:g}, "
        f"{FACES_PER_PERSON} per planted person, stored with their planted person as identity), re-clustered as `autoannotator recluster` does (read, cluster, write; no Label Studio), in "
        "a child process: in it, then on a local Ray cluster of this machine's cores (started before the "
        "timing; the clustering's shards run as Ray tasks of one CPU). The second run starts from the first's "
        "identities: it moves no face when its clusters are the first's. The machine is shared with other "
        "jobs: times move by ~20% or more between runs.",
        markdown_table(["database", "faces", "bulk fill (s)", "run", "recluster (s): read + cluster + write",
                        "peak memory, all processes (GiB, PSS)", "of which the driver", "of which Ray's processes",
                        "clusters", "faces moved", "BCubed F1 vs planted"], rows),
    ]
    path = write_results("clustering_ray", "Re-clustering a whole project: in one process and on Ray",
                         machine_line, sections)
    command = " ".join(["python -m bench.clustering", *sys.argv[1:]])
    path.write_text(path.read_text().replace("`python -m bench.clustering_ray`", f"`{command}`"))


def _measured_recluster(where: str, mode: str, size: int, project: str, dim: int, threshold: float) -> dict:
    """_recluster_child's outcome, with the peak memory of it and its processes while it re-clustered."""
    command = [sys.executable, "-m", "bench.clustering", "--recluster", where, mode, str(size), project,
               *_descriptor_arguments(dim, threshold)]
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    lines = []

    def read() -> None:
        for line in child.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = {"peak_mib": 0.0, "driver_mib": 0.0, "others_mib": 0.0}
    while not lines and child.poll() is None:  # its first line comes when the re-clustering is done
        driver, others = _pss_mib([child.pid]), _pss_mib(_descendants(child.pid))
        if driver + others > peak["peak_mib"]:
            peak.update(peak_mib=driver + others, driver_mib=driver, others_mib=others)
        time.sleep(SAMPLE_SECONDS)
    reader.join()
    if child.wait() != 0 or len(lines) < 2:
        raise SystemExit(f"recluster {mode} of {size:,} faces failed (exit {child.returncode})")
    return {**json.loads(lines[0]), **json.loads(lines[1]), **peak}


def _recluster_child(where: str, mode: str, size: str, project: str, dim: int, threshold: float) -> None:
    from backend.service.ray_pipeline import join_cluster
    from backend.service.recluster import recluster

    from .identity_store import _bcubed_f1, _open, _planted
    from .prelabel import RAY_LOOPBACK

    store = _open(where)
    ray_address = "local" if mode == "ray" else ""
    if ray_address:
        os.environ.update(RAY_LOOPBACK)
        join_cluster(ray_address, RuntimeError)
    stages = {}
    started = time.perf_counter()
    result = recluster(store, project, threshold, None, None,
                       lambda fraction, stage: stages.setdefault(stage, time.perf_counter() - started), ray_address)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "read": stages["clustering"],
                      "cluster": stages["saving identities"] - stages["clustering"],
                      "write": seconds - stages["saving identities"], **result}), flush=True)
    shown = store.shown_ids(project)
    identity = np.unique([shown[(str(face), "face1")] for face in range(int(size))], return_inverse=True)[1]
    print(json.dumps({"f1": _bcubed_f1(_planted(int(size), dim, threshold, descriptors=False)[2], identity)}),
          flush=True)


def _descendants(pid: int) -> list[int]:
    """Every process that `pid` started, and that those started, ..."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # (the name may hold spaces and parentheses)
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _pss_mib(pids: list[int]) -> float:
    """The processes' proportional set size: their own memory, and their share of what they share."""
    kib = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # (it ended)
            continue
        kib += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return kib / 1024


if __name__ == "__main__":
    main()
