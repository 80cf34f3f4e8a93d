"""Whole-project runs (backend/service/prelabel.py): `autoannotator prelabel` on a real Label Studio project
of 500 tasks, through a local Ray cluster with 2 actors and a PostgreSQL face store, its driver killed
(kill -9) twice and an actor once, and started again; POST /prelabel on the backend itself; `annotate`
killed and started again; and the one-run-per-project hold, which a killed run lets go of.

The images: small crops (about 200 px) of the six one-person photos of tests/data/photos (four people;
three photos of one of them: bench.prelabel.face_crops), so that every person appears in many tasks. The
fast preset (BlazeFace, dlib's descriptor) finds the one face of each; its identities are the store's.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from backend.storage import FaceStore
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect, dialect_for
from backend.storage.prelabel_state import PrelabelState, RunInProgress
from bench.prelabel import RAY_LOOPBACK, actor_processes, face_crops

from .label_studio import REPO_ROOT, stop_process, tail

LABEL_CONFIG = REPO_ROOT / "label_config.xml"
TASKS = 500
RUN_TIMEOUT = 300  # seconds for one prelabel run
# The run: fast models without flip (0.05-0.1 s an image here), small batches and pushes so that the kills
# land between many of them.
RUN_SETTINGS = {"MODEL_PRESET": "fast", "FLIP_TTA": "0", "PRELABEL_BATCH": "8", "PRELABEL_PUSH": "20",
                "RAY_ACTORS": "2", "RAY_ACTOR_CPUS": "1", "LOG_LEVEL": "WARNING"}


# Ports a test's Ray cluster takes: its own, six for its services, and RAY_WORKER_PORTS that its workers and
# drivers bind one by one as they start.
RAY_SERVICE_PORTS = 7
RAY_WORKER_PORTS = 100


def ray_ports() -> list[int]:
    """A run of consecutive ports free now, below the kernel's ephemeral range (where the ports of outgoing
    connections come from, consecutively for one destination: the face store's PostgreSQL connections, Label
    Studio's, Ray's own would otherwise take ports of the workers' range before a worker binds one), at a random
    place, so that clusters of tests running side by side do not meet."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    count = RAY_SERVICE_PORTS + RAY_WORKER_PORTS
    for _ in range(50):
        first = random.randrange(20000, lowest_ephemeral - count)
        with contextlib.ExitStack() as bound:
            try:
                for port in range(first, first + count):
                    sock = bound.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return list(range(first, first + count))
    raise RuntimeError(f"no {count} consecutive free ports between 20000 and {lowest_ephemeral}")


class RayCluster:
    """`ray start --head --block` on loopback, 2 CPUs, 200 MiB of object store: the cluster lives as long as
    that process."""

    def __init__(self, log_path: Path):
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        free = ray_ports()
        self.port = free[0]
        self.address = f"127.0.0.1:{self.port}"
        ports = dict(zip(("--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
                          "--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port",
                          "--min-worker-port"), free[1:]))
        ports["--max-worker-port"] = free[-1]
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                   "--node-ip-address=127.0.0.1", f"--port={self.port}", "--num-cpus=2",
                   f"--object-store-memory={200 * 2**20}", "--include-dashboard=false", "--disable-usage-stats",
                   f"--temp-dir={self.temp_dir}", *[f"{flag}={port}" for flag, port in ports.items()]]
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **RAY_LOOPBACK})
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Ray cluster did not start:\n{tail(log_path)}")
            time.sleep(0.5)

    @classmethod
    def start(cls, log_path: Path, attempts: int = 2) -> "RayCluster":
        """A started cluster. Its ports are picked free just before `ray start` binds them, and another
        process may take one meanwhile: then once more, on other ports."""
        for attempt in range(attempts):
            try:
                return cls(log_path)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise

    def actor_pids(self) -> list[int]:
        """The processes of this cluster's prediction actors (prelabel's ray_pipeline._Actor)."""
        return actor_processes(self.process.pid)

    def stop(self):
        if "ray" in sys.modules:  # a driver in this process leaves first: Ray ends a driver whose cluster is gone
            sys.modules["ray"].shutdown()
        stop_process(self.process, timeout=60)  # `ray start --block` stops its cluster on SIGTERM
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    cluster = RayCluster.start(tmp_path_factory.mktemp("ray") / "ray.log")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def project(label_studio, tmp_path_factory) -> tuple[int, dict]:
    """The project of TASKS crops; returns its id and {task id: person}."""
    folder = tmp_path_factory.mktemp("crops")
    people = face_crops(folder, TASKS, side=200)
    project_id = label_studio.create_project("Prelabel 500", LABEL_CONFIG.read_text())
    names = sorted(people)
    for start in range(0, len(names), 100):
        label_studio.upload_files(project_id, [folder / name for name in names[start:start + 100]])
    tasks = label_studio.api("GET", f"/api/tasks?project={project_id}&page_size={TASKS + 10}").json()["tasks"]
    assert len(tasks) == TASKS
    person_of = {t["id"]: people[re.sub(r"^[0-9a-f]{8}-", "", Path(t["data"]["image"]).name)] for t in tasks}
    return project_id, person_of


