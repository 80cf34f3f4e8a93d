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
import logging
import re
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dialects import dialect_for
from .identities import (CONFIRMED_WEIGHT, NEIGHBOURS, assignment_confidence, carry_over, face_weights,
                         match_groups, unit, vote_weights)
from .vector_index import FaceIndex, IndexCache

logger = logging.getLogger(__name__)

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
    # How many faces a project held when it was last re-clustered: when it is due again (AUTO_RECLUSTER).
    """CREATE TABLE IF NOT EXISTS reclusterings (
        project TEXT PRIMARY KEY,
        faces BIGINT NOT NULL,
        updated DOUBLE PRECISION NOT NULL)""",
    # The store's format: 2 since identity sums are stored as float32 (_narrow_sums).
    """CREATE TABLE IF NOT EXISTS store_format (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        version INTEGER NOT NULL)""",
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
INSERT_FACE = ("INSERT INTO faces (project, id, task, region, x1, y1, x2, y2, landmarks, descriptor, identity, "
               "model_version, confirmed, quality) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (project, task, region) DO NOTHING")
# Identity sums are added to in float64 (identities.unit) and stored as float32: a request reads and writes
# its identities' sums, and at 1152-d float64 sums (9 KiB each) cost PostgreSQL ~1 ms of an assignment's ~4.
SUM_TYPE = np.float32
# Rows read or looked up per statement (SQLite allows 32766 parameters, PostgreSQL 65535).
LOOKUP_ROWS = 10_000
# A request compares its faces directly with at most this many faces stored since its process's index last
# caught up (more: it searches the caught-up index, one round trip more).
RECENT_UP_TO = 5000
# A search that met faces deleted since the index learned them is run again without them, up to this many
# times, so that deleted faces never take the places of live ones among a face's nearest.
DELETED_RESEARCHES = 3


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
    quality: np.ndarray  # (N,) 0..1


