"""Run a pre-annotation run's batches through its Workers: in this process, or on a Ray cluster with Ray Data.

In-process: one Worker (on the caller's AppContext) predicts the source's batches one after the other.
On Ray (RAY_ADDRESS or --ray): the source runs as one Ray task that streams batches into a dataset, and an
actor pool of RAY_ACTORS actors predicts them; each actor builds its AppContext once (models loaded once per
actor) and shares the face store, PostgreSQL, with every other actor and every backend replica. Ray restarts
an actor that dies and gives its batch to it again (the Worker records each task's state, so the batch
costs nothing twice); the driver pushes what comes back.

Ray is an optional extra (requirements-ray.txt): it is imported only when a run asks for it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable, Iterator

from .context import AppContext
from .prelabel import Outcome, PrelabelError, Run, Worker

logger = logging.getLogger(__name__)

Source = Callable[[], Iterator[list[dict]]]  # yields batches of Label Studio tasks (prelabel.ProjectTasks, ImageFiles)


def outcomes(run: Run, source: Source, context: AppContext, ray_address: str = "") -> Iterator[list[Outcome]]:
    """The outcomes of every batch of `source`, batch by batch (in any order on Ray)."""
    if not ray_address:
        worker = Worker(run, context)
        for tasks in source():
            yield worker(tasks)
        return
    yield from _on_ray(run, source, ray_address)


class _Actor:
    """A Ray Data actor: one Worker for the actor's life; each row of a batch is one batch of tasks."""

    def __init__(self, run: Run):
        logging.basicConfig(level=run.settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        self.worker = Worker(run)

    def __call__(self, rows: dict) -> dict:
        return {"outcomes": [json.dumps([o.to_json() for o in self.worker(json.loads(tasks))])
                             for tasks in rows["tasks"]]}


def _read(source: Source):
    """The source as a Ray Data generator: one row per batch of tasks."""
    def read(_rows: dict) -> Iterator[dict]:
        for tasks in source():
            yield {"tasks": [json.dumps(tasks)]}
    return read


def join_cluster(address: str, error: type[Exception]):
    """The ray module, joined to the Ray cluster at `address` (`local`: a new one on this machine); raises
    `error`, the caller's own exception class, saying why when it cannot."""
    try:
        import ray
    except ImportError:
        raise error("Ray is not installed: pip install --no-deps -r requirements-ray.txt "
                    "(on every node of the cluster)") from None
    if ray.is_initialized() and address not in ("local", "auto") and ray.get_runtime_context().gcs_address != address:
        ray.shutdown()  # this process was a driver of another cluster, which ray.init would silently keep using
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as failure:
        raise error(f"cannot join the Ray cluster at {address}: {first_line(failure)}") from None
    return ray


def _on_ray(run: Run, source: Source, address: str) -> Iterator[list[Outcome]]:
    settings = run.settings
    if not settings.database_url:
        raise PrelabelError("on Ray, the actors share the face store: set DATABASE_URL to a PostgreSQL database "
                            "that every node reaches")
    if settings.ray_actor_cpus <= 0:
        raise PrelabelError(f"RAY_ACTOR_CPUS must be above 0, got {settings.ray_actor_cpus}")
    # Paths in the settings mean this machine's working directory; actors run in other directories.
    run = dataclasses.replace(run, settings=dataclasses.replace(
        settings, data_dir=settings.data_dir.resolve(), models_dir=settings.models_dir.resolve()))
    ray = join_cluster(address, PrelabelError)
    import ray.data  # (requirements-ray.txt installs Ray Data's own dependencies)

    # Ray Data logs each dataset's plan and progress at INFO; the run reports its own progress.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    actors = settings.ray_actors or max(1, int(ray.cluster_resources().get("CPU", 1) // settings.ray_actor_cpus))
    logger.info("Ray cluster at %s: %d actors of %s CPUs", address, actors, settings.ray_actor_cpus)
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False
    # Every row (one batch of tasks, or its outcomes) a block of its own: blocks are what Ray Data hands out,
    # so batches go to the actors one by one as they come, and come back as each is done.
    data.target_max_block_size = 1
    threads = str(max(1, int(settings.ray_actor_cpus)))
    dataset = (
        ray.data.from_items([{"source": 0}])
        .map_batches(_read(source), batch_size=1, num_cpus=0)  # paging through Label Studio is waiting, not work
        .map_batches(_Actor, fn_constructor_kwargs={"run": run}, batch_size=1, num_cpus=settings.ray_actor_cpus,
                     compute=ray.data.ActorPoolStrategy(size=actors),
                     runtime_env={"env_vars": {"ORT_THREADS": threads, "OMP_NUM_THREADS": threads}})
    )
    try:
        for row in dataset.iter_rows():
            yield [Outcome(**o) for o in json.loads(row["outcomes"])]
    except PrelabelError:
        raise
    except Exception as error:  # Ray's errors carry the remote traceback: into the log, not the message
        logger.exception("the run failed on Ray")
        raise PrelabelError(f"the run failed on Ray: {first_line(error)} (the log has the details)") from None


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
