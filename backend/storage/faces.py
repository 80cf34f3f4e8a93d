"""FaceStore: every face the backend predicted, and the project-wide identities they belong to.

Tables (one SQL text for SQLite and PostgreSQL; see dialects.py):
  faces       one row per face box of a task: its box, landmarks, descriptor, identity number, the model
              version that found it, whether an annotator confirmed it, its quality (how far its descriptor
              can be trusted: its vote counts that much), and its id: numbered in the order faces are
              stored, never reused, so that each process's vector index of a project catches up on the
              faces others stored (vector_index.py);
  identities  one row per person of a project: the name annotators gave it (if any), and the weighted sum
              of its faces' descriptors (confirmed faces weigh CONFIRMED_WEIGHT);
  projects    the last identity number handed out per project: numbers are never reused;
  face_sequence the last face id handed out, and the generation of that numbering (one row);
  annotations the task of each annotation the store learned from (deletion webhooks name only annotations);
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
from .identities import (CONFIRMED_WEIGHT, NEIGHBOURS, assignment_confidence, carry_over, face_weights,
                         match_groups, unit, vote_weights)
from .vector_index import FaceIndex

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
        id BIGINT NOT NULL,
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
        quality DOUBLE PRECISION NOT NULL DEFAULT 1,
        PRIMARY KEY (project, task, region))""",
    "CREATE INDEX IF NOT EXISTS faces_by_identity ON faces (project, identity)",
    # One numbering of faces for all projects: a face id is never reused, not even after its project was
    # deleted, so no index mistakes a new face for an old one; a recreated database has a new generation.
    """CREATE TABLE IF NOT EXISTS face_sequence (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        last_face BIGINT NOT NULL,
        generation TEXT NOT NULL)""",
    # Which task each annotation that taught the store belongs to: deletions name annotations by id alone.
    """CREATE TABLE IF NOT EXISTS annotations (
        project TEXT NOT NULL,
        annotation TEXT NOT NULL,
        task TEXT NOT NULL,
        PRIMARY KEY (project, annotation))""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        status TEXT NOT NULL,
        progress DOUBLE PRECISION NOT NULL,
        message TEXT NOT NULL,
        result TEXT,
        updated DOUBLE PRECISION NOT NULL)""",
    # The identity review page (review.py): a small JPEG of each face, and the log its operations are undone from.
    """CREATE TABLE IF NOT EXISTS thumbnails (
        project TEXT NOT NULL,
        task TEXT NOT NULL,
        region TEXT NOT NULL,
        jpeg {blob} NOT NULL,
        PRIMARY KEY (project, task, region))""",
    """CREATE TABLE IF NOT EXISTS review_log (
        project TEXT NOT NULL,
        entry INTEGER NOT NULL,
        operation TEXT NOT NULL,
        summary TEXT NOT NULL,
        changes TEXT NOT NULL,
        removed TEXT,
        undone BOOLEAN NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (project, entry))""",
    # Where each task of a prelabel or annotate run stands (prelabel_state.py): what a resumed run skips.
    """CREATE TABLE IF NOT EXISTS prelabel_tasks (
        project TEXT NOT NULL,
        model_version TEXT NOT NULL,
        task TEXT NOT NULL,
        status TEXT NOT NULL,
        prediction TEXT,
        reason TEXT,
        updated DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (project, model_version, task))""",
)

# The ids the store shows for unnamed identities. A name of this form always means identity N, so an
# annotator cannot give a person a name that another identity is shown as.
PERSON_ID = re.compile(r"person_(\d+)")
# A job whose worker has not written for this long died with it (workers write a heartbeat every few seconds).
JOB_STALE_SECONDS = 60
# The model_version of faces that annotators drew by hand: nothing but their annotation vouches for them.
HAND_DRAWN = "hand-drawn"
# Rows read or looked up per statement (SQLite allows 32766 parameters, PostgreSQL 65535).
LOOKUP_ROWS = 10_000


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
    quality: float = 1.0  # 0..1, ImageAnnotation.quality: how far its descriptor can be trusted


@dataclass
class Assignment:
    """The identity a stored face was given, and how much to trust it (identities.assignment_confidence)."""

    identity: str  # display id
    confidence: float


