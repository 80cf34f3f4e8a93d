"""Every attack we know of, against a real backend process (`autoannotator serve` under gunicorn) with
loopback HTTP servers standing in for Label Studio and for a foreign host.

Each test asserts the refusal, that Label Studio's key never reached the foreign server, and that the
worker is still alive and answering /health; the memory tests also hold the worker under the README's
figure. The backend logs at DEBUG level, so that a secret anywhere in its log is caught.
"""
from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import PHOTOS, Backend, FakeWeb, LoopbackServer
from tests.test_label_config import SHIPPED

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # a legacy Label Studio token
AUTH = ("label-studio", "correct horse battery staple")
# The README's figure for one worker's peak resident memory on the worst images (Security section).
WORKER_MEMORY_LIMIT = 2.5 * 2**30


class Drip(LoopbackServer):
    """A server that answers an image one byte every `interval` seconds, forever."""

    def __init__(self, interval: float = 1.0):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:
                    pass

        super().__init__(Handler)


@pytest.fixture(scope="module")
def label_studio():
    server = FakeWeb()
    yield server
    server.close()


@pytest.fixture(scope="module")
def foreign():
    server = FakeWeb()
    yield server
    server.close()


def start(tmp_path_factory, label_studio, name: str, **env) -> Backend:
    state = tmp_path_factory.mktemp(name)
    backend = Backend(state, {
        **os.environ, "DATA_DIR": str(state / "data"), "LOG_LEVEL": "DEBUG", "WORKERS": "1", "THREADS": "4",
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": API_KEY,
        "FETCH_TIMEOUT": "3", "MAX_REQUEST_BYTES": str(2**20), "MAX_TASKS_PER_REQUEST": "50",
        "MAX_NAME_LENGTH": "100", **env,
    }, auth=AUTH).start()
    return backend


@pytest.fixture(scope="module")
def backend(tmp_path_factory, label_studio):
    """Refuses private addresses: the default."""
    server = start(tmp_path_factory, label_studio, "strict")
    yield server
    server.kill()
    assert_no_secret_in(server.log())


@pytest.fixture(scope="module")
def lenient(tmp_path_factory, label_studio):
    """Allows loopback image hosts (ALLOWED_IMAGE_HOSTS), as a user with images on a private network would."""
    server = start(tmp_path_factory, label_studio, "lenient", ALLOWED_IMAGE_HOSTS="127.0.0.1")
    yield server
    server.kill()
    assert_no_secret_in(server.log())


def assert_no_secret_in(log: str):
    for secret in (API_KEY, AUTH[1], "c2VjcmV0LXRva2Vu"):
        lines = [line for line in log.splitlines() if secret in line]
        assert not lines, f"a secret is in the backend's log: {lines[0].replace(secret, '<SECRET>')[:300]}"


def predict(backend: Backend, images: list, timeout: float = 120) -> requests.Response:
    tasks = [{"id": i + 1, "data": {"image": image}} for i, image in enumerate(images)]
    return backend.post("/predict", {"tasks": tasks, "label_config": SHIPPED, "project": "1.1"}, timeout=timeout)


def failure_of(backend: Backend, task: int) -> str:
    """The reason the backend logged for a task's empty prediction."""
    lines = [line for line in backend.log().splitlines() if f"task {task}: no prediction" in line]
    assert lines, f"task {task} has no failure in the log"
    return lines[-1]


def assert_alive(backend: Backend):
    assert backend.process.poll() is None, "gunicorn's master died"
    assert requests.get(backend.url + "/health", timeout=10).json()["status"] == "UP"


def worker_peak_memory(backend: Backend) -> int:
    """The highest peak resident memory (VmHWM) of the backend's worker processes, in bytes."""
    peaks = []
    for child in Path(f"/proc/{backend.process.pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            status = Path(f"/proc/{pid}/status").read_text()
            peaks.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) * 1024)
    assert peaks, "no gunicorn worker found"
    return max(peaks)


def key_reached(server: FakeWeb) -> bool:
    return any("authorization" in {k.lower() for k in headers} for _, _, headers in server.requests)


# Authentication ------------------------------------------------------------------------------------

