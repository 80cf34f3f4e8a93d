"""Shared test fixtures: real photos, and a local HTTP server standing in for the web and Label Studio."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


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
