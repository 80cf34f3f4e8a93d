"""Identity clustering (backend.vision.clustering.cluster_identities) time and peak memory by number of faces.

    python -m bench.clustering [--sizes 10000 20000 100000 1000000] [--memory-limit-gib 16]

The descriptors are synthetic: 128-d unit vectors (dlib_resnet's size), ten faces per person on average,
each face its person's direction plus noise that puts faces of one person ~0.03 cosine distance apart
(well inside dlib_resnet's identity_distance) while different people are ~1 apart.

Each size runs in a child process whose address space is capped (RLIMIT_AS), so that a size which does not
fit fails there with MemoryError instead of driving a shared machine into the OOM killer. Average-linkage
agglomerative clustering (scipy's linkage) holds all n(n-1)/2 pairwise distances as float64. A whole
project is re-clustered without that matrix (backend.storage.identities.cluster_project; measured at 10^6
faces by bench/identity_store.py).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from backend.config import Settings
from backend.vision.manifest import load_manifest

from .common import DIM, FACES_PER_PERSON, REPO_ROOT, faces_of, machine, markdown_table, person_directions, write_results

CHILD_TIMEOUT = 240  # seconds per size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 100_000, 1_000_000])
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one size, in the child process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.memory_limit_gib)))
        return

    machine_line = machine()
    rows = []
    for size in args.sizes:
        command = [sys.executable, "-m", "bench.clustering", "--child", str(size),
                   "--memory-limit-gib", str(args.memory_limit_gib)]
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
        f"Synthetic descriptors ({DIM}-d, {FACES_PER_PERSON} faces per person on average); each size in a child "
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


def _child(size: int, limit_gib: float) -> dict:
    limit = int(limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from backend.evaluation.metrics import bcubed_scores
    from backend.vision.clustering import cluster_identities
    from sklearn.metrics.cluster import contingency_matrix

    settings = Settings()
    threshold = load_manifest(settings.manifest_path)["dlib_resnet"].options["identity_distance"]
    rng = np.random.default_rng(0)
    people = rng.integers(0, max(1, size // FACES_PER_PERSON), size)
    descriptors = faces_of(rng, person_directions(rng, people.max() + 1), people)
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


if __name__ == "__main__":
    main()