ROUTES = [("POST", "/predict"), ("POST", "/setup"), ("POST", "/webhook"), ("POST", "/recluster"),
          ("GET", "/recluster/abc")]


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_route_but_health_needs_the_credentials(backend, method, path):
    for auth in (None, (AUTH[0], "wrong"), ("wrong", AUTH[1]), (AUTH[0], AUTH[1] + "x")):
        response = requests.request(method, backend.url + path, json={}, auth=auth, timeout=30)
        assert response.status_code == 401, (path, auth, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    good = requests.request(method, backend.url + path, json={}, auth=AUTH, timeout=30)
    assert good.status_code != 401
    assert requests.get(backend.url + "/health", timeout=10).status_code == 200


def test_webhooks_without_credentials_change_nothing(backend):
    store = backend.store()
    renaming = {"action": "PROJECT_DELETED", "project": {"id": 1}}
    assert requests.post(backend.url + "/webhook", json=renaming, timeout=30).status_code == 401
    assert store.job("none") is None  # the store opened and answers: nothing was deleted on the way


@pytest.mark.parametrize("path", ["/train", "/versions", "/is_training", "/metrics", "/predict/../train"])
def test_label_studio_mls_unused_routes_are_closed(backend, tmp_path, path):
    body = {"annotations": [{"id": 1}], "project": str(tmp_path / "escape")}
    for method in ("GET", "POST"):
        response = requests.request(method, backend.url + path, json=body, auth=AUTH, timeout=30)
        assert response.status_code in (404, 405), (path, method, response.status_code)
    assert not (tmp_path / "escape").exists()


def test_a_recluster_flood_makes_no_second_job(backend):
    store = backend.store()
    job, new = store.create_job("9")  # a job of this project is running (its worker writes heartbeats)
    store.update_job(job, "running", 0.5, "clustering")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: backend.post("/recluster", {"project": 9}, timeout=60), range(100)))
    assert {a.status_code for a in answers} == {409}
    assert all(f"GET /recluster/{job}" in a.json()["detail"] for a in answers)
    rows = store._run(store._connection(), "SELECT job FROM jobs WHERE project = '9'").fetchall()
    assert rows == [(job,)]
    store.update_job(job, "done", 1.0, "done")
    assert backend.post("/recluster", {"project": 9}).status_code == 202  # once it is over, the next may start
    assert_alive(backend)


def test_a_job_whose_worker_died_is_failed_not_running(backend, monkeypatch):
    from backend.storage import faces

    store = backend.store()
    job, new = store.create_job("8")
    assert new
    store.update_job(job, "running", 0.3, "clustering")
    monkeypatch.setattr(faces, "JOB_STALE_SECONDS", 0.5)  # as if no heartbeat came for a minute
    time.sleep(1)
    status = store.job(job)
    assert status["status"] == "failed" and "stopped" in status["message"]
    assert store.create_job("8")[1], "a dead job must not block the project's next one"


# Label Studio's key ----------------------------------------------------------------------------------

def test_the_key_never_goes_to_a_foreign_host(lenient, label_studio, foreign):
    image = (PHOTOS / "grace_hopper.jpg").read_bytes()
    label_studio.serve("/data/upload/1/a.jpg", image)
    foreign.serve("/x.jpg", image)
    foreign.serve("/data/upload/1/a.jpg", image)
    ls_host = label_studio.url.removeprefix("http://")
    other = foreign.url.removeprefix("http://")
    attacks = [
        f"http://{other}\\@{ls_host}/data/upload/1/a.jpg",  # urlsplit and urllib3 disagreed on the host
        f"http://{other}/x.jpg",
        f"http://{ls_host}@{other}/x.jpg",
        f"http://user:pass@{other}/x.jpg",
        f"http://{other}/data/upload/1/a.jpg",
        f" http://{other}/x.jpg",
        f"http://{other}/x.jpg\r\nX-Injected: header",
    ]
    response = predict(lenient, attacks)
    assert response.status_code == 200
    assert not key_reached(foreign), foreign.requests
    # A redirect from Label Studio to the foreign host loses the key on the way.
    label_studio.serve("/data/upload/1/moved.jpg", b"", status=302, headers={"Location": foreign.url + "/x.jpg"})
    assert predict(lenient, ["/data/upload/1/moved.jpg"]).status_code == 200
    assert not key_reached(foreign)
    # Label Studio's own uploads still get it.
    [ok] = predict(lenient, ["/data/upload/1/a.jpg"]).json()["results"]
    assert ok["result"]
    assert any(path == "/data/upload/1/a.jpg" and headers.get("Authorization") == f"Token {API_KEY}"
               for _, path, headers in label_studio.requests)
    assert_alive(lenient)


