"""FaceStore: every face the backend predicted, and the project-wide identities they belong to.

Tables (one SQL text for SQLite and PostgreSQL; see dialects.py):
  faces       one row per face box of a task: its box, landmarks, descriptor, identity number, the model
              version that found it, and whether an annotator confirmed it;
  identities  one row per person of a project: the name annotators gave it (if any), and the weighted sum
              of its faces' descriptors (confirmed faces weigh CONFIRMED_WEIGHT), whose direction is the
              centroid new faces are matched against;
  projects    the last identity number handed out per project: numbers are never reused;
  jobs        recluster jobs' status, readable by every worker and replica.
Every change happens in one transaction holding the project's lock, so concurrent requests about one
project are applied one after the other, and a killed process leaves either all of a change or none.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dialects import dialect_for
from .identities import CONFIRMED_WEIGHT, carry_over, face_weights, match_groups, unit

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS projects (
        project TEXT PRIMARY KEY,
        last_identity INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS identities (
        project TEXT NOT NULL,
        identity INTEGER NOT NULL,
        name TEXT,
        faces INTEGER NOT NULL,
        weight DOUBLE PRECISION NOT NULL,
        descriptor_sum {blob} NOT NULL,
        PRIMARY KEY (project, identity),
        UNIQUE (project, name))""",
    """CREATE TABLE IF NOT EXISTS faces (
        project TEXT NOT NULL,
        task TEXT NOT NULL,
        region TEXT NOT NULL,
        x1 DOUBLE PRECISION NOT NULL,
        y1 DOUBLE PRECISION NOT NULL,
        x2 DOUBLE PRECISION NOT NULL,
        y2 DOUBLE PRECISION NOT NULL,
        landmarks {blob} NOT NULL,
        descriptor {blob} NOT NULL,
        identity INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        confirmed BOOLEAN NOT NULL,
        PRIMARY KEY (project, task, region))""",
    "CREATE INDEX IF NOT EXISTS faces_by_identity ON faces (project, identity)",
    """CREATE TABLE IF NOT EXISTS jobs (
        job TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        status TEXT NOT NULL,
        progress DOUBLE PRECISION NOT NULL,
        message TEXT NOT NULL,
        result TEXT,
        updated DOUBLE PRECISION NOT NULL)""",
)

# The ids the store shows for unnamed identities. A name of this form always means identity N, so an
# annotator cannot give a person a name that another identity is shown as.
PERSON_ID = re.compile(r"person_(\d+)")


def display_id(identity: int, name: str | None) -> str:
    """What annotators see: the name they gave the identity, or person_<number>."""
    return name or f"person_{identity}"


@dataclass
class NewFace:
    """A face the models found in a task's image."""

    task: str
    region: str  # the region id of its box in the prediction
    box: np.ndarray  # (4,) x1, y1, x2, y2 in pixels
    landmarks: np.ndarray  # (5, 2) pixels, NaN where unknown
    descriptor: np.ndarray  # (D,) unit vector
    group: int  # faces of one request with equal groups are one person (Annotator.identify's labels)


@dataclass
class AnnotatedFace:
    """A face box of an annotation that a person submitted."""

    region: str
    box: np.ndarray  # (4,) pixels
    name: str | None  # the identity text or choice the annotator left on the box
    descriptor: np.ndarray | None  # from the image, for a box the store does not hold (drawn by hand)


@dataclass
class ProjectFaces:
    """All faces of a project, as parallel arrays."""

    tasks: list[str]
    regions: list[str]
    identities: np.ndarray  # (N,) identity numbers
    confirmed: np.ndarray  # (N,) bool
    descriptors: np.ndarray  # (N, D) float32


