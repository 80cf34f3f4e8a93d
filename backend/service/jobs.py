"""A project's background jobs (re-clustering, pre-annotation): a thread that keeps the job's row in the face
store up to date, so that any worker or replica answers for it, with a heartbeat so that a job whose worker
died reads as failed (FaceStore.job) instead of running for ever."""
from __future__ import annotations

import logging
import threading
from typing import Callable

from ..storage import FaceStore

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5  # well under FaceStore's JOB_STALE_SECONDS

Progress = Callable[[float, str], None]  # (fraction done, what is being done)


def start(store: FaceStore, kind: str, job: str, project: str, work: Callable[[Progress], dict],
          expected: tuple[type[Exception], ...] = ()) -> None:
    """Run work(progress) -> result in a background thread as job `job` of `project`. An `expected` error
    fails the job with its message alone; any other with its type, and its traceback goes to the log."""
    threading.Thread(target=run, args=(store, kind, job, project, work, expected), name=f"{kind}-{job}",
                     daemon=True).start()


def run(store: FaceStore, kind: str, job: str, project: str, work: Callable[[Progress], dict],
        expected: tuple[type[Exception], ...] = ()) -> None:
    """start's job, on this thread: returns when it has ended (its status and result are the store's)."""
    shown = {"progress": -1.0, "stage": ""}
    finished = threading.Event()

    def heartbeat():
        while not finished.wait(HEARTBEAT_SECONDS):
            store.job_alive(job)

    def progress(fraction: float, stage: str) -> None:
        if fraction - shown["progress"] >= 0.01 or stage != shown["stage"]:  # a database write per percent
            shown.update(progress=fraction, stage=stage)
            store.update_job(job, "running", fraction, stage)

    threading.Thread(target=heartbeat, name=f"{kind}-{job}-heartbeat", daemon=True).start()
    try:
        result = work(progress)
    except expected as error:
        store.update_job(job, "failed", max(shown["progress"], 0.0), str(error))
        return
    except Exception as error:  # the job's status is the only place anyone will look
        logger.exception("%s job %s (project %s) failed", kind, job, project)
        store.update_job(job, "failed", max(shown["progress"], 0.0), f"{type(error).__name__}: {error}")
        return
    finally:
        finished.set()
    logger.info("%s job %s (project %s): %s", kind, job, project,
                {key: value for key, value in result.items() if key != "failures"})
    store.update_job(job, "done", 1.0, "done", result)
