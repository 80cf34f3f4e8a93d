"""Whole-project runs (backend/service/prelabel.py): throughput in this process and on Ray with 1 and 2 actors,
and the peak memory of `autoannotator annotate` over 1k and 10k images.

    python -m bench.prelabel [--throughput-images 96] [--memory-images 1000 10000] [--database-url postgresql://...]

- throughput: `annotate` (the same pipeline as `prelabel`, without Label Studio's side) over the test photos
  at their own size (0.26-1.03 Mpx), repeated, with the shipped models: in this process (ONNX Runtime's
  default threads, then one thread), then on a local Ray instance (RAY_ADDRESS=local, loopback) with 1 and
  then 2 actors of 1 CPU, sharing a PostgreSQL face store (started from tests/integration/start_postgres.sh
  unless --database-url is given). Images per second over each whole run (wall time, so with the load of the
  machine); CPU seconds per image of the predicting processes (the actors' sampled from /proc); the projected
  cost of 10^6 images is the CPU time per image of the one-thread run (what an actor of one CPU spends once
  started), which a busy machine does not inflate as it does wall time.
- memory: `autoannotator annotate` as a user runs it, a child process per size, over crops of about 128 px
  of the six one-person test photos (one face each: every image goes through detection, description and
  identity assignment), fast preset without flip; peak resident memory of that process (ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import PHOTOS, REPO_ROOT, machine, markdown_table, photos, write_results

START_POSTGRES = REPO_ROOT / "tests" / "integration" / "start_postgres.sh"
ONE_PERSON_PHOTOS = {"obama_1.jpg": "barack_obama", "obama_2.jpg": "barack_obama", "obama_3.jpg": "barack_obama",
                     "biden.jpg": "joe_biden", "grace_hopper.jpg": "grace_hopper",
                     "astronaut_eileen_collins.jpg": "eileen_collins"}
# A local Ray instance on loopback only (Ray otherwise binds the machine's own address), without tokens.
RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# The peak resident memory of the command in argv, in KiB (Linux's ru_maxrss), printed by a process of its own.
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def face_crops(folder: Path, count: int, side: int, seed: int = 11) -> dict[str, str]:
    """`count` JPEGs of about `side` px, each a random crop around the face of one of the one-person test
    photos (the same person in many images); {file name: person}."""
    import cv2

    truth = json.loads((PHOTOS / "faces.json").read_text())
    originals = {name: cv2.imread(str(PHOTOS / name)) for name in ONE_PERSON_PHOTOS}
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    people = {}
    for index in range(count):
        photo = list(ONE_PERSON_PHOTOS)[index % len(ONE_PERSON_PHOTOS)]
        image = originals[photo]
        x1, y1, x2, y2 = truth[photo]["faces"][0]["box"]
        size = x2 - x1
        margin = rng.uniform(0.6, 1.4) * size
        cx, cy = (x1 + x2) / 2 + rng.uniform(-0.15, 0.15) * size, (y1 + y2) / 2 + rng.uniform(-0.1, 0.1) * size
        crop = image[int(max(0, cy - size / 2 - margin)):int(min(image.shape[0], cy + size / 2 + 1.5 * margin)),
                     int(max(0, cx - size / 2 - margin)):int(min(image.shape[1], cx + size / 2 + margin))]
        scale = side / max(crop.shape[:2])
        small = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
        name = f"{Path(photo).stem}-{index:05d}.jpg"
        cv2.imwrite(str(folder / name), small, [cv2.IMWRITE_JPEG_QUALITY, 90])
        people[name] = ONE_PERSON_PHOTOS[photo]
    return people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throughput-images", type=int, default=96)
    parser.add_argument("--memory-images", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--database-url", help="the PostgreSQL face store of the Ray runs (default: start one)")
    args = parser.parse_args()
    machine_line = machine()
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-prelabel-") as scratch:
        scratch = Path(scratch)
        if args.throughput_images:
            sections.append(throughput(scratch, args.throughput_images, args.database_url))
        if args.memory_images:
            sections.append(memory(scratch, args.memory_images))
    write_results("prelabel", "Whole-project runs: throughput and memory", machine_line, sections)


def throughput(scratch: Path, count: int, database_url: str | None) -> str:
    folder = scratch / "photos"
    folder.mkdir()
    sources = photos()
    for index in range(count):
        shutil.copy(sources[index % len(sources)], folder / f"{index:04d}-{sources[index % len(sources)].name}")
    server = None
    if not database_url:
        server = Path(tempfile.mkdtemp(prefix="bench-pg-", dir="/tmp"))  # the server's user must reach it
        from tests.integration.label_studio import free_port

        database_url = subprocess.run(["bash", str(START_POSTGRES), str(server), str(free_port())], check=True,
                                      capture_output=True, text=True).stdout.strip()
    os.environ.update(RAY_LOOPBACK)
    rows = []
    try:
        for label, ray_address, actors, threads in (("in this process", "", 0, "0"),
                                                    ("in this process, ORT_THREADS=1", "", 0, "1"),
                                                    ("Ray, 1 actor of 1 CPU", "local", 1, "0"),
                                                    ("Ray, 2 actors of 1 CPU", "local", 2, "0")):
            os.environ["ORT_THREADS"] = threads  # read when the models load
            result = _timed_annotate(scratch, folder, label, ray_address, actors, database_url)
            rows.append([label, count, f"{result['seconds']:.0f}", f"{count / result['seconds']:.2f}",
                         f"{result['cpu_per_image']:.2f}"])
            if threads == "1":
                core_hours = result["cpu_per_image"] * 1e6 / 3600
    finally:
        os.environ.pop("ORT_THREADS")
        if server:
            subprocess.run(["bash", str(START_POSTGRES), "--stop", str(server)], capture_output=True)
            shutil.rmtree(server, ignore_errors=True)
    return "\n\n".join([
        f"## Throughput: {count} test photos (0.26-1.03 Mpx), shipped models (`MODEL_PRESET=default`, flip)",
        "images/s: images over the wall time of the whole run, which includes starting Ray and loading the "
        "models in every actor, and moves with whatever else runs on the machine. CPU s per image: the CPU "
        "time of the processes that predict, over the run: this one (its models loaded before), or the actors "
        "(read from /proc; their start, imports and models included), what the machine spends whatever its load.",
        markdown_table(["run", "images", "wall time, s", "images/s", "CPU s per image"], rows),
        f"Projected cost of 10^6 images, at the CPU time per image of one thread (what an actor of one CPU "
        f"spends once started): **{core_hours:,.0f} "
        f"core-hours** of worker CPU ({core_hours / 16:,.0f} hours on a 16-core machine, "
        f"{core_hours / 128:,.1f} hours on a cluster of 128 cores).",
    ])


def _timed_annotate(scratch: Path, folder: Path, label: str, ray_address: str, actors: int, database_url: str) -> dict:
    from backend.config import Settings
    from backend.service.context import AppContext
    from backend.service.prelabel import annotate

    settings = Settings.from_env({**os.environ, "DATA_DIR": str(scratch / "data"), "DATABASE_URL": database_url,
                                  "RAY_ACTORS": str(actors), "RAY_ACTOR_CPUS": "1", "LOG_LEVEL": "WARNING"})
    context = AppContext.build(settings)
    actors_cpu = ActorCPU()
    started, cpu_started = time.monotonic(), time.process_time()
    with actors_cpu:
        result = annotate(context, [folder], (REPO_ROOT / "label_config.xml").read_text(),
                          f"bench:{label}:{time.time()}", scratch / "tasks.json", ray_address=ray_address)
    cpu = actors_cpu.seconds() if ray_address else time.process_time() - cpu_started
    print(f"{label}: {result}", file=sys.stderr)
    return {"seconds": time.monotonic() - started, "cpu_per_image": cpu / result["images"]}


class ActorCPU:
    """CPU seconds that this process's Ray actors (prelabel's ray_pipeline._Actor) spend while it is entered,
    sampled from /proc while they live (they end with the run; an earlier run's may linger, idle)."""

    def __init__(self):
        self.before: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.done = threading.Event()

    def __enter__(self):
        self.before = self._read()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()

    def seconds(self) -> float:
        return sum(seconds - self.before.get(pid, 0.0) for pid, seconds in self.last.items())

    def _sample(self):
        while not self.done.wait(0.25):
            self.last.update(self._read())

    @staticmethod
    def _read() -> dict[int, float]:
        found = {}
        for pid in actor_processes(os.getpid()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime and stime: fields 14 and 15 of stat, 12 and 13 after the command name
            found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return found


def actor_processes(root: int) -> list[int]:
    """The processes under `root` (a Ray driver or `ray start --block`) that are prelabel's actors."""
    found = []
    for pid in _descendants(root):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and "_Actor" in title:  # Ray titles an actor's process after its class
            found.append(pid)
    return found


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(status.read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(status.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory(scratch: Path, sizes: list[int]) -> str:
    rows = []
    env = {**os.environ, "MODEL_PRESET": "fast", "FLIP_TTA": "0", "DATA_DIR": str(scratch / "data-memory"),
           "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    env.pop("RAY_ADDRESS", None)
    for size in sizes:
        folder = scratch / f"crops-{size}"
        face_crops(folder, size, side=128)
        out = scratch / f"tasks-{size}.json"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "backend.cli", "annotate",
                               str(folder), "--out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"annotate over {size} images failed:\n{done.stderr[-3000:]}")
        seconds = time.monotonic() - started
        written = len(json.loads(out.read_text()))
        peak_kib = int(done.stdout.strip().splitlines()[-1])
        rows.append([size, written, f"{seconds:.0f}", f"{peak_kib / 2**20:.2f}"])
        shutil.rmtree(folder)
    return "\n\n".join([
        "## Memory of `autoannotator annotate`: crops of about 128 px, one face each, `MODEL_PRESET=fast FLIP_TTA=0`",
        markdown_table(["images", "tasks written", "wall time, s", "peak resident memory, GiB"], rows),
    ])


if __name__ == "__main__":
    main()
