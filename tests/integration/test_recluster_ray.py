"""Re-clustering on Ray (backend/service/ray_recluster.py): on a local Ray cluster of 2 CPUs, a project's
faces in a SQLite and a PostgreSQL face store are re-clustered into the same identities as in this process,
through recluster() (as POST /recluster's job runs it) and through `autoannotator recluster --ray`, each in a
process of its own: pytest never joins a Ray cluster.

The faces: synthetic descriptors of planted people (bench.common), stored through FaceStore.assign in
requests of 100 faces, each face a group of its own (so the store starts with people split across
identities, which the re-clustering mends). The graph runs on its inverted-file index, in shards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.storage import FaceStore, NewFace
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect
from bench.prelabel import RAY_LOOPBACK
from tests.test_recluster import THRESHOLD, planted_faces

from .label_studio import REPO_ROOT
from .test_prelabel import ray_cluster  # noqa: F401  (a fixture)

FACES = 2000
REQUEST = 100  # faces stored together, as one /predict batch


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """The face store's DATABASE_URL ("" for the SQLite file in DATA_DIR, tmp_path)."""
    return "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def fill(store: FaceStore, project: str, descriptors: np.ndarray) -> None:
    for start in range(0, len(descriptors), REQUEST):
        store.assign(project, [NewFace(task=str(i), region="face1", box=np.array([10.0, 10, 60, 60]),
                                       landmarks=np.full((5, 2), np.nan), descriptor=descriptors[i], group=i)
                               for i in range(start, min(start + REQUEST, len(descriptors)))], "synthetic", THRESHOLD)


def recluster_in_a_driver(database: str, data_dir: Path, project: str, ray_address: str, shards: bool) -> dict:
    """recluster() of `project`, as POST /recluster's job runs it, in a process of its own: a Ray driver that
    Ray may end (it ends a driver whose cluster fails) must not take pytest with it. `shards`: the graph on its
    inverted-file index (above EXACT_UP_TO faces) with lists for this size, searched and clustered in 4
    shards, as at a million faces: the driver decides both, the workers search what they are sent."""
    done = subprocess.run([sys.executable, "-c", DRIVER, database, str(data_dir), project, ray_address, str(shards)],
                          cwd=REPO_ROOT, env={**os.environ, **RAY_LOOPBACK}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"the driver exited with {done.returncode}:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


DRIVER = """
import json, sys
from pathlib import Path
from backend.service.recluster import recluster
from backend.storage import FaceStore, identities, vector_index
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect
from tests.integration.test_recluster_ray import FACES
from tests.test_recluster import THRESHOLD

database, data_dir, project, ray_address, shards = sys.argv[1:]
if shards == "True":
    vector_index.EXACT_UP_TO, vector_index.LISTS, identities.SHARD_FACES = FACES // 4, 16, FACES // 4
store = FaceStore(PostgreSQLDialect(database) if database else SQLiteDialect(Path(data_dir) / "faces.sqlite3"))
print(json.dumps(recluster(store, project, THRESHOLD, None, None, lambda fraction, stage: None, ray_address)))
"""


def test_recluster_on_ray_gives_the_identities_of_one_process(ray_cluster, database, tmp_path):
    store = FaceStore(PostgreSQLDialect(database) if database else SQLiteDialect(tmp_path / "faces.sqlite3"))
    people, descriptors = planted_faces(FACES)
    projects = {where: f"recluster-ray-{os.getpid()}-{where}" for where in ("here", "ray", "cli")}
    for project in projects.values():
        fill(store, project, descriptors)
    before = store.shown_ids(projects["here"])
    assert len(set(before.values())) > people.max() + 1  # people split by their requests, to be mended

    here = recluster_in_a_driver(database, tmp_path, projects["here"], "", shards=True)
    on_ray = recluster_in_a_driver(database, tmp_path, projects["ray"], ray_cluster.address, shards=True)
    assert on_ray == here and here["moved"] > 0
    identities_here = store.shown_ids(projects["here"])
    assert store.shown_ids(projects["ray"]) == identities_here
    # Every planted person has one identity, and no identity has two people.
    shown = np.array([identities_here[(str(i), "face1")] for i in range(FACES)])
    assert len(set(zip(people.tolist(), shown.tolist()))) == len(set(people.tolist())) == len(set(shown.tolist()))

    # The command, with the settings' defaults (the exact graph index, one shard).
    env = {**os.environ, **RAY_LOOPBACK, "DATA_DIR": str(tmp_path), "DATABASE_URL": database, "LABEL_STUDIO_URL": "",
           "MODEL_PRESET": "fast", "LOG_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, "-m", "backend.cli", "recluster", "--project", projects["cli"],
                           "--ray", ray_cluster.address], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"re-clustering on the Ray cluster at {ray_cluster.address} (2 CPUs)" in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == here
    assert store.shown_ids(projects["cli"]) == identities_here
