"""The identity review page's side of the face store: what the page shows, and the corrections a lead
annotator makes there (rename, merge, move, reject), each in one transaction, each undoable.

Certainty of an identity, by which the page orders them (least certain first): the weighted mean cosine
similarity of its faces to its centroid, confirmed faces weighing CONFIRMED_WEIGHT as they do in the
centroid. The centroid is the direction of the weighted sum S of the faces' unit descriptors, so that mean
is |S| / (sum of the weights): the identities table alone gives it, without reading a face, which keeps
the page fast on a project of 100k faces. It is 1 for a single face and falls as faces spread, as they do
when two people share one id. Within an identity the page shows its faces least similar first: the likely
mistakes.

Every operation confirms the faces it acts on, as an annotator's correction does (they weigh
CONFIRMED_WEIGHT and re-clustering leaves them where they are), and writes a review_log entry with the
identity and confirmation of each face it changed, before and after, the whole row of each face it removed,
and the names of the identities involved, before and after. undo() puts all of that back in one transaction,
and refuses (ReviewError 409) when any of it changed since: it never overwrites a later correction.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from .faces import PERSON_ID, FaceStore, NewFace, _array, _blob, display_id, sum_array
from .identities import CONFIRMED_WEIGHT, face_weights

FaceKey = tuple[str, str]  # (task, region): a face in the store
NOT_A_FACE, NOT_THIS_PERSON = "not_a_face", "not_this_person"  # the reasons reject() takes
# A face's thumbnail: the square around its box, this much wider than the box's longer side (the whole head).
THUMBNAIL_MARGIN = 1.25
THUMBNAIL_QUALITY = 85  # JPEG quality: about 2 KB for 64 px


class ReviewError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status  # the HTTP status the review page answers with


@dataclass
class ReviewFace:
    task: str
    region: str
    similarity: float  # cosine similarity to its identity's centroid
    confirmed: bool
    thumbnail: bool  # whether the store holds a thumbnail of it


@dataclass
class ReviewIdentity:
    identity: int
    name: str | None
    faces: int
    confirmed: int  # how many of its faces are confirmed
    certainty: float  # see the module docstring
    shown: list[ReviewFace] = field(default_factory=list)  # least similar first
    nearest: tuple[int, str, float] | None = None  # the closest other identity: number, display id, cosine distance

    @property
    def display(self) -> str:
        return display_id(self.identity, self.name)


@dataclass
class IdentityPage:
    identities: list[ReviewIdentity]
    total: int  # identities in the project
    faces: int  # faces in the project


@dataclass
class Change:
    """What an operation (or its undo) did: its review_log entry, and the Label Studio tasks it concerns."""

    entry: int
    operation: str
    summary: str
    tasks: list[str]
    removed: list[FaceKey]  # faces that left the store
    restored: list[FaceKey]  # faces that came back to it (an undone rejection)


@dataclass
class LogEntry:
    entry: int
    operation: str
    summary: str
    undone: bool
    created: float


@dataclass
class _Face:
    """A face as the operations read it."""

    task: str
    region: str
    identity: int
    confirmed: bool
    descriptor: np.ndarray


# What the page shows ------------------------------------------------------------------------------

def identity_page(store: FaceStore, project: str, offset: int, limit: int, faces_each: int) -> IdentityPage:
    """The project's identities from `offset`, least certain first, `limit` of them, each with its
    `faces_each` least typical faces and its nearest other identity."""
    identities = _Identities.read(store, project)
    page = identities.order[offset: offset + limit]
    faces = _faces_of(store, project, identities.numbers[page].tolist())
    rows = []
    for index in page:
        row = identities.row(index)
        row.shown = identities.typical_last(index, faces.get(row.identity, []))[:faces_each]
        row.nearest = identities.nearest(index)
        rows.append(row)
    return IdentityPage(rows, len(identities.numbers), int(identities.counts.sum()))


def identity_faces(store: FaceStore, project: str, identity: int, offset: int, limit: int) -> ReviewIdentity:
    """One identity with its faces from `offset`, least typical first, `limit` of them."""
    identities = _Identities.read(store, project)
    found = np.flatnonzero(identities.numbers == identity)
    if len(found) == 0:
        raise ReviewError(f"project {project} has no identity {identity}", 404)
    index = found[0]
    row = identities.row(index)
    row.shown = identities.typical_last(index, _faces_of(store, project, [identity]).get(identity, []))
    row.shown = row.shown[offset: offset + limit]
    row.nearest = identities.nearest(index)
    return row


@dataclass
class _Identities:
    """All identities of a project as parallel arrays, in the page's order."""

    numbers: np.ndarray
    names: list
    counts: np.ndarray
    weights: np.ndarray
    sums: list  # weighted descriptor sums: descriptors of another model (a project whose models changed) differ in length
    norms: np.ndarray  # the sums' lengths
    units: dict  # descriptor length -> (indices of the identities described so, their unit centroids)
    order: np.ndarray  # least certain first, then the larger, then by number

    @classmethod
    def read(cls, store: FaceStore, project: str) -> "_Identities":
        rows = store._run(store._connection(), "SELECT identity, name, faces, weight, descriptor_sum FROM identities "
                                               "WHERE project = ?", (project,)).fetchall()
        numbers = np.array([r[0] for r in rows], dtype=np.int64)
        counts = np.array([r[2] for r in rows], dtype=np.int64)
        weights = np.array([r[3] for r in rows], dtype=np.float64)
        sums = [sum_array(r[4]) for r in rows]
        lengths = np.array([len(total) for total in sums], dtype=np.int64)
        norms, units = np.zeros(len(sums)), {}
        for length in np.unique(lengths):
            members = np.flatnonzero(lengths == length)
            matrix = np.stack([sums[i] for i in members])
            norms[members] = np.linalg.norm(matrix, axis=1)
            units[int(length)] = members, matrix / np.maximum(norms[members], 1e-12)[:, None]
        certainty = norms / np.maximum(weights, 1e-12)
        return cls(numbers, [r[1] for r in rows], counts, weights, sums, norms, units,
                   np.lexsort((numbers, -counts, certainty)))

    def row(self, index) -> ReviewIdentity:
        confirmed = round((self.weights[index] - self.counts[index]) / (CONFIRMED_WEIGHT - 1))  # weight = n + 3 * confirmed
        return ReviewIdentity(int(self.numbers[index]), self.names[index], int(self.counts[index]), int(confirmed),
                              float(self.norms[index] / max(self.weights[index], 1e-12)))

    def centroid(self, index) -> np.ndarray:
        return self.sums[index] / max(self.norms[index], 1e-12)

    def typical_last(self, index, faces: list[tuple]) -> list[ReviewFace]:
        """faces: (task, region, confirmed, descriptor, thumbnail) of this identity -> least similar first."""
        centroid = self.centroid(index)
        shown = [ReviewFace(task, region, float(descriptor @ centroid) if len(descriptor) == len(centroid) else 0.0,
                            confirmed, thumbnail) for task, region, confirmed, descriptor, thumbnail in faces]
        return sorted(shown, key=lambda face: (face.similarity, face.task, face.region))

    def nearest(self, index) -> tuple[int, str, float] | None:
        """The identity whose centroid is closest to this one's, among those described by the same model."""
        same, units = self.units[len(self.sums[index])]
        if len(same) < 2:
            return None
        similarity = units @ self.centroid(index)
        similarity[same == index] = -np.inf
        best = int(np.argmax(similarity))
        number = int(self.numbers[same[best]])
        return number, display_id(number, self.names[same[best]]), float(1 - similarity[best])


