"""Re-clustering on Ray (backend/service/ray_recluster.py): on a local Ray cluster of 2 CPUs, a project's
faces in a SQLite and a PostgreSQL face store are re-clustered into the same identities as in this process,
through recluster() (as POST /recluster's job runs it) and through `autoannotator recluster --ray`.

The faces: synthetic descriptors of planted people (bench.common), stored through FaceStore.assign in
requests of 100 faces, each face a group of its own (so the store starts with people split across
identities, which the re-clustering mends). The graph runs on its inverted-file index, in shards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backend.storage import FaceStore, NewFace
from backend.storage import identities, vector_index
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect
from backend.service.recluster import recluster
from bench.prelabel import RAY_LOOPBACK
from tests.test_recluster import THRESHOLD, planted_faces

from .label_studio import REPO_ROOT
from .test_prelabel import RayCluster

FACES = 2000
REQUEST = 100  # faces stored together, as one /predict batch


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    saved = {name: os.environ.get(name) for name in RAY_LOOPBACK}
    os.environ.update(RAY_LOOPBACK)  # this process is a driver of the cluster too
    cluster = RayCluster.start(tmp_path_factory.mktemp("ray") / "ray.log")
    yield cluster
    cluster.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """The face store's DATABASE_URL ("" for the SQLite file in DATA_DIR, tmp_path)."""
    return "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def fill(store: FaceStore, project: str, descriptors: np.ndarray) -> None:
    for start in range(0, len(descriptors), REQUEST):
        store.assign(project, [NewFace(task=str(i), region="face1", box=np.array([10.0, 10, 60, 60]),
                                       landmarks=np.full((5, 2), np.nan), descriptor=descriptors[i], group=i)
                               for i in range(start, min(start + REQUEST, len(descriptors)))], "synthetic", THRESHOLD)


def test_recluster_on_ray_gives_the_identities_of_one_process(ray_cluster, database, tmp_path, monkeypatch):
    # The graph's inverted-file index (above EXACT_UP_TO faces) with lists for this size, searched and
    # clustered in 4 shards: the driver decides both, the workers search what they are sent.
    monkeypatch.setattr(vector_index, "EXACT_UP_TO", FACES // 4)
    monkeypatch.setattr(vector_index, "LISTS", 16)
    monkeypatch.setattr(identities, "SHARD_FACES", FACES // 4)
    store = FaceStore(PostgreSQLDialect(database) if database else SQLiteDialect(tmp_path / "faces.sqlite3"))
    people, descriptors = planted_faces(FACES)
    projects = {where: f"recluster-ray-{os.getpid()}-{where}" for where in ("here", "ray", "cli")}
    for project in projects.values():
        fill(store, project, descriptors)
    before = store.shown_ids(projects["here"])
    assert len(set(before.values())) > people.max() + 1  # people split by their requests, to be mended

    def run(project: str, ray_address: str) -> dict:
        return recluster(store, project, THRESHOLD, None, None, lambda fraction, stage: None, ray_address)

    here = run(projects["here"], "")
    on_ray = run(projects["ray"], ray_cluster.address)
    assert on_ray == here and here["moved"] > 0
    identities_here = store.shown_ids(projects["here"])
    assert store.shown_ids(projects["ray"]) == identities_here
    # Every planted person has one identity, and no identity has two people.
    shown = np.array([identities_here[(str(i), "face1")] for i in range(FACES)])
    assert len(set(zip(people.tolist(), shown.tolist()))) == len(set(people.tolist())) == len(set(shown.tolist()))

    # The command, a driver of its own (the exact graph index, one shard: the monkeypatches stay here).
    env = {**os.environ, "DATA_DIR": str(tmp_path), "DATABASE_URL": database, "LABEL_STUDIO_URL": "",
           "MODEL_PRESET": "fast", "LOG_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, "-m", "backend.cli", "recluster", "--project", projects["cli"],
                           "--ray", ray_cluster.address], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"re-clustering on the Ray cluster at {ray_cluster.address} (2 CPUs)" in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == here
    assert store.shown_ids(projects["cli"]) == identities_here
