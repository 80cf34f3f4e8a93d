"""Shared test fixtures: real photos, and a local HTTP server standing in for the web and Label Studio."""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = REPO_ROOT / "tests" / "data" / "photos"
MODELS_DIR = REPO_ROOT / "models"
START_POSTGRES = REPO_ROOT / "tests" / "integration" / "start_postgres.sh"


@pytest.fixture(scope="session")
def postgres_url():
    """One PostgreSQL server for the whole test session (Debian's postgresql package): its URL."""
    from tests.integration.label_studio import free_port

    directory = tempfile.mkdtemp(prefix="autoannotator-pg-", dir="/tmp")  # the server's user must reach it
    started = subprocess.run(["bash", str(START_POSTGRES), directory, str(free_port())],
                             capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL for the PostgreSQL variants ({START_POSTGRES.name}):\n"
                    f"{started.stderr.strip()}", pytrace=False)
    yield started.stdout.strip()
    subprocess.run(["bash", str(START_POSTGRES), "--stop", directory], capture_output=True, timeout=60)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture(scope="session")
def manifest():
    from backend.vision.manifest import load_manifest

    return load_manifest(MODELS_DIR / "manifest.json")


def load_models(manifest, names) -> dict:
    from backend.vision.models import load_model

    return {name: load_model(manifest[name], MODELS_DIR) for name in names}


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def checked_ground_truth(directory: Path, images: int, faces: bool, persons: bool) -> list:
    """An evaluation set's ground_truth_coco.json as (image truth, path) pairs, checked: every image there,
    only the classes it should have, and every box of those inside its image."""
    from backend.evaluation.evaluate import ScoredClasses
    from backend.evaluation.ground_truth import load_ground_truth, match_images

    pairs, missing = match_images(load_ground_truth(directory / "ground_truth_coco.json"), directory)
    assert not missing and len(pairs) == images
    assert ScoredClasses.of([t for t, _ in pairs]) == ScoredClasses(faces=faces, persons=persons)
    for image_truth, path in pairs:
        height, width = cv2.imread(str(path)).shape[:2]
        boxes = (image_truth.faces if faces else image_truth.persons).boxes
        assert len(boxes) and (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    return pairs


def background_crops(photos: Path) -> dict[str, np.ndarray]:
    """Real-photo regions without people: a building facade and the side of a bus (windows, lettering)."""
    street = read_rgb(photos / "street_bus.jpg")
    return {"facade": street[:300], "bus_side": street[280:640, 340:700]}


@pytest.fixture(scope="session")
def faces_truth() -> dict:
    return json.loads((PHOTOS / "faces.json").read_text())


def make_jwt(claims: dict) -> str:
    encode = lambda part: base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{encode({'alg': 'HS256', 'typ': 'JWT'})}.{encode(claims)}.c2lnbmF0dXJl"


class LoopbackServer:
    """An HTTP server on a free loopback port, answering from a daemon thread until close()."""

    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeWeb(LoopbackServer):
    """A loopback HTTP server: routes map a path to (status, headers, body); every request is recorded.

    It plays both 'some website' and 'Label Studio' (token refresh, uploads that need a Bearer token),
    so tests can check which requests carried which Authorization header.
    """

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: list[tuple[str, str, dict]] = []  # method, path, headers
        self.valid_access_tokens: set[str] = set()
        self.refresh_tokens: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _record(self):
                outer.requests.append((self.command, self.path, dict(self.headers)))

            def do_GET(self):
                self._record()
                route = outer.routes.get(self.path)
                if route is None:
                    return self._send(404, {}, b"not found")
                status, headers, body = route
                headers = dict(headers)
                if headers.pop("x-needs-bearer", None) is not None:
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if token not in outer.valid_access_tokens:
                        return self._send(401, {}, b'{"detail": "invalid token"}')
                self._send(status, headers, body)

            def do_POST(self):
                self._record()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/api/token/refresh" and body.get("refresh") in outer.refresh_tokens:
                    access = make_jwt({"exp": time.time() + 300, "n": len(outer.valid_access_tokens)})
                    outer.valid_access_tokens.add(access)
                    return self._send(200, {"Content-Type": "application/json"}, json.dumps({"access": access}).encode())
                self._send(401, {}, b'{"detail": "token invalid"}')

            def _send(self, status, headers, body):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

    def serve(self, path: str, body: bytes, status: int = 200, headers: dict | None = None, bearer: bool = False):
        headers = dict(headers or {"Content-Type": "image/jpeg"})
        if bearer:
            headers["x-needs-bearer"] = "1"
        self.routes[path] = (status, headers, body)
        return self.url + path


@pytest.fixture
def web():
    server = FakeWeb()
    yield server
    server.close()


@pytest.fixture
def other_web():
    server = FakeWeb()
    yield server
    server.close()


class Backend:
    """`autoannotator serve` in its own process group, so that SIGKILL takes gunicorn's master and workers.

    env: the backend's environment; it reads image paths under LOCAL_FILES_ROOT, the test photos unless
    env says otherwise. auth: (user, password) when env sets BASIC_AUTH_USER / BASIC_AUTH_PASS.
    """

    def __init__(self, state_dir: Path, env: dict, auth: tuple[str, str] | None = None):
        self.state_dir, self.env, self.auth = state_dir, {"LOCAL_FILES_ROOT": str(PHOTOS), **env}, auth
        self.log_path = state_dir / "backend.log"

    def start(self) -> "Backend":
        from tests.integration.label_studio import free_port, wait_until_ready

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        wait_until_ready(self.url + "/health", self.process, self.log_path, 300, "the backend")
        return self

    def kill(self, sig=signal.SIGKILL):
        os.killpg(self.process.pid, sig)
        self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def store(self):
        from backend.storage import FaceStore

        return FaceStore.open(self.env.get("DATABASE_URL", ""), Path(self.env["DATA_DIR"]))

    def post(self, path: str, body, timeout: float = 300, **kwargs):
        return requests.post(self.url + path, json=body, auth=self.auth, timeout=timeout, **kwargs)

    def predict(self, project: str, photos_dir: Path, tasks: list[tuple[int, str]]) -> list[dict]:
        from tests.test_label_config import SHIPPED

        body = {"tasks": [{"id": task, "data": {"image": str(photos_dir / photo)}} for task, photo in tasks],
                "label_config": SHIPPED, "project": f"{project}.1700000000"}
        response = self.post("/predict", body)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    def webhook(self, body) -> requests.Response:
        return self.post("/webhook", body, timeout=120)