class FaceStore:
    def __init__(self, dialect, index_dir: Path | None = None, index_cache_mb: int = 1024):
        """index_dir: where each project's vector index is written, so that other processes read it instead
        of all of the project's faces (None: nowhere); index_cache_mb: the memory this store's indexes may
        take, the least recently used leaving first (vector_index.IndexCache)."""
        self.dialect = dialect
        self._local = threading.local()  # one connection per thread: neither driver shares them across threads
        self._indexes = IndexCache(index_dir, index_cache_mb * 2**20)  # (project, descriptor size) -> its index
        with self._locked("schema") as db:  # several workers may start at once
            for statement in SCHEMA:
                self._run(db, statement.format(blob=dialect.blob_type))
            self._number_faces(db)
            self._narrow_sums(db)

    @classmethod
    def open(cls, database_url: str, data_dir: Path, index_dir: Path | None = None,
             index_cache_mb: int = 1024) -> "FaceStore":
        """index_dir: by default DATA_DIR/indexes."""
        return cls(dialect_for(database_url, data_dir), index_dir or Path(data_dir) / "indexes", index_cache_mb)

    def flush_indexes(self) -> None:
        """Wait until the vector indexes due to be written to index_dir are written."""
        self._indexes.flush()

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
        tasks = sorted({f.task for f in faces})
        index = self._indexes.get(project, descriptors.shape[1])  # (read from its file outside the transaction)
        # Searched before the transaction, in the index as this process holds it: the faces stored since come
        # with the lock (_catch_up), and are compared with the request's faces directly (_with_recent).
        held = index.last_id
        ids, similarities = index.search(descriptors, NEIGHBOURS)
        found = np.unique(ids[ids >= 0])
        # Pipelined (see _locked): all that the request reads travels with the lock in one round trip, all
        # that it writes with the commit in another; founding new people takes one more, for their numbers.
        with self._locked(f"project:{project}", pipelined=True) as db:
            catching_up = self._send_catch_up(db, project, held)
            earlier = self._run(db, f"SELECT id, task, region, identity, confirmed, descriptor FROM faces WHERE "
                                    f"project = ? AND task IN ({', '.join('?' * len(tasks))})", (project, *tasks))
            looking_up = self._send_look_up(db, found, identities=True)
            numbering = self._send_face_ids(db, len(faces))
            index, recent = self._catch_up(db, project, index, catching_up, held)
            (who, rows), earlier = self._looked_up(looking_up), earlier.fetchall()
            if recent is None or len(who) < len(found):  # a rebuilt index, many new faces, or deleted faces met
                index.remove(np.setdiff1d(found, list(who)))
                ids, similarities, who = self._neighbours(db, index, descriptors)
            else:
                ids, similarities = _with_recent(ids, similarities, recent[0], recent[1], descriptors)
                who.update(recent[2])
            # Matched before the tasks' earlier faces are forgotten: a task predicted again keeps its ids.
            joined, distance = _vote(ids, similarities, who, group_of, thresholds)
            face_ids = _numbers_up_to(numbering, len(faces))
            forgotten = [row for row in earlier if not row[4]]  # the tasks' predicted faces; confirmed ones stay
            forgotten_identities = [row[3] for row in forgotten]
            newcomers = [g for g in np.argsort(first_face) if joined[g] < 0]  # numbered in the order they appear
            # Identities of the tasks' earlier faces and of faces the index lacked before the request that are
            # not among its neighbours' (rare: a task predicted again is its earlier face's neighbour): read now.
            reading = self._send_identity_rows(db, project, sorted({*joined[joined >= 0].tolist(),
                                                                     *forgotten_identities} - rows.keys()))
            chosen = joined.copy()
            if newcomers:
                chosen[newcomers] = _numbers_up_to(self._send_new_identities(db, project, len(newcomers)),
                                                   len(newcomers))
            rows.update(self._identity_rows_from(reading))
            identities = chosen[group_of]
            # A task's region an annotator confirmed keeps the annotator's face (the insert would do nothing).
            taken = {(task, region) for _, task, region, _, confirmed, _ in earlier if confirmed}
            stored = np.zeros(len(faces), dtype=bool)
            for i, face in enumerate(faces):
                stored[i] = (face.task, face.region) not in taken
                taken.add((face.task, face.region))
            self._many(db, "DELETE FROM faces WHERE id = ?", [(row[0],) for row in forgotten])
            self._many(db, INSERT_FACE, [self._face_row(project, face, identity, descriptor, model_version, False,
                                                        face_id)
                                         for face, identity, descriptor, face_id, new in zip(
                                             faces, identities, descriptors, face_ids, stored) if new])
            self._shift(db, project, [*forgotten_identities, *identities[stored]],
                        [*(_array(row[5]) for row in forgotten), *descriptors[stored]],
                        weights=[-1.0] * len(forgotten) + [1.0] * int(stored.sum()),
                        counts=[-1] * len(forgotten) + [1] * int(stored.sum()), rows=rows)
            self._drop_empty_identities(db, project, forgotten_identities)
            shown = {int(n): display_id(int(n), rows[n][3] if n in rows else None) for n in set(identities.tolist())}
        self._unindex(project, [row[0] for row in forgotten])
        confidence = assignment_confidence(quality, distance[group_of], thresholds[group_of], joined[group_of])
        return [Assignment(shown[int(i)], float(c)) for i, c in zip(identities, confidence)]

    # Annotators' corrections -------------------------------------------------------------------------

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
                          "prelabel_tasks", "reclusterings"):
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
        """All of the project's faces, by task and region. Read a page at a time (_face_pages), each page's
        descriptors straight into one array sized by a count taken first: 10^6 1152-d faces take 4.3 GiB,
        not twice that (every row's bytes, then a stacked copy)."""
        db = self._connection()
        [(count,)] = self._run(db, "SELECT COUNT(*) FROM faces WHERE project = ?", (project,)).fetchall()
        tasks, regions, identities, confirmed, quality = [], [], [], [], []
        descriptors = np.zeros((0, 0), np.float32)
        for rows in self._face_pages(db, project, "identity, confirmed, quality, descriptor"):
            page = _descriptor_page(project, [row[5] for row in rows], descriptors.shape[1] if len(tasks) else None)
            start = len(tasks)
            if start == 0:
                descriptors = np.empty((max(count, len(rows)), page.shape[1]), np.float32)
            elif start + len(rows) > len(descriptors):  # (faces stored since the count)
                descriptors = np.concatenate([descriptors, np.empty((len(rows), page.shape[1]), np.float32)])
            descriptors[start:start + len(rows)] = page
            for row in rows:
                tasks.append(row[0])
                regions.append(row[1])
                identities.append(row[2])
                confirmed.append(bool(row[3]))
                quality.append(row[4])
        return ProjectFaces(tasks=tasks, regions=regions, identities=np.array(identities, dtype=np.int64),
                            confirmed=np.array(confirmed, dtype=bool), descriptors=descriptors[:len(tasks)],
                            quality=np.array(quality, dtype=np.float64))

    def faces_since_recluster(self, project: str) -> tuple[int, int]:
        """(faces the project holds, faces it held at its last re-clustering, 0 if none)."""
        db = self._connection()
        [(faces,)] = self._run(db, "SELECT COUNT(*) FROM faces WHERE project = ?", (project,)).fetchall()
        then = self._run(db, "SELECT faces FROM reclusterings WHERE project = ?", (project,)).fetchone()
        return int(faces), int(then[0]) if then else 0

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
            self._run(db, "INSERT INTO reclusterings (project, faces, updated) VALUES (?, ?, ?) ON CONFLICT (project) "
                          "DO UPDATE SET faces = excluded.faces, updated = excluded.updated",
                      (project, len(before.tasks), time.time()))
        return {"faces": len(before.tasks), "moved": len(moves), "clusters": len(np.unique(labels))}

    def shown_ids(self, project: str, tasks: list[str] | None = None) -> dict[tuple[str, str], str]:
        """{(task, region): display id} of every face of the project, or of these tasks."""
        sql = ("SELECT f.task, f.region, f.identity, i.name FROM faces f LEFT JOIN identities i "
               "ON i.project = f.project AND i.identity = f.identity WHERE f.project = ?")
        db = self._connection()
        rows = self._run(db, sql, (project,)).fetchall() if tasks is None else [
            row for start in range(0, len(tasks), LOOKUP_ROWS) for row in self._run(
                db, f"{sql} AND f.task IN ({', '.join('?' * len(tasks[start:start + LOOKUP_ROWS]))})",
                (project, *tasks[start:start + LOOKUP_ROWS])).fetchall()]
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
    def _locked(self, lock: str, pipelined: bool = False):
        """A transaction holding `lock`, committed when the block ends, rolled back when it raises.

        pipelined: on PostgreSQL, statements are sent without waiting for their answers until a result is
        read (psycopg's pipeline mode): the statements issued between two reads, the commit included, cost
        one round trip together. The block reads every result it needs (fetch*, not cursor.rowcount), and
        sends a statement only once what it depends on was read. SQLite has no round trips to save."""
        db = self._connection()
        try:
            with self.dialect.pipeline(db) if pipelined else nullcontext():
                self.dialect.begin_locked(db, lock)
                yield db
                db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _run(self, db, sql: str, params=()):
        return db.execute(self.dialect.sql(sql), params)

    def _many(self, db, sql: str, rows: list) -> None:
        if len(rows) == 1:  # (psycopg's executemany costs more than one execute)
            self._run(db, sql, rows[0])
        elif rows:
            db.cursor().executemany(self.dialect.sql(sql), rows)

    def _new_identity(self, db, project: str, name: str | None = None) -> int:
        [number] = _numbers_up_to(self._send_new_identities(db, project, 1), 1).tolist()
        self._run(db, "INSERT INTO identities (project, identity, name, faces, weight, descriptor_sum) "
                      "VALUES (?, ?, ?, 0, 0, ?)", (project, number, name, b""))
        return number

    def _send_new_identities(self, db, project: str, count: int):
        """Takes `count` new identity numbers of the project (_numbers_up_to reads them; their rows are the
        caller's to insert)."""
        return self._run(db, "INSERT INTO projects (project, last_identity) VALUES (?, ?) ON CONFLICT (project) "
                             "DO UPDATE SET last_identity = projects.last_identity + ? RETURNING last_identity",
                         (project, count, count))

    def _insert_face(self, db, project, face: NewFace, identity, descriptor, model_version, confirmed,
                     face_id: int | None = None) -> bool:
        """False when the task already holds a confirmed face under this region id: the annotator's stays.
        face_id: one of _face_ids (a new one when not given)."""
        if face_id is None:
            [face_id] = self._face_ids(db, 1)
        cursor = self._run(db, INSERT_FACE, self._face_row(project, face, identity, descriptor, model_version,
                                                           confirmed, face_id))
        return cursor.rowcount == 1

    @staticmethod
    def _face_row(project, face: NewFace, identity, descriptor, model_version, confirmed, face_id) -> tuple:
        """INSERT_FACE's values."""
        return (project, int(face_id), face.task, face.region, *map(float, face.box), _blob(face.landmarks, np.float32),
                _blob(descriptor, np.float32), int(identity), model_version, confirmed, float(face.quality))

    def _face_ids(self, db, count: int) -> np.ndarray:
        """`count` new face ids, above every id ever handed out. The sequence's row stays locked until the
        transaction ends, so faces become visible in the order of their ids (see vector_index.py); other
        projects' writers wait for it only from here to the commit."""
        return _numbers_up_to(self._send_face_ids(db, count), count)

    def _send_face_ids(self, db, count: int):
        """_face_ids's statement alone, so that it can travel with others (_numbers_up_to reads the ids)."""
        return self._run(db, "INSERT INTO face_sequence (one, last_face, generation) VALUES (1, ?, ?) "
                             "ON CONFLICT (one) DO UPDATE SET last_face = face_sequence.last_face + ? "
                             "RETURNING last_face", (count, uuid.uuid4().hex, count))

    # Nearest faces ----------------------------------------------------------------------------------

    def _match(self, db, project: str, descriptors: np.ndarray, group_of: np.ndarray,
               thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """identities.match_groups against the project's stored faces of the same descriptor size: faces
        described by another model (the project's models changed) cannot be compared with these."""
        index = self._indexes.get(project, descriptors.shape[1])
        held = index.last_id
        index, _ = self._catch_up(db, project, index, self._send_catch_up(db, project, held), held)
        return _vote(*self._neighbours(db, index, descriptors), group_of, thresholds)

    def _neighbours(self, db, index: FaceIndex, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """The NEIGHBOURS nearest faces of each descriptor in the (caught up) index: (Q, k) ids and cosine
        similarities, and who each one is (_looked_up). Faces deleted since the index learned them leave it,
        and the search runs again without them."""
        for _ in range(DELETED_RESEARCHES):
            ids, similarities = index.search(descriptors, NEIGHBOURS)
            found = np.unique(ids[ids >= 0])
            who, _ = self._looked_up(self._send_look_up(db, found))
            if len(who) == len(found):
                break
            index.remove(np.setdiff1d(found, list(who)))
        return ids, similarities, who

    def _send_look_up(self, db, face_ids: np.ndarray, identities: bool = False) -> list:
        """Asks who these faces are, and with `identities` their identities' rows; _looked_up reads the
        answers. By id alone, through its unique index, then the identities' own: a plan that cannot go
        wrong on a project that grew since PostgreSQL last gathered statistics (with `project = ?`, it
        scanned all of a new project's faces)."""
        columns, join = (", i.faces, i.weight, i.descriptor_sum, i.name", " LEFT JOIN identities i ON "
                         "i.project = f.project AND i.identity = f.identity") if identities else ("", "")
        return [self._run(db, f"SELECT f.id, f.identity, f.confirmed, f.quality{columns} FROM faces f{join} WHERE "
                              f"f.id IN ({', '.join('?' * len(chunk))})", chunk)
                for chunk in (face_ids[start:start + LOOKUP_ROWS].tolist()
                              for start in range(0, len(face_ids), LOOKUP_ROWS))]

    @staticmethod
    def _looked_up(sent: list) -> tuple[dict[int, tuple], dict[int, list]]:
        """{face id: (identity, confirmed, quality)} of the faces that exist, and the rows of their identities
        as _identity_rows_from gives them (when asked for)."""
        who, rows = {}, {}
        for cursor in sent:
            for face_id, identity, confirmed, quality, *row in cursor.fetchall():
                who[face_id] = (identity, bool(confirmed), quality)
                if row and row[0] is not None:
                    rows[identity] = row
        return who, rows

    def _send_catch_up(self, db, project: str, above: int):
        """The face numbering's last id and generation, with the project's faces numbered above `above` (the
        last one an index holds), up to that id: one statement, one snapshot of the database, in which every
        face up to that id is visible (vector_index.py). No face ever stored: no row."""
        return self._run(db, "SELECT s.last_face, s.generation, f.id, f.descriptor, f.identity, f.confirmed, f.quality "
                             "FROM face_sequence s LEFT JOIN faces f ON f.project = ? AND f.id > ? AND "
                             "f.id <= s.last_face", (project, int(above)))

    def _catch_up(self, db, project: str, index: FaceIndex, sent, above: int) -> tuple[FaceIndex, tuple | None]:
        """`index` (or the index that replaces it) with every face of its size stored up to now, from the
        answer of _send_catch_up(db, project, above), and the faces of that answer: (ids, (M, D) descriptors,
        who they are as _looked_up says); None when there were more than RECENT_UP_TO or the index was
        replaced. With or without the project's lock held, and with other threads catching up the same
        index: each adds the faces above the last one it holds."""
        first = sent.fetchone()
        if first is None:  # a database that never stored a face: an index read from a file is of another one
            if index.last_id:
                index = self._indexes.fresh(project, index.dim, "")
            return index, (np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32), {})
        last, generation = first[0], first[1]
        replaced = index.generation != generation or index.last_id > last
        if replaced:
            if index.last_id:  # read from a file of another numbering, or one ahead of this database
                logger.warning("face index of project %s is of another face numbering (generation %s, face %d; "
                               "the database: %s, face %d): rebuilding it", project, index.generation or "?",
                               index.last_id, generation, last)
            index = self._indexes.fresh(project, index.dim, generation)
            if above:  # (the numbering as the first answer saw it: this transaction may have taken ids since)
                sent = self._send_catch_up(db, project, 0)
                first = sent.fetchone()
        size = index.dim * 4  # float32 bytes
        recent_ids, recent_vectors, recent_who = [], [], {}
        with index.lock:
            held = index.last_id  # what another thread added meanwhile is not added again
            rows = [first]
            while rows:
                rows = [row for row in rows if row[2] is not None and row[2] <= last and len(row[3]) == size]
                ids = np.array([row[2] for row in rows], dtype=np.int64)
                vectors = np.frombuffer(b"".join(row[3] for row in rows), np.float32).reshape(len(rows), index.dim)
                index.add(ids[ids > held], vectors[ids > held])
                if not replaced and len(recent_who) <= RECENT_UP_TO:
                    recent_ids.append(ids)
                    recent_vectors.append(vectors)
                    recent_who.update((row[2], (row[4], bool(row[5]), row[6])) for row in rows)
                rows = sent.fetchmany(LOOKUP_ROWS)
            index.last_id = max(index.last_id, last)
        self._indexes.used(project, index)
        if replaced or len(recent_who) > RECENT_UP_TO:
            return index, None
        return index, (np.concatenate(recent_ids), np.concatenate(recent_vectors), recent_who)

    def _unindex(self, project: str, face_ids) -> None:
        """Faces this process deleted, once the deletion is committed (before, a rollback would leave the
        index without faces the database still has)."""
        if len(face_ids):
            for index in self._indexes.of_project(project):
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

    def _narrow_sums(self, db) -> None:
        """A store of format 1 kept identity sums as float64: stored as float32 since (SUM_TYPE)."""
        if self._run(db, "SELECT version FROM store_format").fetchall():
            return
        for rows in self._pages(db, "identities", "project, identity", "descriptor_sum"):
            self._many(db, "UPDATE identities SET descriptor_sum = ? WHERE project = ? AND identity = ?",
                       [(_blob(_array(total, np.float64), SUM_TYPE), project, identity)
                        for project, identity, total in rows if total])
        self._run(db, "INSERT INTO store_format (one, version) VALUES (1, 2)")

    def _shift(self, db, project, identities, descriptors, weights, counts, rows: dict | None = None) -> None:
        """Add faces to (positive weights) or take them from (negative) their identities' sums and counts.
        rows: _identity_rows_from's rows of these identities, read in this transaction, when the caller read
        them along with other statements (one round trip less); read here otherwise."""
        identities = np.asarray(identities, dtype=np.int64)
        if len(identities) == 0:
            return
        descriptors = np.asarray(descriptors, dtype=np.float64).reshape(len(identities), -1)
        weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), len(identities))
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), len(identities))
        numbers = np.unique(identities)
        if rows is None:
            rows = self._identity_rows_from(self._send_identity_rows(db, project, numbers.tolist()))
        updates, inserts = [], []
        for identity in numbers.tolist():
            mine = identities == identity
            faces, weight, total, _ = rows.get(identity, (0, 0.0, b"", None))
            total = (sum_array(total) if total else 0.0) + weights[mine] @ descriptors[mine]
            values = (int(faces + counts[mine].sum()), float(weight + weights[mine].sum()), _blob(total, SUM_TYPE))
            if identity in rows:
                updates.append((*values, project, identity))
            else:
                inserts.append((project, identity, *values))
        self._many(db, "UPDATE identities SET faces = ?, weight = ?, descriptor_sum = ? "
                       "WHERE project = ? AND identity = ?", updates)
        self._many(db, "INSERT INTO identities (project, identity, name, faces, weight, descriptor_sum) "
                       "VALUES (?, ?, NULL, ?, ?, ?)", inserts)

    def _send_identity_rows(self, db, project: str, identities: list[int]) -> list:
        """Asks for the identities' rows; _identity_rows_from reads the answers."""
        return [self._run(db, f"SELECT identity, faces, weight, descriptor_sum, name FROM identities WHERE project = ? "
                              f"AND identity IN ({', '.join('?' * len(chunk))})", (project, *chunk))
                for chunk in (identities[start:start + LOOKUP_ROWS]
                              for start in range(0, len(identities), LOOKUP_ROWS))]

    @staticmethod
    def _identity_rows_from(sent: list) -> dict[int, tuple]:
        """{identity: (faces, weight, descriptor_sum, name)} of those that exist."""
        return {identity: rest for cursor in sent for identity, *rest in cursor.fetchall()}

    def _pages(self, db, table: str, keys: str, columns: str, where: str = "", params: tuple = ()):
        """Rows of (*keys, *columns) of `table` (where `where`, with `params`), LOOKUP_ROWS at a time in the
        order of its two `keys`. Each page starts past the last keys read, so a row stored or deleted
        meanwhile is read once or not at all, never twice; and a client that fetches a statement's whole
        result (psycopg) holds one page, not the table."""
        last: tuple = ()
        while True:
            conditions = " AND ".join(c for c in (where, f"({keys}) > (?, ?)" if last else "") if c)
            rows = self._run(db, f"SELECT {keys}, {columns} FROM {table} {'WHERE ' if conditions else ''}"
                                 f"{conditions} ORDER BY {keys} LIMIT ?", (*params, *last, LOOKUP_ROWS)).fetchall()
            if rows:
                yield rows
            if len(rows) < LOOKUP_ROWS:
                return
            last = rows[-1][:2]

    def _face_pages(self, db, project: str, columns: str):
        """The project's faces a page at a time (_pages): rows of (task, region, *columns)."""
        return self._pages(db, "faces", "task, region", columns, "project = ?", (project,))

    def _rebuild_identities(self, db, project: str) -> None:
        """Recompute every identity's count and sum from its faces (after re-clustering moved many), a page
        of faces at a time (10^6 1152-d faces: 4.3 GiB as float32 at once)."""
        faces, weights, totals = {}, {}, {}
        for rows in self._face_pages(db, project, "identity, confirmed, descriptor"):
            page = _descriptor_page(project, [row[4] for row in rows])
            numbers, index = np.unique([row[2] for row in rows], return_inverse=True)
            order = np.argsort(index, kind="stable")
            starts = np.r_[0, np.flatnonzero(np.diff(index[order])) + 1]
            weight = face_weights([bool(row[3]) for row in rows])
            sums = np.add.reduceat(weight[order, None] * page[order].astype(np.float64), starts)
            for number, count, total, summed in zip(numbers.tolist(), np.bincount(index).tolist(),
                                                    np.bincount(index, weight).tolist(), sums):
                faces[number] = faces.get(number, 0) + count
                weights[number] = weights.get(number, 0.0) + total
                # (a copy: a row of `sums` would keep every page's sums in memory, 0.1 GB a page at 1152-d)
                totals[number] = totals[number] + summed if number in totals else summed.copy()
        self._run(db, "UPDATE identities SET faces = 0, weight = 0, descriptor_sum = ? WHERE project = ?",
                  (b"", project))
        numbers = sorted(faces)
        for start in range(0, len(numbers), LOOKUP_ROWS):
            self._many(db, "UPDATE identities SET faces = ?, weight = ?, descriptor_sum = ? "
                           "WHERE project = ? AND identity = ?",
                       [(faces[n], weights[n], _blob(totals[n], SUM_TYPE), project, n)
                        for n in numbers[start:start + LOOKUP_ROWS]])
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