def _faces_of(store: FaceStore, project: str, identities: list[int]) -> dict[int, list[tuple]]:
    if not identities:
        return {}
    marks = ", ".join("?" * len(identities))
    rows = store._run(
        store._connection(),
        f"SELECT f.identity, f.task, f.region, f.confirmed, f.descriptor, t.region IS NOT NULL FROM faces f "
        f"LEFT JOIN thumbnails t ON t.project = f.project AND t.task = f.task AND t.region = f.region "
        f"WHERE f.project = ? AND f.identity IN ({marks})", (project, *identities)).fetchall()
    faces: dict[int, list[tuple]] = {}
    for identity, task, region, confirmed, descriptor, thumbnail in rows:
        faces.setdefault(identity, []).append((task, region, bool(confirmed), _array(descriptor).astype(np.float64),
                                               bool(thumbnail)))
    return faces


def find_identity(store: FaceStore, project: str, text: str) -> int:
    """The identity someone means by `text`: its name, person_<number>, or its number."""
    text = text.strip()
    named = store._run(store._connection(), "SELECT identity FROM identities WHERE project = ? AND name = ?",
                       (project, text)).fetchone()
    if named:
        return named[0]
    person = PERSON_ID.fullmatch(text)
    number = int(person.group(1)) if person else int(text) if text.isdigit() else None
    if number is not None and store._run(store._connection(), "SELECT 1 FROM identities WHERE project = ? "
                                                              "AND identity = ?", (project, number)).fetchone():
        return number
    raise ReviewError(f"project {project} has no identity {text!r}", 404)


