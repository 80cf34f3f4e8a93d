"""The face store's vector indexes on disk and in a bounded cache, on SQLite and on PostgreSQL.

Each test has a database of its own (an SQLite file, or a PostgreSQL database created on the session's
server), so that it can recreate or restore one. Descriptors are synthetic (tests/test_identity_store.py's
synthetic_faces: 128-d, faces of one person ~0.03 apart, people ~1 apart), threshold 0.1: what is tested
is where the index comes from and that its answers are the database's, not the models.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import sqlite3

import numpy as np
import pytest

from backend.storage import FaceStore, NewFace
from backend.storage import faces as faces_module
from backend.storage import vector_index
from backend.storage.dialects import PostgreSQLDialect, SQLiteDialect
from tests.test_identity_store import DIALECTS, synthetic_faces

THRESHOLD = 0.1
NEVER = 10**9  # a SAVE_MIN under which no index is written
_databases = itertools.count(os.getpid() * 1000)


@pytest.fixture(params=DIALECTS)
def dialect(request):
    return request.param


@pytest.fixture
def databases(dialect, tmp_path, request):
    """new(): the location of a new, empty database; copy(location): a new database holding a copy of
    that one (a backup restored), taken while no store is connected to it."""
    if dialect == "sqlite":
        def new():
            return tmp_path / f"faces-{next(_databases)}.sqlite3"

        def copy(location):
            target = new()
            with sqlite3.connect(location) as source, sqlite3.connect(target) as backup:
                source.backup(backup)
            return target
        return new, copy

    import psycopg

    server = request.getfixturevalue("postgres_url")

    def create(template=None):
        name = f"persist_{next(_databases)}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template.rsplit('/', 1)[1]}" if template else ""))
        return server.rsplit("/", 1)[0] + "/" + name

    return create, create


def open_store(dialect, location, index_dir, **options) -> FaceStore:
    """A store, as one process (worker, replica) holds it: its own indexes, read from index_dir."""
    return FaceStore(SQLiteDialect(location) if dialect == "sqlite" else PostgreSQLDialect(location), index_dir,
                     **options)


def close(store: FaceStore) -> None:
    """Its connection (this thread's; the store opens another when next used)."""
    store._connection().close()


def store_faces(store, project, descriptors, first_task=0) -> list[str]:
    """Each face in a request of its own, as /predict stores one image after another."""
    return [store.assign(project, [NewFace(f"t{first_task + i}", "face1", np.array([0, 0, 50, 50.0]),
                                           np.full((5, 2), np.nan), descriptor, 0)], "v1", THRESHOLD)[0]
            for i, descriptor in enumerate(descriptors)]


def index_of(store, project) -> vector_index.FaceIndex:
    [index] = [index for (indexed, _), index in store._indexes.items() if indexed == project]
    return index


def save_now(store, project, monkeypatch, probe) -> None:
    """Make the project's index due to be written at its next catch-up, catch it up (a look-up of `probe`)
    and wait until it is written; afterwards no index is written until the test says so."""
    monkeypatch.setattr(vector_index, "SAVE_MIN", 1)
    store.nearest_identity(project, probe, 1.0, THRESHOLD)
    store.flush_indexes()
    monkeypatch.setattr(vector_index, "SAVE_MIN", NEVER)


def answers(store, project, queries) -> list:
    return [getattr(store.nearest_identity(project, q, 1.0, THRESHOLD), "identity", None) for q in queries]


@pytest.fixture
def faces():
    """130 faces of 13 people, and a new face of each person."""
    descriptors, people = synthetic_faces(np.random.default_rng(7), people=13, faces=143)
    firsts = [int(np.flatnonzero(people == p)[0]) for p in range(13)]
    queries = descriptors[firsts]
    rest = np.delete(np.arange(143), firsts)
    return descriptors[rest][:130], queries


def test_a_new_process_reads_the_index_file_then_catches_up(dialect, databases, tmp_path, monkeypatch, faces):
    descriptors, queries = faces
    monkeypatch.setattr(vector_index, "SAVE_MIN", NEVER)
    location, project, indexes = databases[0](), "7", tmp_path / "indexes"
    first = open_store(dialect, location, indexes)
    store_faces(first, project, descriptors[:100])
    save_now(first, project, monkeypatch, queries[0])
    [path] = indexes.glob("*.faiss")
    written = path.stat().st_mtime_ns
    store_faces(first, project, descriptors[100:], first_task=100)  # 30 more, not in the file

    # More faces stored since its index was read than a request compares directly: it searches the caught
    # up index instead (the third store below compares them directly).
    monkeypatch.setattr(faces_module, "RECENT_UP_TO", 10)
    second = open_store(dialect, location, indexes)
    assert store_faces(second, project, queries[:1], first_task=200) == store_faces(first, project, queries[:1],
                                                                                     first_task=201)
    assert answers(second, project, queries) == answers(first, project, queries)
    index = index_of(second, project)
    # 100 faces from the file, the 30 stored since from the database (and the one stored just above).
    assert len(index) == 132 and index.unsaved == 32
    assert path.stat().st_mtime_ns == written
    # Written again once due: a third process reads all 130 from it.
    save_now(second, project, monkeypatch, queries[0])
    third = open_store(dialect, location, indexes)
    assert answers(third, project, queries) == answers(first, project, queries)
    assert len(index_of(third, project)) == 132 and index_of(third, project).unsaved == 0


@pytest.mark.parametrize("damage", ["a flipped byte", "cut short", "another project's", "not an index"])
def test_a_damaged_index_file_is_rebuilt_from_the_database(dialect, databases, tmp_path, monkeypatch, faces, damage,
                                                          caplog):
    descriptors, queries = faces
    monkeypatch.setattr(vector_index, "SAVE_MIN", NEVER)
    location, indexes = databases[0](), tmp_path / "indexes"
    first = open_store(dialect, location, indexes)
    store_faces(first, "7", descriptors[:100])
    store_faces(first, "8", descriptors[100:])
    save_now(first, "7", monkeypatch, queries[0])
    save_now(first, "8", monkeypatch, queries[0])
    path, other = first._indexes.path("7", 128), first._indexes.path("8", 128)
    content = bytearray(path.read_bytes())
    if damage == "a flipped byte":
        content[len(content) // 2] ^= 0x01
        path.write_bytes(bytes(content))
    elif damage == "cut short":
        path.write_bytes(bytes(content[:-100]))
    elif damage == "another project's":
        shutil.copyfile(other, path)
    else:
        path.write_bytes(b"\0" * 4096)

    second = open_store(dialect, location, indexes)
    with caplog.at_level(logging.WARNING, logger="backend.storage.vector_index"):
        assert answers(second, "7", queries) == answers(first, "7", queries)
    assert "not used" in caplog.text
    assert len(index_of(second, "7")) == 100 and index_of(second, "7").unsaved == 100  # all from the database
    save_now(second, "7", monkeypatch, queries[0])  # the rebuilt index replaces the file
    third = open_store(dialect, location, indexes)
    assert answers(third, "7", queries) == answers(first, "7", queries) and index_of(third, "7").unsaved == 0


def test_an_index_of_another_numbering_is_rebuilt(dialect, databases, tmp_path, monkeypatch, faces, caplog):
    """A file written for a database that was since recreated (another generation of face ids), or for one
    that was restored from a backup taken before the file's last face (the file is ahead of it)."""
    descriptors, queries = faces
    monkeypatch.setattr(vector_index, "SAVE_MIN", NEVER)
    new, copy = databases
    indexes = tmp_path / "indexes"
    location = new()
    first = open_store(dialect, location, indexes)
    store_faces(first, "7", descriptors[:60])
    if dialect == "postgresql":
        close(first)  # (PostgreSQL copies a database no one is connected to)
    backup = copy(location)  # 60 faces
    store_faces(first, "7", descriptors[60:], first_task=60)
    save_now(first, "7", monkeypatch, queries[0])  # 130 faces in the file

    restored = open_store(dialect, backup, indexes)
    with caplog.at_level(logging.WARNING, logger="backend.storage.faces"):
        restored_answers = answers(restored, "7", queries)
    assert "another face numbering" in caplog.text
    assert len(index_of(restored, "7")) == 60 and index_of(restored, "7").unsaved == 60
    assert restored_answers == answers(open_store(dialect, backup, None), "7", queries)  # built from the database

    # A recreated database: the same project holds other faces (a third of the people), numbered anew.
    caplog.clear()
    recreated = open_store(dialect, new(), indexes)
    few = descriptors[np.argmax(descriptors @ queries.T, axis=1) < 4]
    store_faces(recreated, "7", few)
    assert len(index_of(recreated, "7")) == len(few) - 1  # (the last face joins at the next catch-up)
    found = answers(recreated, "7", queries)
    assert all(found[:4]) and not any(found[4:])


def test_the_cache_evicts_the_least_recently_used_index_and_reads_it_back(dialect, databases, tmp_path,
                                                                          monkeypatch, faces):
    descriptors, queries = faces
    monkeypatch.setattr(vector_index, "SAVE_MIN", NEVER)
    location, indexes = databases[0](), tmp_path / "indexes"
    # Room for one index only: the one used last always stays.
    store = open_store(dialect, location, indexes, index_cache_mb=0)
    store_faces(store, "7", descriptors[:60])
    expected = answers(store, "7", queries)
    monkeypatch.setattr(vector_index, "SAVE_MIN", 10)  # an index leaving with 10 faces its file lacks is written
    store_faces(store, "8", descriptors[60:70])
    store.flush_indexes()
    assert [key for key, _ in store._indexes.items()] == [("8", 128)]
    assert store._indexes.path("7", 128).exists() and not store._indexes.path("8", 128).exists()
    assert answers(store, "7", queries) == expected  # read back from its file
    assert [key for key, _ in store._indexes.items()] == [("7", 128)]
    assert len(index_of(store, "7")) == 60 and index_of(store, "7").unsaved == 0

    # With room for both, both stay.
    roomy = open_store(dialect, location, indexes, index_cache_mb=1)
    answers(roomy, "7", queries[:1]), answers(roomy, "8", queries[:1])
    assert sorted(key for key, _ in roomy._indexes.items()) == [("7", 128), ("8", 128)]
    assert sum(index.nbytes() for _, index in roomy._indexes.items()) <= 2**20


def test_replicas_agree_and_deleted_faces_never_take_a_live_faces_place(dialect, databases, tmp_path, monkeypatch):
    """Two replicas on one database, each with its own index: one deletes the faces of a person, and the
    other, whose index still holds them, finds the next person behind them (its search runs again without
    the deleted faces), as a replica that never saw them does."""
    rng = np.random.default_rng(3)
    query, side = np.linalg.qr(rng.normal(size=(128, 2)))[0].T  # two orthogonal unit vectors

    def faces_at(angle, count):
        """Faces of one person `angle` radians from the query (cosine distance 1 - cos(angle)), towards `side`."""
        noisy = np.cos(angle) * query + np.sin(angle) * side + rng.normal(scale=0.002, size=(count, 128))
        return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)

    # 20 faces 0.03 from the query, and 5 of another person 0.06 from it on its other side (0.17 apart): all
    # 16 nearest faces of the query are the first person's.
    near, behind = faces_at(0.25, 20), faces_at(-0.35, 5)
    location, project = databases[0](), "7"
    first, second = open_store(dialect, location, None), open_store(dialect, location, None)
    store_faces(first, project, near)
    [other] = set(store_faces(second, project, behind, first_task=100))
    assert answers(first, project, [query]) == answers(second, project, [query]) != [other]
    first.forget_tasks(project, [f"t{i}" for i in range(20)])
    assert len(index_of(second, project)) == len(index_of(first, project)) == 25  # both still hold them
    # Storing a face (its search runs before the lock, and again once the deleted faces met have left) and
    # looking one up (in the first replica, whose index holds them too) find the person behind them.
    assert store_faces(second, project, [query], first_task=200) == [other]
    assert answers(first, project, [query]) == [other]
    assert answers(open_store(dialect, location, None), project, [query]) == [other]
    ids, _ = index_of(second, project).search(query[None], 16)
    assert len(ids[ids >= 0]) == 5  # the deleted faces left its index
