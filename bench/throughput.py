"""Throughput of the served backend with 1, 2 and 4 gunicorn workers.

    python -m bench.throughput [--workers 1 2 4] [--requests 28] [--concurrency 4] [--rounds 2]

For each worker count (in every round; the second round runs them in reverse order, so that a change in
the machine's other load shows up as a difference between rounds rather than between worker counts): starts `python -m backend.cli serve` with WORKERS=n on a free loopback port, waits
until every worker has loaded its models, sends --requests /predict requests (one photo of tests/data/photos
each, as a local file path) from a pool of --concurrency threads, and stops the server.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from backend.config import REPO_ROOT, Settings

from .common import machine, markdown_table, photos, write_results

STARTUP_TIMEOUT = 300  # seconds for all workers to load their models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=28, help="timed requests per worker count (default 28)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="times to measure each worker count (default 2)")
    args = parser.parse_args()
    machine_line = machine()
    config = (REPO_ROOT / "label_config.xml").read_text()
    bodies = [{"tasks": [{"id": i, "data": {"image": str(p)}}], "label_config": config, "project": "1.1"}
              for i, p in enumerate(photos())]
    rows = []
    for round_number in range(1, args.rounds + 1):
        for workers in args.workers if round_number % 2 else args.workers[::-1]:
            rows.append([round_number, *_measure(workers, bodies, args.requests, args.concurrency)])
    rows.sort(key=lambda row: (row[1], row[0]))
    sections = [
        f"Shipped configuration (preset {Settings().model_preset}, flip TTA on), one photo per /predict request, "
        f"cycling through the 7 photos of tests/data/photos; a pool of {args.concurrency} client threads on "
        "loopback. The machine is shared with other jobs, so the numbers move by up to a third between runs: "
        "compare the two rounds.",
        markdown_table(["round", "workers", "threads per worker", "concurrent requests", "requests", "images per second",
                        "latency p50 (s)", "latency p95 (s)", "server memory (MiB, all processes)",
                        "startup (s)"], rows),
        "Each worker is a process with its own copy of the models (see the memory column). Within a worker "
        "a lock runs one image at a time through the models (LiteRT and dlib are not thread-safe), and the "
        "dlib detectors use a single core, so another worker can fill a core the first leaves idle. With "
        f"{os.cpu_count()} cores, workers beyond that can only fill such gaps, at the memory cost shown.",
    ]
    write_results("throughput", "Service throughput by gunicorn workers", machine_line, sections)


def _measure(workers: int, bodies: list[dict], requests_count: int, concurrency: int) -> list:
    with Server(workers) as server:
        _send(server.url, bodies[:concurrency], concurrency)  # every worker's first request is slow
        started = time.perf_counter()
        latencies = _send(server.url, [bodies[i % len(bodies)] for i in range(requests_count)], concurrency)
        wall = time.perf_counter() - started
        return [workers, Settings().threads, concurrency, requests_count, f"{requests_count / wall:.2f}",
                f"{np.percentile(latencies, 50):.2f}", f"{np.percentile(latencies, 95):.2f}",
                f"{server.memory_mib():.0f}", f"{server.startup:.1f}"]


class Server:
    """`autoannotator serve` in a subprocess, started and stopped by this benchmark."""

    def __init__(self, workers: int):
        self.workers = workers
        self.url = ""
        self.startup = 0.0

    def __enter__(self) -> "Server":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = tempfile.TemporaryDirectory(prefix="bench-serve-")
        self.log = Path(self.data_dir.name) / "server.log"
        env = {**os.environ, "WORKERS": str(self.workers), "DATA_DIR": self.data_dir.name, "LOG_LEVEL": "INFO"}
        started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        # Each worker logs "models loaded" once its create_app() has loaded the models.
        while self.log.read_text(errors="replace").count("models loaded") < self.workers:
            if self.process.poll() is not None or time.perf_counter() - started > STARTUP_TIMEOUT:
                self.__exit__()
                raise RuntimeError(f"the server did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        self.startup = time.perf_counter() - started
        return self

    def memory_mib(self) -> float:
        """Resident memory of the gunicorn master and its workers."""
        pids = [self.process.pid] + _children(self.process.pid)
        return sum(_rss_kib(pid) for pid in pids) / 1024

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # gunicorn's graceful stop of all its workers
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.data_dir.cleanup()


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command name)"
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status if line.startswith("VmRSS")), 0)


def _send(url: str, bodies: list[dict], concurrency: int) -> list[float]:
    """POST each body to /predict, `concurrency` at a time; returns each request's latency in seconds."""
    local = threading.local()

    def post(body):
        local.session = getattr(local, "session", None) or requests.Session()
        started = time.perf_counter()
        response = local.session.post(f"{url}/predict", json=body, timeout=600)
        response.raise_for_status()
        if not response.json()["results"][0]["result"]:
            raise RuntimeError(f"no regions for {body['tasks'][0]['data']['image']}: {response.text[:300]}")
        return time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(post, bodies))


if __name__ == "__main__":
    main()