def history(store: FaceStore, project: str, limit: int) -> list[LogEntry]:
    """The project's latest review operations, newest first."""
    rows = store._run(store._connection(), "SELECT entry, operation, summary, undone, created FROM review_log "
                                           "WHERE project = ? ORDER BY entry DESC LIMIT ?", (project, limit)).fetchall()
    return [LogEntry(entry, operation, summary, bool(undone), created)
            for entry, operation, summary, undone, created in rows]


# Thumbnails ---------------------------------------------------------------------------------------

def face_thumbnails(pixels: np.ndarray, boxes: np.ndarray, size: int) -> list[bytes]:
    """A size x size JPEG of each face box (pixels of `pixels`, an RGB image): the square around the box,
    THUMBNAIL_MARGIN times its longer side, black where it leaves the image."""
    height, width = pixels.shape[:2]
    thumbnails = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        side = max(int(round(max(x2 - x1, y2 - y1) * THUMBNAIL_MARGIN)), 1)
        left, top = int(round((x1 + x2 - side) / 2)), int(round((y1 + y2 - side) / 2))
        inside = pixels[max(top, 0): max(min(top + side, height), 0), max(left, 0): max(min(left + side, width), 0)]
        square = np.zeros((side, side, 3), np.uint8)
        if inside.size:
            square[max(-top, 0): max(-top, 0) + inside.shape[0], max(-left, 0): max(-left, 0) + inside.shape[1]] = inside
        small = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
        thumbnails.append(jpeg.tobytes())
    return thumbnails


def save_thumbnails(store: FaceStore, project: str, thumbnails: dict[FaceKey, bytes]) -> None:
    """Keep the thumbnails of a request's faces (after FaceStore.assign stored them). A confirmed face keeps
    the thumbnail it has: a task predicted again keeps its confirmed faces. The thumbnails of faces that
    these tasks no longer have (a task predicted again can find fewer) go."""
    if not thumbnails:
        return
    tasks = sorted({task for task, _ in thumbnails})
    marks = ", ".join("?" * len(tasks))
    with store._locked(f"project:{project}") as db:
        store._many(db, "INSERT INTO thumbnails (project, task, region, jpeg) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (project, task, region) DO UPDATE SET jpeg = excluded.jpeg WHERE NOT EXISTS "
                        "(SELECT 1 FROM faces f WHERE f.project = thumbnails.project AND f.task = thumbnails.task "
                        "AND f.region = thumbnails.region AND f.confirmed)",
                    [(project, task, region, jpeg) for (task, region), jpeg in thumbnails.items()])
        store._run(db, f"DELETE FROM thumbnails WHERE project = ? AND task IN ({marks}) AND NOT EXISTS "
                       f"(SELECT 1 FROM faces f WHERE f.project = thumbnails.project AND f.task = thumbnails.task "
                       f"AND f.region = thumbnails.region)", (project, *tasks))


def thumbnail(store: FaceStore, project: str, task: str, region: str) -> bytes | None:
    row = store._run(store._connection(), "SELECT jpeg FROM thumbnails WHERE project = ? AND task = ? AND region = ?",
                     (project, task, region)).fetchone()
    return bytes(row[0]) if row else None


# Operations ---------------------------------------------------------------------------------------

