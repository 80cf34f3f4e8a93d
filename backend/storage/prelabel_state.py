"""Where each task of a long pre-annotation run stands, so that a run killed at any point resumes where it
stopped (service/prelabel.py runs them: `autoannotator prelabel`, POST /prelabel, `autoannotator annotate`).

One row per (project, model version, task) in the face store's `prelabel_tasks` table:
  predicted  its faces are in the store (FaceStore.assign) and its prediction is kept here, not yet in
             Label Studio (or, for annotate, not needed anywhere else): a resumed run pushes or writes
             this prediction instead of predicting the task again;
  pushed     Label Studio holds the prediction (the kept copy is dropped);
  failed     no prediction, and why (an unreadable image...); the next run tries the task again.
The row is written after FaceStore.assign has committed the task's faces: a run killed in between predicts
the task again, and assign replaces a task's earlier faces, so no face is stored twice.

Only one run per project at a time (`exclusive`): two would push the same tasks twice. The hold is one the
operating system or the database server ends when its holder dies, so a killed run is resumed at once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .dialects import PostgreSQLDialect, _lock_number
from .faces import LOOKUP_ROWS, FaceStore

PREDICTED, PUSHED, FAILED = "predicted", "pushed", "failed"

# A run's hold on a PostgreSQL project ends when its connection does. When the machine running it dies, no
# FIN arrives: the server's TCP keepalive finds the dead peer after about idle + interval * count seconds.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


class RunInProgress(RuntimeError):
    """Another run holds the project."""


@dataclass
class TaskState:
    status: str  # PREDICTED, PUSHED or FAILED
    prediction: dict | None  # kept while PREDICTED
    reason: str | None  # why, when FAILED


class PrelabelState:
    """The prelabel_tasks table of a FaceStore. It shares the store's connections (one per thread)."""

    def __init__(self, store: FaceStore):
        self.store = store

    def states(self, project: str, model_version: str, tasks: list[str]) -> dict[str, TaskState]:
        """The recorded state of those of `tasks` that have one."""
        found = {}
        for start in range(0, len(tasks), LOOKUP_ROWS):
            chunk = tasks[start:start + LOOKUP_ROWS]
            marks = ", ".join("?" * len(chunk))
            rows = self.store._run(
                self.store._connection(),
                f"SELECT task, status, prediction, reason FROM prelabel_tasks WHERE project = ? AND model_version = ? "
                f"AND task IN ({marks})", (project, model_version, *chunk)).fetchall()
            found.update({task: TaskState(status, json.loads(prediction) if prediction else None, reason)
                          for task, status, prediction, reason in rows})
        return found

    def record(self, project: str, model_version: str, predicted: dict[str, dict], failed: dict[str, str]) -> None:
        """predicted: {task: its prediction}; failed: {task: why it has none}. One transaction."""
        now = time.time()
        rows = ([(project, model_version, task, PREDICTED, json.dumps(p), None, now) for task, p in predicted.items()]
                + [(project, model_version, task, FAILED, None, reason, now) for task, reason in failed.items()])
        self._upsert(project, rows)

    def mark_pushed(self, project: str, model_version: str, tasks: list[str]) -> None:
        """Label Studio holds these tasks' predictions now: their kept copies go."""
        now = time.time()
        self._upsert(project, [(project, model_version, task, PUSHED, None, None, now) for task in tasks])

    def _upsert(self, project: str, rows: list[tuple]) -> None:
        if not rows:
            return
        with self.store._locked(f"prelabel:{project}") as db:
            self.store._many(db, "INSERT INTO prelabel_tasks (project, model_version, task, status, prediction, "
                                 "reason, updated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, model_version, "
                                 "task) DO UPDATE SET status = excluded.status, prediction = excluded.prediction, "
                                 "reason = excluded.reason, updated = excluded.updated", rows)

    @contextmanager
    def exclusive(self, project: str):
        """Hold the project for one run; RunInProgress when another run (any process, any replica) holds it.

        PostgreSQL: a session advisory lock on a connection of its own, which the server drops with the
        connection. SQLite (one machine): an flock on a file beside the database, which the kernel drops with
        the process.
        """
        release = self._hold(project)
        try:
            yield
        finally:
            release()

    def _hold(self, project: str):
        name = f"prelabel-run:{project}"
        dialect = self.store.dialect
        if isinstance(dialect, PostgreSQLDialect):
            connection = dialect.psycopg.connect(
                dialect.url, autocommit=True, keepalives=1, keepalives_idle=KEEPALIVE_IDLE,
                keepalives_interval=KEEPALIVE_INTERVAL, keepalives_count=KEEPALIVE_COUNT)
            # The server's side of the keepalive: it is the server that must notice a dead client.
            for setting, value in (("tcp_keepalives_idle", KEEPALIVE_IDLE),
                                   ("tcp_keepalives_interval", KEEPALIVE_INTERVAL),
                                   ("tcp_keepalives_count", KEEPALIVE_COUNT)):
                connection.execute(f"SET {setting} = {int(value)}")
            [(held,)] = connection.execute("SELECT pg_try_advisory_lock(%s)", (_lock_number(name),)).fetchall()
            if not held:
                connection.close()
                raise RunInProgress(f"project {project} is being pre-annotated by another run")
            return connection.close
        digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        descriptor = os.open(f"{dialect.path}.{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise RunInProgress(f"project {project} is being pre-annotated by another run") from None
        return lambda: os.close(descriptor)