class FaceStore:
    def __init__(self, dialect):
        self.dialect = dialect
        self._local = threading.local()  # one connection per thread: neither driver shares them across threads
        with self._locked("schema") as db:  # several workers may start at once
            for statement in SCHEMA:
                self._run(db, statement.format(blob=dialect.blob_type))

    @classmethod
    def open(cls, database_url: str, data_dir: Path) -> "FaceStore":
        return cls(dialect_for(database_url, data_dir))

    def __str__(self) -> str:
        return str(self.dialect)

    # Predictions ------------------------------------------------------------------------------------

    def assign(self, project: str, faces: list[NewFace], model_version: str, threshold: float) -> list[str]:
        """Store the faces of one request and return each face's display id.

        Each group of faces joins the nearest identity of the project closer than `threshold`, or founds a
        new one. A task predicted again replaces its earlier predicted faces; its confirmed faces stay.
        """
        if not faces:
            return []
        descriptors = unit(np.stack([f.descriptor for f in faces]))
        groups, first_face, group_of = np.unique([f.group for f in faces], return_index=True, return_inverse=True)
        means = unit(np.stack([descriptors[group_of == g].sum(axis=0) for g in range(len(groups))]))
        with self._locked(f"project:{project}") as db:
            # Matched before the tasks' earlier faces are forgotten: a task predicted again keeps its ids.
            numbers, centroids = self._centroids(db, project, descriptors.shape[1])
            match = match_groups(means, centroids, threshold)
            self._forget_predictions(db, project, sorted({f.task for f in faces}))
            chosen = np.zeros(len(groups), dtype=np.int64)
            for g in np.argsort(first_face):  # new people are numbered in the order they first appear
                chosen[g] = numbers[match[g]] if match[g] >= 0 else self._new_identity(db, project)
            identities = chosen[group_of]
            stored = np.array([self._insert_face(db, project, face, identity, descriptor, model_version, False)
                               for face, identity, descriptor in zip(faces, identities, descriptors)])
            self._shift(db, project, identities[stored], descriptors[stored], weights=1.0, counts=1)
            self._drop_empty_identities(db, project)
            shown = self._display_ids(db, project, identities)
        return [shown[int(i)] for i in identities]

    # Annotators' corrections -------------------------------------------------------------------------

    def regions(self, project: str, task: str) -> set[str]:
        rows = self._run(self._connection(), "SELECT region FROM faces WHERE project = ? AND task = ?",
                         (project, task)).fetchall()
        return {region for (region,) in rows}

    def learn(self, project: str, task: str, faces: list[AnnotatedFace], model_version: str,
              threshold: float) -> dict:
        """Make the store agree with an annotation of `task` that a person submitted: `faces` are all its
        face boxes. Boxes gone from it leave the store; every box in it is confirmed; a name on a box
        names its identity, or moves the face to the identity of that name; a box the store does not
        know is treated as a face of its nearest identity (if one is closer than `threshold`), or of a new
        one."""
        summary = {"confirmed": 0, "moved": 0, "renamed": 0, "added": 0, "deleted": 0, "skipped": 0}
        with self._locked(f"project:{project}") as db:
            stored = {region: (identity, bool(confirmed), _array(descriptor))
                      for region, identity, confirmed, descriptor in self._run(
                          db, "SELECT region, identity, confirmed, descriptor FROM faces "
                              "WHERE project = ? AND task = ?", (project, task)).fetchall()}
            kept = {face.region for face in faces}
            for region, (identity, confirmed, descriptor) in stored.items():
                if region not in kept:
                    self._shift(db, project, [identity], [descriptor], weights=-face_weights(confirmed), counts=-1)
                    self._run(db, "DELETE FROM faces WHERE project = ? AND task = ? AND region = ?",
                              (project, task, region))
                    summary["deleted"] += 1
            for face in faces:
                if face.region in stored:
                    identity, confirmed, descriptor = stored[face.region]
                    target, renamed = self._identity_named(db, project, face.name, identity)
                    self._shift(db, project, [identity], [descriptor], weights=-face_weights(confirmed), counts=-1)
                    self._shift(db, project, [target], [descriptor], weights=CONFIRMED_WEIGHT, counts=1)
                    self._run(db, "UPDATE faces SET identity = ?, confirmed = ?, x1 = ?, y1 = ?, x2 = ?, y2 = ? "
                                  "WHERE project = ? AND task = ? AND region = ?",
                              (target, True, *map(float, face.box), project, task, face.region))
                    summary["moved"] += target != identity
                elif face.descriptor is not None:
                    descriptor = unit(face.descriptor)
                    numbers, centroids = self._centroids(db, project, len(descriptor))
                    [match] = match_groups(descriptor[None], centroids, threshold)
                    nearest = int(numbers[match]) if match >= 0 else None
                    target, renamed = self._identity_named(db, project, face.name, nearest)
                    if target is None:
                        target = self._new_identity(db, project)
                    new = NewFace(task, face.region, face.box, np.full((5, 2), np.nan), descriptor, 0)
                    self._insert_face(db, project, new, target, descriptor, model_version, True)
                    self._shift(db, project, [target], [descriptor], weights=CONFIRMED_WEIGHT, counts=1)
                    summary["added"] += 1
                else:
                    summary["skipped"] += 1
                    continue
                summary["confirmed"] += 1
                summary["renamed"] += renamed
            self._drop_empty_identities(db, project)
        return summary

    def _identity_named(self, db, project: str, name: str | None, current: int | None) -> tuple[int | None, bool]:
        """The identity a face belongs to when an annotator wrote `name` on it, and whether `current` was
        renamed for it: the identity shown as `name` if there is one, else `current` renamed to `name`
        while it has no name yet, else a new identity of that name."""
        name = (name or "").strip()
        if not name:
            return current, False
        row = self._run(db, "SELECT identity FROM identities WHERE project = ? AND name = ?",
                        (project, name)).fetchone()
        if row:
            return row[0], False
        person = PERSON_ID.fullmatch(name)
        if person:  # person_N is only ever identity N; one that no longer exists leaves the face where it is
            exists = self._run(db, "SELECT 1 FROM identities WHERE project = ? AND identity = ?",
                               (project, int(person.group(1)))).fetchone()
            return (int(person.group(1)) if exists else current), False
        if current is not None:
            named = self._run(db, "SELECT name FROM identities WHERE project = ? AND identity = ?",
                              (project, current)).fetchone()
            if named and named[0] is None:
                self._run(db, "UPDATE identities SET name = ? WHERE project = ? AND identity = ?",
                          (name, project, current))
                return current, True
        return self._new_identity(db, project, name), False

    # Re-clustering ----------------------------------------------------------------------------------

    def faces(self, project: str) -> ProjectFaces:
        rows = self._run(self._connection(), "SELECT task, region, identity, confirmed, descriptor FROM faces "
                                             "WHERE project = ? ORDER BY task, region", (project,)).fetchall()
        return ProjectFaces(
            tasks=[r[0] for r in rows],
            regions=[r[1] for r in rows],
            identities=np.array([r[2] for r in rows], dtype=np.int64),
            confirmed=np.array([bool(r[3]) for r in rows], dtype=bool),
            descriptors=np.stack([_array(r[4]) for r in rows]) if rows else np.zeros((0, 0), np.float32),
        )

    def relabel(self, project: str, before: ProjectFaces, labels: np.ndarray) -> dict:
        """Apply a re-clustering of `before` (a snapshot of faces(project)): each cluster keeps the identity
        number that most of its faces had (carry_over), or gets a new one. Confirmed faces stay where
        annotators put them, and faces that changed since the snapshot keep their newer identity."""
        kept = carry_over(before.identities, labels, face_weights(before.confirmed))
        with self._locked(f"project:{project}") as db:
            now = dict(((task, region), identity) for task, region, identity in self._run(
                db, "SELECT task, region, identity FROM faces WHERE project = ?", (project,)).fetchall())
            fresh: dict[int, int] = {}
            moves = []
            for task, region, old, confirmed, label in zip(before.tasks, before.regions, before.identities,
                                                            before.confirmed, labels.tolist()):
                if confirmed or now.get((task, region)) != old:
                    continue
                if label not in kept and label not in fresh:
                    fresh[label] = self._new_identity(db, project)
                new = kept.get(label, fresh.get(label))
                if new != old:
                    moves.append((new, project, task, region))
            self._many(db, "UPDATE faces SET identity = ? WHERE project = ? AND task = ? AND region = ?", moves)
            self._rebuild_identities(db, project)
        return {"faces": len(before.tasks), "moved": len(moves), "clusters": len(np.unique(labels))}

    def shown_ids(self, project: str) -> dict[tuple[str, str], str]:
        """{(task, region): display id} of every face of the project."""
        rows = self._run(self._connection(),
                         "SELECT f.task, f.region, f.identity, i.name FROM faces f LEFT JOIN identities i "
                         "ON i.project = f.project AND i.identity = f.identity WHERE f.project = ?",
                         (project,)).fetchall()
        return {(task, region): display_id(identity, name) for task, region, identity, name in rows}

    # Jobs -------------------------------------------------------------------------------------------

    def create_job(self, project: str) -> str:
        job = uuid.uuid4().hex[:12]
        self._run(self._connection(), "INSERT INTO jobs (job, project, status, progress, message, updated) "
                                      "VALUES (?, ?, ?, ?, ?, ?)", (job, project, "queued", 0.0, "", time.time()))
        return job

    def update_job(self, job: str, status: str, progress: float, message: str = "", result: dict | None = None):
        """message: what the job is doing, or why it failed; result: what it did, once done."""
        self._run(self._connection(),
                  "UPDATE jobs SET status = ?, progress = ?, message = ?, result = ?, updated = ? WHERE job = ?",
                  (status, round(float(progress), 4), message, json.dumps(result) if result is not None else None,
                   time.time(), job))

    def job(self, job: str) -> dict | None:
        row = self._run(self._connection(), "SELECT job, project, status, progress, message, result, updated "
                                            "FROM jobs WHERE job = ?", (job,)).fetchone()
        if row is None:
            return None
        status = dict(zip(("job", "project", "status", "progress", "message", "result", "updated"), row))
        return {**status, "result": json.loads(status["result"]) if status["result"] else None}

    # Plumbing ---------------------------------------------------------------------------------------

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None or getattr(connection, "closed", False) or getattr(connection, "broken", False):
            connection = self._local.connection = self.dialect.connect()
        return connection

    @contextmanager
    def _locked(self, lock: str):
        db = self._connection()
        self.dialect.begin_locked(db, lock)
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _run(self, db, sql: str, params=()):
        return db.execute(self.dialect.sql(sql), params)

    def _many(self, db, sql: str, rows: list) -> None:
        if rows:
            db.cursor().executemany(self.dialect.sql(sql), rows)

    def _new_identity(self, db, project: str, name: str | None = None) -> int:
        [number] = self._run(db, "INSERT INTO projects (project, last_identity) VALUES (?, 1) ON CONFLICT (project) "
                                 "DO UPDATE SET last_identity = projects.last_identity + 1 RETURNING last_identity",
                             (project,)).fetchone()
        self._run(db, "INSERT INTO identities (project, identity, name, faces, weight, descriptor_sum) "
                      "VALUES (?, ?, ?, 0, 0, ?)", (project, number, name, b""))
        return number

    def _insert_face(self, db, project, face: NewFace, identity, descriptor, model_version, confirmed) -> bool:
        """False when the task already holds a confirmed face under this region id: the annotator's stays."""
        cursor = self._run(
            db, "INSERT INTO faces (project, task, region, x1, y1, x2, y2, landmarks, descriptor, identity, "
                "model_version, confirmed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (project, task, region) DO NOTHING",
            (project, face.task, face.region, *map(float, face.box), _blob(face.landmarks, np.float32),
             _blob(descriptor, np.float32), int(identity), model_version, confirmed))
        return cursor.rowcount == 1

    def _forget_predictions(self, db, project: str, tasks: list[str]) -> None:
        marks = ", ".join("?" * len(tasks))
        rows = self._run(db, f"SELECT identity, descriptor FROM faces WHERE project = ? AND task IN ({marks}) "
                             "AND NOT confirmed", (project, *tasks)).fetchall()
        if rows:
            self._shift(db, project, [r[0] for r in rows], [_array(r[1]) for r in rows], weights=-1.0, counts=-1)
            self._run(db, f"DELETE FROM faces WHERE project = ? AND task IN ({marks}) AND NOT confirmed",
                      (project, *tasks))

    def _centroids(self, db, project: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Numbers and unit centroids of the identities whose descriptors have `dim` values: faces described
        by another descriptor model (the project's models changed) cannot be compared with these."""
        rows = [row for row in self._run(db, "SELECT identity, descriptor_sum FROM identities "
                                             "WHERE project = ? AND faces > 0", (project,)).fetchall()
                if len(row[1]) == dim * 8]
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim))
        return np.array([r[0] for r in rows]), unit(np.stack([_array(r[1], np.float64) for r in rows]))

    def _shift(self, db, project, identities, descriptors, weights, counts) -> None:
        """Add faces to (positive weights) or take them from (negative) their identities' sums and counts."""
        identities = np.asarray(identities, dtype=np.int64)
        if len(identities) == 0:
            return
        descriptors = np.asarray(descriptors, dtype=np.float64).reshape(len(identities), -1)
        weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), len(identities))
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), len(identities))
        for identity in np.unique(identities):
            mine = identities == identity
            row = self._run(db, "SELECT faces, weight, descriptor_sum FROM identities "
                                "WHERE project = ? AND identity = ?", (project, int(identity))).fetchone()
            faces, weight, total = row if row else (0, 0.0, b"")
            total = (_array(total, np.float64) if total else 0.0) + weights[mine] @ descriptors[mine]
            values = (int(faces + counts[mine].sum()), float(weight + weights[mine].sum()), _blob(total, np.float64))
            if row:
                self._run(db, "UPDATE identities SET faces = ?, weight = ?, descriptor_sum = ? "
                              "WHERE project = ? AND identity = ?", (*values, project, int(identity)))
            else:
                self._run(db, "INSERT INTO identities (project, identity, name, faces, weight, descriptor_sum) "
                              "VALUES (?, ?, NULL, ?, ?, ?)", (project, int(identity), *values))

    def _rebuild_identities(self, db, project: str) -> None:
        """Recompute every identity's count and sum from its faces (after re-clustering moved many)."""
        rows = self._run(db, "SELECT identity, confirmed, descriptor FROM faces WHERE project = ?",
                         (project,)).fetchall()
        self._run(db, "UPDATE identities SET faces = 0, weight = 0, descriptor_sum = ? WHERE project = ?",
                  (b"", project))
        if rows:
            numbers, index = np.unique([r[0] for r in rows], return_inverse=True)
            weights = face_weights([bool(r[1]) for r in rows])
            descriptors = np.stack([_array(r[2]) for r in rows]).astype(np.float64)
            totals = np.zeros((len(numbers), descriptors.shape[1]))
            np.add.at(totals, index, weights[:, None] * descriptors)
            self._many(db, "UPDATE identities SET faces = ?, weight = ?, descriptor_sum = ? "
                           "WHERE project = ? AND identity = ?",
                       [(int(n), float(w), _blob(t, np.float64), project, int(i)) for i, n, w, t in zip(
                           numbers, np.bincount(index), np.bincount(index, weights), totals)])
        self._drop_empty_identities(db, project)

    def _drop_empty_identities(self, db, project: str) -> None:
        self._run(db, "DELETE FROM identities WHERE project = ? AND faces <= 0", (project,))

    def _display_ids(self, db, project: str, identities) -> dict[int, str]:
        numbers = sorted({int(i) for i in identities})
        marks = ", ".join("?" * len(numbers))
        names = dict(self._run(db, f"SELECT identity, name FROM identities WHERE project = ? "
                                   f"AND identity IN ({marks})", (project, *numbers)).fetchall())
        return {n: display_id(n, names.get(n)) for n in numbers}


def _blob(array, dtype) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _array(blob, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(blob, dtype=dtype)