def rename(store: FaceStore, project: str, identity: int, name: str | None) -> Change:
    """Give an identity a name (an empty one takes its name away: it is shown as person_<number> again)."""
    name = (name or "").strip() or None
    with store._locked(f"project:{project}") as db:
        current = _existing_names(store, db, project, [identity])[identity]
        person = PERSON_ID.fullmatch(name or "")
        if person and int(person.group(1)) != identity:
            raise ReviewError(f"{name!r} is how identity {person.group(1)} is shown: choose another name")
        name = None if person else name
        if name is not None:
            other = store._run(db, "SELECT identity FROM identities WHERE project = ? AND name = ? AND identity <> ?",
                               (project, name, identity)).fetchone()
            if other:
                raise ReviewError(f"{name!r} is already the name of another identity (number {other[0]}): "
                                  "merge the two instead", 409)
        summary = f"renamed {display_id(identity, current)} to {display_id(identity, name)}"
        faces = _faces_where(store, db, project, "identity = ?", (identity,))
        return _change(store, db, project, "rename", summary, faces, [identity] * len(faces), names={identity: name})


def merge(store: FaceStore, project: str, identities: list[int], into: int) -> Change:
    """All faces of `identities` join `into`, which keeps its number and its name (or takes the name of the
    first of them that has one)."""
    sources = sorted(set(identities) - {into})
    if not sources:
        raise ReviewError("merge needs an identity to merge besides the one merged into")
    with store._locked(f"project:{project}") as db:
        names = _existing_names(store, db, project, [into, *sources])
        faces = _faces_where(store, db, project, f"identity IN ({', '.join('?' * (len(sources) + 1))})",
                             (into, *sources))
        name = names[into] or next((names[s] for s in sources if names[s]), None)
        summary = (f"merged {', '.join(display_id(s, names[s]) for s in sources)} into {display_id(into, names[into])}"
                   + (f" (now {name})" if name != names[into] else ""))
        return _change(store, db, project, "merge", summary, faces, [into] * len(faces), names={into: name})


def move(store: FaceStore, project: str, faces: list[FaceKey], to: int | None) -> Change:
    """Faces move to identity `to`, or to a new identity of their own when `to` is None."""
    with store._locked(f"project:{project}") as db:
        rows = _faces_by_key(store, db, project, faces)
        if to is None:
            to = store._new_identity(db, project)
            target = f"a new identity, {display_id(to, None)}"
        else:
            target = display_id(to, _existing_names(store, db, project, [to])[to])
        summary = f"moved {_count(rows)} from {_identities_of(store, db, project, rows)} to {target}"
        return _change(store, db, project, "move", summary, rows, [to] * len(rows))


def reject(store: FaceStore, project: str, faces: list[FaceKey], reason: str) -> Change:
    """NOT_A_FACE: the faces leave the store (and Label Studio's predictions). NOT_THIS_PERSON: each face
    leaves its identity for a new identity of its own."""
    if reason not in (NOT_A_FACE, NOT_THIS_PERSON):
        raise ReviewError(f"a rejection's reason is {NOT_A_FACE!r} or {NOT_THIS_PERSON!r}, got {reason!r}")
    with store._locked(f"project:{project}") as db:
        rows = _faces_by_key(store, db, project, faces)
        source = _identities_of(store, db, project, rows)
        if reason == NOT_A_FACE:
            return _change(store, db, project, "reject", f"rejected {_count(rows)} of {source}: not a face",
                           [], [], removed=rows)
        targets = [store._new_identity(db, project) for _ in rows]
        return _change(store, db, project, "reject", f"rejected {_count(rows)} of {source}: not this person "
                                                     f"(now {', '.join(display_id(t, None) for t in targets)})",
                       rows, targets)


