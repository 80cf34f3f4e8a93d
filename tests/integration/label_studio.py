"""A real Label Studio and this backend for the integration tests and docs/label-studio-task.png:
Label Studio started on loopback with its default SQLite database in a fresh data directory, logged
into as a user would, driven through the REST calls its web app makes, and stopped cleanly; the
backend started with `autoannotator serve` and pointed at it.

Label Studio lives in its own virtualenv, .venv-ls (tests/integration/install_label_studio.sh),
because it pins Django, requests, numpy etc. to versions of its own.

Authentication follows Label Studio 1.23: legacy tokens are off by default, so the harness logs in
through the login form, creates the user's personal access token (PAT) with POST /api/token/ (a
user may hold one only: a second call answers 409, so keep it) and exchanges it at
/api/token/refresh for the short-lived access token that goes into `Authorization: Bearer`.
"""
from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL_STUDIO_VENV = REPO_ROOT / ".venv-ls"
INSTALL_SCRIPT = "tests/integration/install_label_studio.sh"
ACCESS_TOKEN_MARGIN = 30  # seconds before expiry at which the access token is renewed
BACKEND_START_TIMEOUT = 300  # seconds: gunicorn imports the backend and loads every model before /health


class LabelStudioError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float, what: str):
    """Polls `url` until it answers 200; fails early, with the log's tail, when the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioError(f"{what} exited with code {process.returncode}:\n{tail(log_path)}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise LabelStudioError(f"{what} did not answer {url} within {timeout:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def stop_process(process: subprocess.Popen, timeout: float = 20):
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LabelStudio:
    """One Label Studio server process and a logged-in user's API access to it."""

    def __init__(self, data_dir: Path, username: str, password: str, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.username = username
        self.password = password
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "label-studio.log"
        self.process: subprocess.Popen | None = None
        self.personal_access_token: str | None = None
        self.browser = requests.Session()  # the logged-in user's cookies, as a browser holds them
        self._access: tuple[str, float] | None = None

    def environment(self) -> dict:
        """Only what Label Studio needs: a clean environment, so no stray LABEL_STUDIO_*, HOST or PORT
        variable of the caller changes how it runs."""
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if key in os.environ}
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            # Let Label Studio reach an ML backend and webhooks on loopback or a private network;
            # by default it refuses both (SSRF protection).
            ML_BLOCK_LOCAL_IP="false",
            USE_DEFAULT_BANNED_SUBNETS="false",
            # The tests reach nothing outside this machine.
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
        )
        return env

    def start(self, timeout: float = 300) -> "LabelStudio":
        executable = LABEL_STUDIO_VENV / "bin" / "label-studio"
        if not executable.exists():
            raise LabelStudioError(
                f"Label Studio is not installed: {executable} is missing. Run `bash {INSTALL_SCRIPT}` "
                "from the repository root first (it installs label-studio into .venv-ls)."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(executable), "start", "--no-browser",
            "--internal-host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=self.environment(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
            )
        try:
            # The first start applies every database migration: about a minute on two cores.
            wait_until_ready(self.url + "/health", self.process, self.log_path, timeout, "Label Studio")
            self.log_in()
            self.personal_access_token = self.create_personal_access_token()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.process is not None:
            stop_process(self.process)

    def log_in(self):
        """Logs in through the login form, as a browser does: GET for the CSRF cookie, then POST."""
        login = self.url + "/user/login/"
        self.browser.get(login, timeout=30).raise_for_status()
        response = self.browser.post(
            login,
            data={"email": self.username, "password": self.password,
                  "csrfmiddlewaretoken": self.browser.cookies["csrftoken"]},
            headers={"Referer": login},
            allow_redirects=False,
            timeout=30,
        )
        if response.status_code != 302 or "sessionid" not in self.browser.cookies:
            raise LabelStudioError(f"login as {self.username} failed: HTTP {response.status_code}")

    def create_personal_access_token(self) -> str:
        """The user's personal access token, as 'Account & Settings > Personal Access Token' creates it."""
        response = self.browser.post(
            self.url + "/api/token/",
            headers={"X-CSRFToken": self.browser.cookies["csrftoken"], "Referer": self.url + "/"},
            timeout=30,
        )
        if response.status_code != 201:
            raise LabelStudioError(f"POST /api/token/ answered HTTP {response.status_code}: {response.text[:300]}")
        return response.json()["token"]

    def access_token(self) -> str:
        if self._access is None or self._access[1] < time.time() + ACCESS_TOKEN_MARGIN:
            response = requests.post(
                self.url + "/api/token/refresh/", json={"refresh": self.personal_access_token}, timeout=30
            )
            if response.status_code != 200:
                raise LabelStudioError(f"token refresh answered HTTP {response.status_code}: {response.text[:300]}")
            # Access tokens last five minutes by default; renew a little early rather than decode the JWT.
            self._access = (response.json()["access"], time.time() + 300)
        return self._access[0]

    def api(self, method: str, path: str, expect: int | tuple = (200, 201), **kwargs) -> requests.Response:
        """A call to Label Studio's REST API as the user; fails the test, with the body, on another status."""
        kwargs.setdefault("timeout", 300)
        headers = {"Authorization": f"Bearer {self.access_token()}", **kwargs.pop("headers", {})}
        response = requests.request(method, self.url + path, headers=headers, **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in expected:
            raise LabelStudioError(f"{method} {path} answered HTTP {response.status_code}: {response.text[:1000]}")
        return response

    # The user's actions, as the web app performs them.

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()["id"]

    def upload_files(self, project_id: int, paths: list[Path]) -> dict:
        """Import > Upload Files. Several files under one multipart field name make one task only,
        so each file goes under a name of its own."""
        files = {f"file{i}": (path.name, path.read_bytes()) for i, path in enumerate(paths)}
        return self.api("POST", f"/api/projects/{project_id}/import", files=files).json()

    def import_tasks(self, project_id: int, data: list[dict]) -> dict:
        return self.api("POST", f"/api/projects/{project_id}/import", json=data).json()

    def tasks(self, project_id: int) -> list[dict]:
        return self.api("GET", f"/api/tasks?project={project_id}&page_size=1000").json()["tasks"]

    def connect_ml_backend(self, project_id: int, url: str, title: str, auth: tuple[str, str]) -> dict:
        """Settings > Model > Connect Model with "Basic Authentication": Label Studio checks /health,
        calls /setup and adds a webhook to <url>/webhook for the project. Then, as the README says,
        Settings > Webhooks: that webhook gets the same credentials as an Authorization header."""
        connected = self.api("POST", "/api/ml", json={
            "project": project_id, "url": url, "title": title, "is_interactive": False,
            "auth_method": "BASIC_AUTH", "basic_auth_user": auth[0], "basic_auth_pass": auth[1],
        }).json()
        [webhook] = [w for w in self.api("GET", f"/api/webhooks/?project={project_id}").json()
                     if w["url"] == url.rstrip("/") + "/webhook"]
        credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.api("PATCH", f"/api/webhooks/{webhook['id']}/",
                 json={"headers": {"Authorization": f"Basic {credentials}"}})
        return connected

    def open_data_manager(self, project_id: int) -> int:
        """The data manager's first visit creates the project's first tab (a view); returns its id."""
        views = self.api("GET", f"/api/dm/views?project={project_id}").json()
        if views:
            return views[0]["id"]
        return self.api("POST", "/api/dm/views", json={"project": project_id}).json()["id"]

    def retrieve_predictions(self, project_id: int) -> dict:
        """Data manager: select all tasks, then Actions > "Retrieve Predictions" > OK.

        The request is the one Label Studio 1.23's data manager sends (AppStore.invokeAction): the
        action id is the name of the Python function data_manager/actions/basic.py:
        retrieve_tasks_predictions, and the body carries the tab's selection, filters and ordering.
        Label Studio sends the tasks to the backend's /predict and saves what comes back before it
        answers.
        """
        tab = self.open_data_manager(project_id)
        return self.api(
            "POST", f"/api/dm/actions?id=retrieve_tasks_predictions&tabID={tab}&project={project_id}",
            json={
                "ordering": [],
                "selectedItems": {"all": True, "excluded": []},
                "filters": {"conjunction": "and", "items": []},
                "project": str(project_id),
            },
            timeout=600,
        ).json()

    def predictions(self, project_id: int) -> dict:
        """Task id -> the task's predictions."""
        found = {}
        for prediction in self.api("GET", f"/api/predictions/?project={project_id}").json():
            found.setdefault(prediction["task"], []).append(prediction)
        return found


@dataclass
class Backend:
    url: str
    log_path: Path
    process: subprocess.Popen
    auth: tuple[str, str]  # the basic-auth credentials it was started with
    data_dir: Path  # its DATA_DIR: the face store's SQLite file

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        stop_process(self.process)


def start_backend(label_studio: LabelStudio, state_dir: Path) -> Backend:
    """`autoannotator serve` as a user runs it, pointed at `label_studio` with the user's PAT.
    Other settings (MODEL_PRESET, ...) come from the caller's environment."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ("label-studio", secrets.token_urlsafe(16))
    env = dict(
        os.environ,
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=label_studio.personal_access_token,
        BASIC_AUTH_USER=auth[0],
        BASIC_AUTH_PASS=auth[1],
        # The tests' stand-in image hosts listen on loopback, which the backend refuses by default.
        ALLOWED_IMAGE_HOSTS="127.0.0.1",
        DATA_DIR=str(state_dir / "data"),
        LOG_LEVEL="INFO",
        # The review page's operations in these tests concern two tasks: through the background job that
        # operations on many tasks take.
        REVIEW_PUSH_INLINE_TASKS="1",
    )
    log_path = state_dir / "backend.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    backend = Backend(url=f"http://127.0.0.1:{port}", log_path=log_path, process=process, auth=auth,
                      data_dir=state_dir / "data")
    try:
        wait_until_ready(backend.url + "/health", process, log_path, BACKEND_START_TIMEOUT, "the backend")
    except BaseException:
        backend.stop()
        raise
    return backend