def _vote(ids: np.ndarray, similarities: np.ndarray, who: dict, group_of: np.ndarray,
          thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """identities.match_groups on each face's nearest stored faces: (Q, k) ids (-1: none) and cosine
    similarities, and who they are ({face id: (identity, confirmed, quality)}; a face missing from it
    was deleted, and does not vote)."""
    neighbours = [who.get(face_id, (-1, False, 1.0)) for face_id in ids.ravel().tolist()]
    identities = np.array([n[0] for n in neighbours], dtype=np.int64).reshape(ids.shape)
    weights = vote_weights([n[1] for n in neighbours], [n[2] for n in neighbours]).reshape(ids.shape)
    distances = np.where(identities >= 0, 1.0 - similarities, np.inf)
    return match_groups(group_of, thresholds, identities, weights, distances)


def _with_recent(ids: np.ndarray, similarities: np.ndarray, recent_ids: np.ndarray, recent: np.ndarray,
                 descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest faces among a search's answer, (Q, k) ids and similarities, and faces the searched index
    did not hold yet (recent: their descriptors), compared directly: as if the index had held them. A
    recent face that the index held already (another thread added it before the search) counted there."""
    new = ~np.isin(recent_ids, ids)
    recent_ids, recent = recent_ids[new], recent[new]
    if not len(recent_ids):
        return ids, similarities
    candidates = np.concatenate([ids, np.broadcast_to(recent_ids, (len(ids), len(recent_ids)))], axis=1)
    scores = np.concatenate([similarities, descriptors.astype(np.float32) @ recent.T], axis=1)
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :ids.shape[1]]
    return np.take_along_axis(candidates, nearest, axis=1), np.take_along_axis(scores, nearest, axis=1)


def _numbers_up_to(sent, count: int) -> np.ndarray:
    """The `count` numbers a counter's `... RETURNING last` statement took: the last one and those below."""
    [last] = sent.fetchone()
    return np.arange(last - count + 1, last + 1, dtype=np.int64)


def _blob(array, dtype) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _array(blob, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(blob, dtype=dtype)


def sum_array(blob) -> np.ndarray:
    """An identity's stored descriptor sum, for float64 arithmetic."""
    return _array(blob, SUM_TYPE).astype(np.float64)


def _descriptor_page(project: str, blobs: list, size: int | None = None) -> np.ndarray:
    """(rows, D) float32 of a page's descriptor blobs, all of one size (and of `size` when given)."""
    sizes = {len(blob) for blob in blobs} | ({4 * size} if size is not None else set())
    if len(sizes) > 1:
        raise ValueError(f"project {project} holds descriptors of several sizes: re-cluster it after predicting "
                         "all of its tasks again with one set of descriptor models")
    return _array(b"".join(blobs)).reshape(len(blobs), -1)