def undo(store: FaceStore, project: str, entry: int) -> Change:
    """Put back what review_log entry `entry` changed, unless any of it changed since."""
    with store._locked(f"project:{project}") as db:
        row = store._run(db, "SELECT operation, summary, changes, undone FROM review_log WHERE project = ? AND entry = ?",
                         (project, entry)).fetchone()
        if row is None:
            raise ReviewError(f"project {project} has no review operation {entry}", 404)
        operation, summary, changes, undone = row
        if undone:
            raise ReviewError(f"operation {entry} ({summary}) is undone already", 409)
        changes = json.loads(changes)
        moved = changes["faces"]
        current = [_faces_where(store, db, project, "task = ? AND region = ?", (task, region))
                   for task, region, *_ in moved]
        changed_since = [f"{task}/{region}" for now, (task, region, _, _, identity, confirmed) in zip(current, moved)
                         if [(f.identity, f.confirmed) for f in now] != [(identity, confirmed)]]
        changed_since += [f"{task}/{region}" for task, region, *_ in changes["removed"]
                          if _faces_where(store, db, project, "task = ? AND region = ?", (task, region))]
        names = _names(store, db, project, [identity for identity, _, _ in changes["names"]])
        changed_since += [f"the name of identity {identity}" for identity, _, after in changes["names"]
                          if names[identity] != after]
        if changed_since:
            raise ReviewError(f"cannot undo {summary!r}: changed since by another correction or prediction: "
                              f"{', '.join(changed_since[:5])}{' ...' if len(changed_since) > 5 else ''}", 409)
        current = [face for [face] in current]
        _move(store, db, project, current, [before for _, _, before, *_ in moved],
              [confirmed for _, _, _, confirmed, _, _ in moved])
        restored = []
        for task, region, box, landmarks, descriptor, identity, model_version, confirmed in changes["removed"]:
            descriptor = _array(base64.b64decode(descriptor))
            face = NewFace(task, region, np.array(box), _array(base64.b64decode(landmarks)).reshape(5, 2), descriptor, 0)
            store._insert_face(db, project, face, identity, descriptor, model_version, confirmed)
            store._shift(db, project, [identity], [descriptor], weights=face_weights(confirmed), counts=1)
            restored.append((task, region))
        _set_names(store, db, project, {identity: before for identity, before, _ in changes["names"]})
        store._drop_empty_identities(db, project)
        store._run(db, "UPDATE review_log SET undone = ? WHERE project = ? AND entry = ?", (True, project, entry))
    tasks = sorted({task for task, *_ in moved} | {task for task, *_ in changes["removed"]})
    return Change(entry, f"undo {operation}", f"undid: {summary}", tasks, [], restored)


def record_removed(store: FaceStore, project: str, entry: int, items: dict[str, list[dict]]) -> None:
    """Keep the prediction regions that Label Studio lost with a rejection (task -> result items), for undo."""
    store._run(store._connection(), "UPDATE review_log SET removed = ? WHERE project = ? AND entry = ?",
               (json.dumps(items), project, entry))


def removed_items(store: FaceStore, project: str, entry: int) -> dict[str, list[dict]]:
    row = store._run(store._connection(), "SELECT removed FROM review_log WHERE project = ? AND entry = ?",
                     (project, entry)).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


# Plumbing -----------------------------------------------------------------------------------------

def _change(store: FaceStore, db, project: str, operation: str, summary: str, faces: list[_Face],
            targets: list[int], names: dict[int, str | None] | None = None, removed: list[_Face] = ()) -> Change:
    """Apply and log an operation: `faces` go to `targets` (one each), confirmed; `removed` faces leave the
    store; identities get `names`. Runs inside the caller's transaction."""
    names = names or {}
    involved = sorted({f.identity for f in [*faces, *removed]} | set(targets) | set(names))
    names_before = _names(store, db, project, involved)
    removed_rows = [_full_row(store, db, project, face) for face in removed]
    _move(store, db, project, faces, targets, [True] * len(faces))
    if removed:
        store._shift(db, project, [f.identity for f in removed], [f.descriptor for f in removed],
                     weights=-face_weights([f.confirmed for f in removed]), counts=-1)
        store._many(db, "DELETE FROM faces WHERE project = ? AND task = ? AND region = ?",
                    [(project, f.task, f.region) for f in removed])
    store._drop_empty_identities(db, project)
    _set_names(store, db, project, names)
    names_after = _names(store, db, project, involved)
    changes = {
        "faces": [[f.task, f.region, f.identity, f.confirmed, int(t), True] for f, t in zip(faces, targets)],
        "removed": removed_rows,
        "names": [[i, names_before[i], names_after[i]] for i in involved if names_before[i] != names_after[i]],
    }
    [(entry,)] = store._run(db, "SELECT COALESCE(MAX(entry), 0) + 1 FROM review_log WHERE project = ?",
                            (project,)).fetchall()
    store._run(db, "INSERT INTO review_log (project, entry, operation, summary, changes, removed, undone, created) "
                   "VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
               (project, entry, operation, summary, json.dumps(changes), False, time.time()))
    tasks = sorted({f.task for f in [*faces, *removed]})
    return Change(entry, operation, summary, tasks, [(f.task, f.region) for f in removed], [])


