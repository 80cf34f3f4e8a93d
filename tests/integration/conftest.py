"""Session fixtures for the integration tests: a real Label Studio, this backend under gunicorn, and
an HTTP server that answers 404 to everything (the source of a broken task's image).

Everything listens on 127.0.0.1 on free ports and keeps its state and logs in pytest's tmp dirs.
Label Studio must be installed first (`bash tests/integration/install_label_studio.sh`); without it
the fixtures fail, they do not skip.
"""
from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler

import pytest

from ..conftest import LoopbackServer
from .label_studio import LabelStudio, start_backend, tail


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    server = LabelStudio(
        data_dir=tmp_path_factory.mktemp("label-studio"),
        username=os.environ.get("LABEL_STUDIO_USERNAME", "annotator@example.com"),
        password=os.environ.get("LABEL_STUDIO_PASSWORD", "integration-test-password"),
    )
    server.start()
    yield server
    server.stop()
    # pytest shows output of teardown only when a test failed: Label Studio's side of the story.
    print(f"--- Label Studio log ({server.log_path}) ---\n{tail(server.log_path, 60)}")


@pytest.fixture(scope="session")
def backend(label_studio, tmp_path_factory):
    backend = start_backend(label_studio, tmp_path_factory.mktemp("backend"))
    yield backend
    backend.stop()
    print(f"--- backend log ({backend.log_path}) ---\n{tail(backend.log_path, 80)}")


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404, "no such image")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def not_found_url():
    """The address of an image that does not exist: an HTTP server that answers 404 to every request."""
    server = LoopbackServer(_NotFound)
    yield f"{server.url}/photos/missing.jpg"
    server.close()