def test_userinfo_backslashes_and_whitespace_are_refused(lenient, foreign):
    other = foreign.url.removeprefix("http://")
    response = predict(lenient, [f"http://a@{other}/x.jpg", f"http://{other}\\x.jpg", f"http://{other}/ x.jpg"])
    assert all(r["result"] == [] for r in response.json()["results"])
    for task in (1, 2, 3):
        assert "URL" in failure_of(lenient, task) or "url" in failure_of(lenient, task)


# Files --------------------------------------------------------------------------------------------------

def test_no_file_is_read_outside_local_files_root(backend, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    attacks = ["/etc/passwd", "file:///etc/passwd", "/proc/self/environ", "/dev/zero", str(fifo),
               f"file://{fifo}", str(PHOTOS / ".." / ".." / "README.md"), "/data/local-files/?d=../../etc/passwd"]
    started = time.monotonic()
    response = predict(backend, attacks, timeout=60)
    assert response.status_code == 200 and time.monotonic() - started < 30
    assert all(r["result"] == [] for r in response.json()["results"])
    for task in range(1, len(attacks) + 1):
        assert "LOCAL_FILES_ROOT" in failure_of(backend, task), failure_of(backend, task)
    assert_alive(backend)


def test_files_under_the_root_but_not_regular_or_escaping_by_symlink_are_refused(tmp_path_factory, label_studio):
    root = tmp_path_factory.mktemp("root")
    (root / "photo.jpg").write_bytes((PHOTOS / "biden.jpg").read_bytes())
    os.symlink("/etc/passwd", root / "passwd.jpg")
    os.mkfifo(root / "pipe.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    server = start(tmp_path_factory, label_studio, "rooted", LOCAL_FILES_ROOT=str(root))
    try:
        images = [str(root / n) for n in ("photo.jpg", "passwd.jpg", "pipe.jpg", "zero.jpg")]
        started = time.monotonic()
        results = predict(server, images + ["/data/local-files/?d=photo.jpg"], timeout=60).json()["results"]
        assert time.monotonic() - started < 30
        assert [bool(r["result"]) for r in results] == [True, False, False, False, True]
        assert_alive(server)
    finally:
        server.kill()


# Private addresses -------------------------------------------------------------------------------------

def test_private_and_odd_addresses_are_not_fetched(backend, foreign):
    port = foreign.server.server_port
    foreign.serve("/x.jpg", (PHOTOS / "biden.jpg").read_bytes())
    attacks = [f"http://{host}:{port}/x.jpg" for host in (
        "127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f.1", "0.0.0.0", "127.1", "[::ffff:127.0.0.1]",
        "0177.0.0.1")] + ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.jpg",
                          "http://192.168.1.1/x.jpg", "http://[fe80::1]/x.jpg", "http://224.0.0.1/x.jpg"]
    before = len(foreign.requests)
    response = predict(backend, attacks, timeout=60)
    assert all(r["result"] == [] for r in response.json()["results"])
    assert len(foreign.requests) == before, "a private address was fetched"
    for task in range(1, len(attacks) + 1):
        assert "ALLOWED_IMAGE_HOSTS" in failure_of(backend, task), failure_of(backend, task)
    assert_alive(backend)


def test_a_redirect_to_a_private_address_is_not_followed(backend, label_studio, foreign):
    foreign.serve("/secret.jpg", (PHOTOS / "biden.jpg").read_bytes())
    label_studio.serve("/data/upload/1/redirect.jpg", b"", status=302,
                       headers={"Location": foreign.url + "/secret.jpg"})
    before = len(foreign.requests)
    [result] = predict(backend, ["/data/upload/1/redirect.jpg"]).json()["results"]
    assert result["result"] == [] and len(foreign.requests) == before
    assert "ALLOWED_IMAGE_HOSTS" in failure_of(backend, 1)


# Resources ----------------------------------------------------------------------------------------------

def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def tiff(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "TIFF", compression="tiff_deflate")
    return buffer.getvalue()


def test_huge_images_stay_within_the_workers_memory(lenient, foreign):
    bombs = {"8944x8944.png": png(8944, 8944), "16x4999000.png": png(16, 4_999_000), "5000x5000.tif": tiff(5000, 5000)}
    assert len(bombs["8944x8944.png"]) < 200_000
    urls = [foreign.serve(f"/{name}", data, headers={"Content-Type": "image/png"}) for name, data in bombs.items()]
    for url in urls:
        response = predict(lenient, [url], timeout=300)
        assert response.status_code == 200
        assert_alive(lenient)
    peak = worker_peak_memory(lenient)
    assert peak < WORKER_MEMORY_LIMIT, f"a worker peaked at {peak / 2**30:.2f} GiB"
    print(f"worker peak resident memory after the huge images: {peak / 2**30:.2f} GiB")


def test_a_dripping_server_is_cut_at_the_deadline_and_health_answers(lenient):
    drip = Drip(interval=1.0)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:  # as many as the worker has threads
            calls = [pool.submit(predict, lenient, [drip.url + f"/slow{i}.jpg"], 60) for i in range(4)]
            time.sleep(0.5)
            health = requests.get(lenient.url + "/health", timeout=15)
            assert health.status_code == 200
            answers = [c.result() for c in calls]
        assert time.monotonic() - started < 20  # FETCH_TIMEOUT=3 is the whole download, not one read
        assert all(a.status_code == 200 and a.json()["results"][0]["result"] == [] for a in answers)
    finally:
        drip.close()


def test_request_size_caps(backend):
    big = {"tasks": [], "label_config": SHIPPED, "padding": "x" * (2**20 + 10)}
    assert backend.post("/predict", big).status_code == 413
    many = {"tasks": [{"id": i, "data": {"image": "/x.jpg"}} for i in range(51)], "label_config": SHIPPED}
    response = backend.post("/predict", many)
    assert response.status_code == 413 and "MAX_TASKS_PER_REQUEST" in response.json()["detail"]
    long_name = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "task": {"id": 1, "project": 3},
                 "annotation": {"id": 1, "result": [
                     {"id": "face1", "type": "textarea", "value": {"text": ["x" * 101]}}]}}
    response = backend.webhook(long_name)
    assert response.status_code == 400 and "MAX_NAME_LENGTH" in response.json()["detail"]
    items = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "task": {"id": 1},
             "annotation": {"id": 1, "result": [{"id": str(i), "type": "x", "value": {}} for i in range(10001)]}}
    response = backend.webhook(items)
    assert response.status_code in (400, 413)
    assert_alive(backend)


# Errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,
    json.dumps({"tasks": [], "label_config": 5}),
    json.dumps({"tasks": [], "label_config": []}),
    json.dumps({"tasks": [], "label_config": {"a": 1}}),
    json.dumps({"tasks": [5, None, "x", []], "label_config": SHIPPED}),
    json.dumps({"schema": 5}),
    "\x00\xff",
    "",
])
@pytest.mark.parametrize("path", ["/predict", "/setup", "/webhook", "/recluster"])
def test_malformed_bodies_get_a_4xx_without_a_traceback(backend, path, body):
    response = requests.post(backend.url + path, data=body.encode("utf-8", "surrogateescape"), auth=AUTH,
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code < 500 or path == "/predict" and response.status_code == 200, response.text
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_no_secret_in_the_log_at_debug_level(backend):
    token = "c2VjcmV0LXRva2Vu"
    backend.post("/setup", {"project": "1.1", "schema": SHIPPED, "access_token": token, "hostname": "x"})
    requests.post(backend.url + "/predict", auth=(AUTH[0], AUTH[1]), json={"tasks": []}, timeout=30,
                  headers={"X-Api-Key": token})
    assert "DEBUG" in backend.log()
    assert_no_secret_in(backend.log())


def test_eight_concurrent_clients_all_succeed(backend):
    images = [str(PHOTOS / name) for name in ("grace_hopper.jpg", "biden.jpg")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: predict(backend, images[i % 2:i % 2 + 1], 300), range(16)))
    assert all(a.status_code == 200 for a in answers)
    assert all(a.json()["results"][0]["result"] for a in answers)
    assert_alive(backend)