@dataclass
class AnnotatedFace:
    """A face box of an annotation that a person submitted."""

    region: str
    box: np.ndarray  # (4,) pixels
    name: str | None  # the identity text or choice the annotator left on the box
    # from the image, for a box the store does not hold (drawn by hand) or whose box the annotator moved
    descriptor: np.ndarray | None


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
        self._indexes: dict[tuple[str, int], FaceIndex] = {}  # (project, descriptor size) -> its vector index
        self._indexes_lock = threading.Lock()
        with self._locked("schema") as db:  # several workers may start at once
            for statement in SCHEMA:
                self._run(db, statement.format(blob=dialect.blob_type))
            self._number_faces(db)

    @classmethod
    def open(cls, database_url: str, data_dir: Path) -> "FaceStore":
        return cls(dialect_for(database_url, data_dir))

    def __str__(self) -> str:
        return str(self.dialect)

    # Predictions ------------------------------------------------------------------------------------

    def assign(self, project: str, faces: list[NewFace], model_version: str, threshold: float) -> list[str]:
        """assign_with_confidence's display ids alone."""
        return [a.identity for a in self.assign_with_confidence(project, faces, model_version, threshold)]

    def assign_with_confidence(self, project: str, faces: list[NewFace], model_version: str,
                               threshold: float) -> list[Assignment]:
        """Store the faces of one request and return each face's identity and its confidence.

        Each group of faces joins the identity that its nearest stored faces vote for within `threshold`
        (identities.match_groups; each stored face's vote weighs its quality, and confirmed faces more), or
        founds a new one; the confidence is the face's quality times how clearly the vote decided.
        A task predicted again replaces its earlier predicted faces; its confirmed faces stay.
        """
        if not faces:
            return []
        descriptors = unit(np.stack([f.descriptor for f in faces]))
        groups, first_face, group_of = np.unique([f.group for f in faces], return_index=True, return_inverse=True)
        quality = np.array([f.quality for f in faces], dtype=np.float64)
        thresholds = np.full(len(groups), float(threshold))
        with self._locked(f"project:{project}") as db:
            # Matched before the tasks' earlier faces are forgotten: a task predicted again keeps its ids.
            joined, distance = self._match(db, project, descriptors, group_of, thresholds)
            forgotten_ids, forgotten_identities = self._forget_predictions(db, project, sorted({f.task for f in faces}))
            chosen = joined.copy()
            for g in np.argsort(first_face):  # new people are numbered in the order they first appear
                if joined[g] < 0:
                    chosen[g] = self._new_identity(db, project)
            identities = chosen[group_of]
            stored = np.array([self._insert_face(db, project, face, identity, descriptor, model_version, False, face_id)
                               for face, identity, descriptor, face_id in zip(
                                   faces, identities, descriptors, self._face_ids(db, len(faces)))])
            self._shift(db, project, identities[stored], descriptors[stored], weights=1.0, counts=1)
            self._drop_empty_identities(db, project, forgotten_identities)
            shown = self._display_ids(db, project, identities)
        self._unindex(project, forgotten_ids)
        confidence = assignment_confidence(quality, distance[group_of], thresholds[group_of], joined[group_of])
        return [Assignment(shown[int(i)], float(c)) for i, c in zip(identities, confidence)]

    # Annotators' corrections -------------------------------------------------------------------------

    def regions(self, project: str, task: str) -> set[str]:
        rows = self._run(self._connection(), "SELECT region FROM faces WHERE project = ? AND task = ?",
                         (project, task)).fetchall()
        return {region for (region,) in rows}

    def boxes(self, project: str, task: str) -> dict[str, np.ndarray]:
        """{region: (4,) box in pixels} of the task's stored faces."""
        rows = self._run(self._connection(), "SELECT region, x1, y1, x2, y2 FROM faces WHERE project = ? AND task = ?",
                         (project, task)).fetchall()
        return {region: np.array(box, dtype=np.float64) for region, *box in rows}

    def nearest_identity(self, project: str, descriptor: np.ndarray, quality: float,
                         threshold: float) -> Assignment | None:
        """What assign_with_confidence would give a face of this descriptor and quality alone in its request,
        without storing it: the identity it joins and the confidence; None where it would found a new one."""
        quality = np.array([quality], dtype=np.float64)
        thresholds = np.array([threshold], dtype=np.float64)
        db = self._connection()
        joined, distance = self._match(db, project, unit(descriptor)[None], np.zeros(1, np.int64), thresholds)
        if joined[0] < 0:
            return None
        [confidence] = assignment_confidence(quality, distance, thresholds, joined)
        return Assignment(self._display_ids(db, project, joined)[int(joined[0])], float(confidence))

    def learn(self, project: str, task: str, faces: list[AnnotatedFace], threshold: float,
              annotation: str | None = None) -> dict:
        """Make the store agree with an annotation of `task` that a person submitted: `faces` are all its
        face boxes. Boxes gone from it leave the store; every box in it is confirmed; a name on a box
        names its identity, or moves the face to the identity of that name; a box the store does not
        know is treated as a face of its nearest identity (if one is closer than `threshold`), or of a new
        one; a box it knows that comes with a descriptor (the annotator moved it) is described by that one."""
        summary = {"confirmed": 0, "moved": 0, "renamed": 0, "added": 0, "deleted": 0, "skipped": 0}
        with self._locked(f"project:{project}") as db:
            if annotation is not None:
                self._run(db, "INSERT INTO annotations (project, annotation, task) VALUES (?, ?, ?) "
                              "ON CONFLICT (project, annotation) DO NOTHING", (project, annotation, task))
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
                    face_id = None
                    if face.descriptor is not None:  # the box was moved: its face is described anew
                        descriptor = unit(face.descriptor)
                        [face_id] = self._face_ids(db, 1)  # a new id: indexes learn the new descriptor
                    self._shift(db, project, [target], [descriptor], weights=CONFIRMED_WEIGHT, counts=1)
                    self._run(db, "UPDATE faces SET identity = ?, confirmed = ?, x1 = ?, y1 = ?, x2 = ?, y2 = ?, "
                                  "descriptor = ?, id = COALESCE(?, id) WHERE project = ? AND task = ? AND region = ?",
                              (target, True, *map(float, face.box), _blob(descriptor, np.float32),
                               None if face_id is None else int(face_id), project, task, face.region))
                    summary["moved"] += target != identity
                elif face.descriptor is not None:
                    descriptor = unit(face.descriptor)
                    [match], _ = self._match(db, project, descriptor[None], np.zeros(1, np.int64),
                                             np.array([threshold]))
                    target, renamed = self._identity_named(db, project, face.name, int(match) if match >= 0 else None)
                    if target is None:
                        target = self._new_identity(db, project)
                    new = NewFace(task, face.region, face.box, np.full((5, 2), np.nan), descriptor, 0)
                    self._insert_face(db, project, new, target, descriptor, HAND_DRAWN, True)
                    self._shift(db, project, [target], [descriptor], weights=CONFIRMED_WEIGHT, counts=1)
                    summary["added"] += 1
                else:
                    summary["skipped"] += 1
                    continue
                summary["confirmed"] += 1
                summary["renamed"] += renamed
            self._drop_empty_identities(db, project)
        return summary

    def unlearn(self, project: str, annotations: list[str]) -> dict:
        """Take back what deleted annotations taught: in each of their tasks that has no other annotation
        left, faces drawn by hand leave the store and predicted faces are no longer confirmed."""
        with self._locked(f"project:{project}") as db:
            marks = ", ".join("?" * len(annotations))
            tasks = sorted({task for (task,) in self._run(
                db, f"SELECT task FROM annotations WHERE project = ? AND annotation IN ({marks})",
                (project, *annotations)).fetchall()}) if annotations else []
            self._run(db, f"DELETE FROM annotations WHERE project = ? AND annotation IN ({marks})",
                      (project, *annotations)) if annotations else None
            summary = {"unconfirmed": 0, "deleted": 0}
            for task in tasks:
                if self._run(db, "SELECT 1 FROM annotations WHERE project = ? AND task = ?",
                             (project, task)).fetchone():
                    continue  # another annotation of the task still says what its faces are
                for region, identity, descriptor, predicted in self._run(
                        db, "SELECT region, identity, descriptor, model_version <> ? FROM faces "
                            "WHERE project = ? AND task = ? AND confirmed", (HAND_DRAWN, project, task)).fetchall():
                    self._shift(db, project, [identity], [_array(descriptor)], weights=-CONFIRMED_WEIGHT, counts=-1)
                    if predicted:
                        self._shift(db, project, [identity], [_array(descriptor)], weights=1.0, counts=1)
                        self._run(db, "UPDATE faces SET confirmed = ? WHERE project = ? AND task = ? AND region = ?",
                                  (False, project, task, region))
                        summary["unconfirmed"] += 1
                    else:
                        self._run(db, "DELETE FROM faces WHERE project = ? AND task = ? AND region = ?",
                                  (project, task, region))
                        summary["deleted"] += 1
            self._drop_empty_identities(db, project)
        return summary

    def forget_tasks(self, project: str, tasks: list[str]) -> dict:
        """Deleted tasks: their faces leave the store and their identities."""
        if not tasks:
            return {"deleted": 0}
        marks = ", ".join("?" * len(tasks))
        with self._locked(f"project:{project}") as db:
            rows = self._run(db, f"SELECT identity, confirmed, descriptor FROM faces WHERE project = ? "
                                 f"AND task IN ({marks})", (project, *tasks)).fetchall()
            if rows:
                self._shift(db, project, [r[0] for r in rows], [_array(r[2]) for r in rows],
                            weights=-face_weights([bool(r[1]) for r in rows]), counts=-1)
            for table in ("faces", "annotations", "thumbnails", "prelabel_tasks"):
                self._run(db, f"DELETE FROM {table} WHERE project = ? AND task IN ({marks})", (project, *tasks))
            self._drop_empty_identities(db, project)
        return {"deleted": len(rows)}

    def forget_project(self, project: str) -> dict:
        """A deleted project: everything the store holds about it."""
        with self._locked(f"project:{project}") as db:
            [(faces,)] = self._run(db, "SELECT COUNT(*) FROM faces WHERE project = ?", (project,)).fetchall()
            for table in ("faces", "identities", "annotations", "projects", "jobs", "thumbnails", "review_log",
                          "prelabel_tasks"):
                self._run(db, f"DELETE FROM {table} WHERE project = ?", (project,))
        return {"deleted": faces}

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

    def create_job(self, project: str) -> tuple[str, bool]:
        """A new queued job for the project, or the one still running for it: (job id, whether it is new).
        A project has at most one job at a time: two would re-cluster the same faces against each other."""
        with self._locked(f"project:{project}") as db:
            self._fail_stale_jobs(db, project)
            running = self._run(db, "SELECT job FROM jobs WHERE project = ? AND status IN ('queued', 'running')",
                                (project,)).fetchone()
            if running:
                return running[0], False
            job = uuid.uuid4().hex[:12]
            self._run(db, "INSERT INTO jobs (job, project, status, progress, message, updated) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (job, project, "queued", 0.0, "", time.time()))
        return job, True

    def update_job(self, job: str, status: str, progress: float, message: str = "", result: dict | None = None):
        """message: what the job is doing, or why it failed; result: what it did, once done."""
        self._run(self._connection(),
                  "UPDATE jobs SET status = ?, progress = ?, message = ?, result = ?, updated = ? WHERE job = ?",
                  (status, round(float(progress), 4), message, json.dumps(result) if result is not None else None,
                   time.time(), job))

    def job_alive(self, job: str) -> None:
        """A running job's heartbeat: a job not heard from for JOB_STALE_SECONDS is taken as dead."""
        self._run(self._connection(), "UPDATE jobs SET updated = ? WHERE job = ?", (time.time(), job))

    def job(self, job: str) -> dict | None:
        columns = ("job", "project", "status", "progress", "message", "result", "updated")
        row = self._run(self._connection(), f"SELECT {', '.join(columns)} FROM jobs WHERE job = ?", (job,)).fetchone()
        if row is None:
            return None
        status = dict(zip(columns, row))
        if status["status"] in ("queued", "running") and time.time() - status["updated"] > JOB_STALE_SECONDS:
            with self._locked(f"project:{status['project']}") as db:
                self._fail_stale_jobs(db, status["project"])
            return self.job(job)
        return {**status, "result": json.loads(status["result"]) if status["result"] else None}

    def _fail_stale_jobs(self, db, project: str) -> None:
        self._run(db, "UPDATE jobs SET status = 'failed', message = ? WHERE project = ? AND status IN "
                      "('queued', 'running') AND updated < ?",
                  (f"the worker running it stopped (no heartbeat for {JOB_STALE_SECONDS} s)", project,
                   time.time() - JOB_STALE_SECONDS))

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

    def _insert_face(self, db, project, face: NewFace, identity, descriptor, model_version, confirmed,
                     face_id: int | None = None) -> bool:
        """False when the task already holds a confirmed face under this region id: the annotator's stays.
        face_id: one of _face_ids (a new one when not given)."""
        if face_id is None:
            [face_id] = self._face_ids(db, 1)
        cursor = self._run(
            db, "INSERT INTO faces (project, id, task, region, x1, y1, x2, y2, landmarks, descriptor, identity, "
                "model_version, confirmed, quality) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (project, task, region) DO NOTHING",
            (project, int(face_id), face.task, face.region, *map(float, face.box), _blob(face.landmarks, np.float32),
             _blob(descriptor, np.float32), int(identity), model_version, confirmed, float(face.quality)))
        return cursor.rowcount == 1

    def _face_ids(self, db, count: int) -> np.ndarray:
        """`count` new face ids, above every id ever handed out. The sequence's row stays locked until the
        transaction ends, so faces become visible in the order of their ids (see vector_index.py); other
        projects' writers wait for it only from here to the commit."""
        [last] = self._run(db, "INSERT INTO face_sequence (one, last_face, generation) VALUES (1, ?, ?) "
                               "ON CONFLICT (one) DO UPDATE SET last_face = face_sequence.last_face + ? "
                               "RETURNING last_face", (count, uuid.uuid4().hex, count)).fetchone()
        return np.arange(last - count + 1, last + 1, dtype=np.int64)

    def _forget_predictions(self, db, project: str, tasks: list[str]) -> tuple[list[int], list[int]]:
        """Delete the tasks' predicted faces; returns their ids and identities."""
        marks = ", ".join("?" * len(tasks))
        rows = self._run(db, f"SELECT id, identity, descriptor FROM faces WHERE project = ? AND task IN ({marks}) "
                             "AND NOT confirmed", (project, *tasks)).fetchall()
        if rows:
            self._shift(db, project, [r[1] for r in rows], [_array(r[2]) for r in rows], weights=-1.0, counts=-1)
            self._run(db, f"DELETE FROM faces WHERE project = ? AND task IN ({marks}) AND NOT confirmed",
                      (project, *tasks))
        return [r[0] for r in rows], [r[1] for r in rows]

    # Nearest faces ----------------------------------------------------------------------------------

    def _match(self, db, project: str, descriptors: np.ndarray, group_of: np.ndarray,
               thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """identities.match_groups against the project's stored faces of the same descriptor size: faces
        described by another model (the project's models changed) cannot be compared with these."""
        ids = np.full((len(descriptors), NEIGHBOURS), -1, np.int64)
        similarities = np.full(ids.shape, -np.inf)
        index = self._index(db, project, descriptors.shape[1])
        if index is not None:
            ids, similarities = index.search(descriptors, NEIGHBOURS)
        found = np.unique(ids[ids >= 0])
        rows = []
        for start in range(0, len(found), LOOKUP_ROWS):
            chunk = found[start:start + LOOKUP_ROWS].tolist()
            # By id alone, through its unique index: a plan that cannot go wrong on a project that grew since
            # PostgreSQL last gathered statistics (with `project = ?`, it scanned all of a new project's faces).
            rows += self._run(db, f"SELECT id, identity, confirmed, quality FROM faces WHERE id IN "
                                  f"({', '.join('?' * len(chunk))})", chunk).fetchall()
        if len(rows) < len(found):  # deleted since this index learned them
            index.remove(np.setdiff1d(found, [r[0] for r in rows]))
        identity_of = {face_id: (identity, bool(confirmed), quality) for face_id, identity, confirmed, quality in rows}
        neighbours = [identity_of.get(face_id, (-1, False, 1.0)) for face_id in ids.ravel().tolist()]
        identities = np.array([n[0] for n in neighbours], dtype=np.int64).reshape(ids.shape)
        weights = vote_weights([n[1] for n in neighbours], [n[2] for n in neighbours]).reshape(ids.shape)
        distances = np.where(identities >= 0, 1.0 - similarities, np.inf)
        return match_groups(group_of, thresholds, identities, weights, distances)

    def _index(self, db, project: str, dim: int) -> FaceIndex | None:
        """The project's vector index of `dim`-value descriptors, caught up with every face stored so far
        (see vector_index.py for why this sees all of them, with or without the project's lock held)."""
        sequence = self._run(db, "SELECT last_face, generation FROM face_sequence").fetchone()
        if sequence is None:
            return None
        last, generation = sequence
        with self._indexes_lock:
            index = self._indexes.get((project, dim))
            if index is None or index.generation != generation:
                index = self._indexes[(project, dim)] = FaceIndex(dim, generation)
        with index.lock:
            if last > index.last_id:
                cursor = self._run(db, "SELECT id, descriptor FROM faces WHERE project = ? AND id > ? AND id <= ?",
                                   (project, index.last_id, last))
                while rows := cursor.fetchmany(LOOKUP_ROWS):
                    rows = [(face_id, descriptor) for face_id, descriptor in rows if len(descriptor) == dim * 4]
                    if rows:
                        index.add(np.array([r[0] for r in rows], dtype=np.int64),
                                  np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim))
                index.last_id = last
        return index

    def _unindex(self, project: str, face_ids) -> None:
        """Faces this process deleted, once the deletion is committed (before, a rollback would leave the
        index without faces the database still has)."""
        if len(face_ids):
            with self._indexes_lock:
                indexes = [index for (indexed, _), index in self._indexes.items() if indexed == project]
            for index in indexes:
                index.remove(face_ids)

    def _number_faces(self, db) -> None:
        """Give the faces of a store created before faces had ids and qualities their ids (in project and
        task order) and quality 1; then index the ids."""
        columns = {column[0] for column in self._run(db, "SELECT * FROM faces LIMIT 0").description}
        if "quality" not in columns:
            self._run(db, "ALTER TABLE faces ADD COLUMN quality DOUBLE PRECISION NOT NULL DEFAULT 1")
        if "id" not in columns:
            self._run(db, "ALTER TABLE faces ADD COLUMN id BIGINT")
            self._run(db, "UPDATE faces SET id = numbered.n FROM (SELECT project, task, region, ROW_NUMBER() OVER "
                          "(ORDER BY project, task, region) AS n FROM faces) AS numbered WHERE "
                          "faces.project = numbered.project AND faces.task = numbered.task AND "
                          "faces.region = numbered.region")
            [(last,)] = self._run(db, "SELECT COALESCE(MAX(id), 0) FROM faces").fetchall()
            self._run(db, "INSERT INTO face_sequence (one, last_face, generation) VALUES (1, ?, ?) ON CONFLICT (one) "
                          "DO UPDATE SET last_face = ?", (last, uuid.uuid4().hex, last))
        self._run(db, "CREATE UNIQUE INDEX IF NOT EXISTS faces_by_id ON faces (id)")
        self._run(db, "CREATE INDEX IF NOT EXISTS faces_by_project_id ON faces (project, id)")

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

    def _drop_empty_identities(self, db, project: str, identities=None) -> None:
        """Of the project's identities, or only of these (a request touches few of a large project's)."""
        if identities is None:
            self._run(db, "DELETE FROM identities WHERE project = ? AND faces <= 0", (project,))
        elif len(identities):
            numbers = sorted({int(i) for i in identities})
            self._run(db, f"DELETE FROM identities WHERE project = ? AND faces <= 0 AND identity IN "
                          f"({', '.join('?' * len(numbers))})", (project, *numbers))

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
