"""Re-clustering on a Ray cluster (RAY_ADDRESS or `autoannotator recluster --ray`): the Executor that runs the
shards of storage.identities.cluster_project as Ray tasks.

The driver (the command, or the backend running the job) reads the project's faces, builds the index of the
nearest-neighbour graph, links the faces into groups and writes the result; the shards, the graph search
for each SHARD_FACES faces and the average linkage of the groups of each SHARD_FACES faces, are tasks of one
CPU on the cluster's workers. What they all read (the descriptors, the index) goes into Ray's object store
once. A shard is a function of its input alone: Ray runs the task of a worker that died again, and the
labels are those of a run in this process. Workers need the code and packages, no settings: they reach
neither the face store nor Label Studio.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

from .ray_pipeline import first_line, join_cluster
from .recluster import ReclusterError

logger = logging.getLogger(__name__)


class RayExecutor:
    def __init__(self, address: str):
        self.ray = join_cluster(address, ReclusterError)
        logger.info("re-clustering on the Ray cluster at %s (%g CPUs)", address,
                    self.ray.cluster_resources().get("CPU", 0))

    def map(self, function: Callable, shared: tuple, items: Sequence) -> Iterator:
        ray = self.ray
        task = ray.remote(num_cpus=1)(function)
        shared_refs = [ray.put(value) for value in shared]
        pending = [task.remote(*shared_refs, item) for item in items]
        read = 0
        try:
            for result in pending:
                value = ray.get(result)
                read += 1
                yield value
        except Exception as error:  # Ray's errors carry the remote traceback: into the log, not the message
            logger.exception("re-clustering failed on Ray")
            raise ReclusterError(f"re-clustering failed on Ray: {first_line(error)} (the log has the details)") \
                from None
        finally:
            # Failed, or the caller stopped: the shards not read yet are of no use. Never those read: Ray 2.60
            # aborts the driver (TaskManager::CompletePendingTask, "task that was not pending") when a task is
            # cancelled while the reply whose result ray.get has just returned is still being processed.
            for result in pending[read:]:
                ray.cancel(result)