def predictions(label_studio, project_id: int) -> list[dict]:
    return label_studio.api("GET", f"/api/predictions/?project={project_id}").json()


def start_prelabel(label_studio, project_id: int, env: dict, log_path: Path, ray_address: str) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "prelabel", "--project", str(project_id), "--ray", ray_address],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for_predictions(label_studio, project_id: int, count: int, process: subprocess.Popen, log_path: Path):
    """Until Label Studio holds at least `count` predictions of the project (the run still going)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while len(predictions(label_studio, project_id)) < count:
        assert process.poll() is None, f"prelabel ended early ({process.returncode}):\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"fewer than {count} predictions after {RUN_TIMEOUT} s:\n{tail(log_path)}"
        time.sleep(0.5)


def test_prelabel_on_ray_killed_twice_gives_each_task_one_prediction(label_studio, project, ray_cluster,
                                                                     postgres_url, tmp_path):
    project_id, person_of = project
    env = {**os.environ, **RUN_SETTINGS, **RAY_LOOPBACK, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": label_studio.personal_access_token, "DATABASE_URL": postgres_url,
           "DATA_DIR": str(tmp_path / "data")}
    log_path = tmp_path / "prelabel.log"

    # 1. The driver dies (kill -9) after a fifth of the project has been pushed.
    run = start_prelabel(label_studio, project_id, env, log_path, ray_cluster.address)
    wait_for_predictions(label_studio, project_id, TASKS // 5, run, log_path)
    run.send_signal(signal.SIGKILL)
    run.wait()

    # 2. Started again: one of its two actors dies (kill -9) half-way; Ray starts another, which takes over
    #    its batch. Then the driver dies again.
    run = start_prelabel(label_studio, project_id, env, log_path, ray_cluster.address)
    wait_for_predictions(label_studio, project_id, TASKS // 2, run, log_path)
    actors = ray_cluster.actor_pids()
    assert len(actors) == 2, actors
    os.kill(actors[0], signal.SIGKILL)
    wait_for_predictions(label_studio, project_id, TASKS * 7 // 10, run, log_path)
    run.send_signal(signal.SIGKILL)
    run.wait()
    interrupted = len(predictions(label_studio, project_id))
    assert interrupted < TASKS

    # 3. Started again, it finishes.
    run = start_prelabel(label_studio, project_id, env, log_path, ray_cluster.address)
    assert run.wait(RUN_TIMEOUT) == 0, tail(log_path)
    summary = json.loads(log_path.read_text().strip().splitlines()[-1])
    assert summary["tasks"] == TASKS and summary["failed"] == 0, summary
    assert summary["skipped"] == interrupted and summary["done"] == TASKS - interrupted, summary
    # It ended with a re-clustering of the project (on the cluster), which the identities below come from.
    assert set(summary["reclustered"]) >= {"moved", "predictions_updated"}, summary
    assert FaceStore(PostgreSQLDialect(postgres_url)).faces_since_recluster(str(project_id)) == (TASKS, TASKS)

    # One prediction per task, of the run's models.
    found = predictions(label_studio, project_id)
    per_task = Counter(p["task"] for p in found)
    assert set(per_task) == set(person_of) and set(per_task.values()) == {1}, per_task.most_common(3)
    [version] = {p["model_version"] for p in found}
    assert version.startswith("autoannotator-fast:")

    # The same person has the same identity in every task, and no two people share one.
    identities: dict[str, set] = {}
    faces_shown = {}
    for prediction in found:
        texts = [r["value"]["text"][0] for r in prediction["result"] if r["type"] == "textarea"]
        boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"
                 and r["value"]["rectanglelabels"] == ["Face"]]
        assert len(texts) == len(boxes) == 1, (prediction["task"], prediction["result"])
        identities.setdefault(person_of[prediction["task"]], set()).update(texts)
        faces_shown[str(prediction["task"])] = {r["id"] for r in boxes}
    assert all(len(ids) == 1 for ids in identities.values()), identities
    assert len(set.union(*identities.values())) == len(identities), identities

    # No face stored twice: the store holds exactly the faces Label Studio shows, once each.
    stored = FaceStore(PostgreSQLDialect(postgres_url)).faces(str(project_id))
    assert Counter(zip(stored.tasks, stored.regions)) == Counter(
        (task, region) for task, regions in faces_shown.items() for region in regions)

    # Run again, it finds nothing left to do.
    again = subprocess.run([sys.executable, "-m", "backend.cli", "prelabel", "--project", str(project_id)],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == TASKS
    assert len(predictions(label_studio, project_id)) == TASKS


def test_post_prelabel_is_a_job_that_fills_the_project(label_studio, backend, photos):
    config = LABEL_CONFIG.read_text()
    project_id = label_studio.create_project("Prelabel job", config)
    label_studio.upload_files(project_id, [photos / "obama_1.jpg", photos / "biden.jpg"])
    label_studio.import_tasks(project_id, [{"image": "/data/upload/0/missing.jpg"}])  # a task whose image is gone
    started = requests.post(f"{backend.url}/prelabel", json={"project": project_id}, auth=backend.auth, timeout=30)
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["Location"] == f"/prelabel/{job['job']}"
    deadline = time.monotonic() + RUN_TIMEOUT
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
        job = requests.get(f"{backend.url}/prelabel/{job['job']}", auth=backend.auth, timeout=30).json()
    assert job["status"] == "done" and job["progress"] == 1.0, job
    result = job["result"]
    assert (result["tasks"], result["done"], result["skipped"], result["failed"]) == (3, 2, 0, 1), result
    assert result["reclustered"] is None  # two faces: too few to re-cluster (AUTO_RECLUSTER_MIN_NEW_FACES)
    [(broken, reason)] = result["failures"].items()
    assert "missing.jpg" in reason
    tasks = {t["id"] for t in label_studio.tasks(project_id)}
    per_task = Counter(p["task"] for p in predictions(label_studio, project_id))
    assert set(per_task) == tasks - {int(broken)} and set(per_task.values()) == {1}, per_task

    refused = requests.post(f"{backend.url}/prelabel", json={"project": "x"}, auth=backend.auth, timeout=30)
    assert refused.status_code == 400 and "project id" in refused.json()["detail"]


def test_annotate_killed_resumes_where_it_stopped(tmp_path):
    folder = tmp_path / "crops"
    people = face_crops(folder, 48, side=200, seed=5)
    env = {**os.environ, "MODEL_PRESET": "fast", "FLIP_TTA": "0", "PRELABEL_BATCH": "4", "DATA_DIR": str(tmp_path),
           "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    out = tmp_path / "tasks.json"
    command = [sys.executable, "-m", "backend.cli", "annotate", str(folder), "--out", str(out)]
    database = tmp_path / "faces.sqlite3"

    run = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_TIMEOUT
    while predicted_rows(database) < 12:
        assert run.poll() is None and time.monotonic() < deadline, "annotate ended or stalled before the kill"
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists()  # written only once complete
    before = predicted_rows(database)

    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"wrote 48 tasks to {out} ({before} predicted by an earlier run)" in again.stdout
    tasks = json.loads(out.read_text())
    identities: dict[str, set] = {}
    for task in tasks:
        [prediction] = task["predictions"]
        [text] = [r["value"]["text"][0] for r in prediction["result"] if r["type"] == "textarea"]
        identities.setdefault(people[Path(task["data"]["image"]).name], set()).add(text)
    assert sorted(Path(t["data"]["image"]).name for t in tasks) == sorted(people)
    assert all(len(ids) == 1 for ids in identities.values()) and len(set.union(*identities.values())) == 4, identities
    store = FaceStore(SQLiteDialect(database))
    stored = store.faces(f"annotate:{out}")
    assert sorted(Path(task).name for task in stored.tasks) == sorted(people)  # one face per image, none twice
    # It ended with a re-clustering of the 48 faces, and the file shows each face's identity as the store does.
    assert store.faces_since_recluster(f"annotate:{out}") == (48, 48)
    shown = store.shown_ids(f"annotate:{out}")
    assert {(task["data"]["image"], r["id"]): r["value"]["text"][0] for task in tasks
            for r in task["predictions"][0]["result"] if r["type"] == "textarea"} == shown


def predicted_rows(database: Path) -> int:
    if not database.exists():
        return 0
    with sqlite3.connect(database) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM prelabel_tasks WHERE status = 'predicted'").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not there yet
            return 0


HOLD = """
import sys, time
from backend.storage import FaceStore
from backend.storage.dialects import dialect_for
from backend.storage.prelabel_state import PrelabelState
with PrelabelState(FaceStore(dialect_for(sys.argv[1], sys.argv[2]))).exclusive("7"):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_one_run_per_project_and_a_killed_runs_hold_ends_with_it(dialect, tmp_path, request):
    url = request.getfixturevalue("postgres_url") if dialect == "postgresql" else ""
    state = PrelabelState(FaceStore(dialect_for(url, tmp_path)))
    with state.exclusive("7"):
        with pytest.raises(RunInProgress, match="project 7 is being pre-annotated"):
            with state.exclusive("7"):
                pass
        with state.exclusive("8"):  # another project's run is free to go
            pass
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url, str(tmp_path)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInProgress):
            with state.exclusive("7"):
                pass
    finally:
        holder.kill()  # kill -9: no cleanup of its own
        holder.wait()
    deadline = time.monotonic() + 10  # PostgreSQL ends the dead session as soon as it sees the socket closed
    while True:
        try:
            with state.exclusive("7"):
                break
        except RunInProgress:
            assert time.monotonic() < deadline, "the killed run's hold outlived it"
            time.sleep(0.2)