def _move(store: FaceStore, db, project: str, faces: list[_Face], targets: list[int], confirmed: list[bool]) -> None:
    if not faces:
        return
    descriptors = np.stack([f.descriptor for f in faces])
    store._shift(db, project, [f.identity for f in faces], descriptors,
                 weights=-face_weights([f.confirmed for f in faces]), counts=-1)
    store._shift(db, project, targets, descriptors, weights=face_weights(confirmed), counts=1)
    store._many(db, "UPDATE faces SET identity = ?, confirmed = ? WHERE project = ? AND task = ? AND region = ?",
                [(int(t), bool(c), project, f.task, f.region) for f, t, c in zip(faces, targets, confirmed)])


def _set_names(store: FaceStore, db, project: str, names: dict[int, str | None]) -> None:
    """Names are unique in a project: all are taken away before any is given, so that two identities
    can trade them (an undone merge gives the name back to the identity it came from)."""
    store._many(db, "UPDATE identities SET name = NULL WHERE project = ? AND identity = ?",
                [(project, identity) for identity in names])
    store._many(db, "UPDATE identities SET name = ? WHERE project = ? AND identity = ?",
                [(name, project, identity) for identity, name in names.items() if name is not None])


def _names(store: FaceStore, db, project: str, identities: list[int]) -> dict[int, str | None]:
    """Each identity's name; None also for an identity that does not exist (any more)."""
    if not identities:
        return {}
    marks = ", ".join("?" * len(identities))
    found = dict(store._run(db, f"SELECT identity, name FROM identities WHERE project = ? AND identity IN ({marks})",
                            (project, *identities)).fetchall())
    return {identity: found.get(identity) for identity in identities}


def _existing_names(store: FaceStore, db, project: str, identities: list[int]) -> dict[int, str | None]:
    marks = ", ".join("?" * len(identities))
    found = dict(store._run(db, f"SELECT identity, name FROM identities WHERE project = ? AND identity IN ({marks})",
                            (project, *identities)).fetchall())
    missing = [str(i) for i in identities if i not in found]
    if missing:
        raise ReviewError(f"project {project} has no identity {', '.join(missing)}", 404)
    return found


def _faces_where(store: FaceStore, db, project: str, condition: str, params: tuple) -> list[_Face]:
    rows = store._run(db, f"SELECT task, region, identity, confirmed, descriptor FROM faces WHERE project = ? "
                          f"AND {condition} ORDER BY task, region", (project, *params)).fetchall()
    return [_Face(task, region, identity, bool(confirmed), _array(descriptor))
            for task, region, identity, confirmed, descriptor in rows]


def _faces_by_key(store: FaceStore, db, project: str, keys: list[FaceKey]) -> list[_Face]:
    faces = []
    for task, region in dict.fromkeys(keys):
        found = _faces_where(store, db, project, "task = ? AND region = ?", (task, region))
        if not found:
            raise ReviewError(f"project {project} has no face {region} in task {task}", 404)
        faces += found
    if not faces:
        raise ReviewError("no face given")
    return faces


def _full_row(store: FaceStore, db, project: str, face: _Face) -> list:
    """Everything the store knows of a face, as JSON values, to put it back on undo."""
    x1, y1, x2, y2, landmarks, model_version = store._run(
        db, "SELECT x1, y1, x2, y2, landmarks, model_version FROM faces WHERE project = ? AND task = ? AND region = ?",
        (project, face.task, face.region)).fetchone()
    return [face.task, face.region, [x1, y1, x2, y2], base64.b64encode(bytes(landmarks)).decode(),
            base64.b64encode(_blob(face.descriptor, np.float32)).decode(), face.identity, model_version, face.confirmed]


def _identities_of(store: FaceStore, db, project: str, faces: list[_Face]) -> str:
    names = _names(store, db, project, sorted({f.identity for f in faces}))
    return ", ".join(display_id(identity, name) for identity, name in names.items())


def _count(faces: list) -> str:
    return f"{len(faces)} face{'s' if len(faces) != 1 else ''}"
