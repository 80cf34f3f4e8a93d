"""Takes docs/label-studio-task.png: a task pre-annotated by this backend, open in Label Studio's editor.

Run by hand, from the repository root, after tests/integration/install_label_studio.sh and
`apt-get install -y chromium`:

    .venv/bin/python -m tests.integration.screenshot [--photo street_bus.jpg] [--out docs/label-studio-task.png]

It starts Label Studio and the backend on loopback exactly as the integration tests do, uploads
every photo of tests/data/photos/faces.json (identities are numbered across the whole batch),
retrieves predictions, then opens the chosen task in headless Chromium logged in as the user and
saves a screenshot. Chromium is driven through the DevTools protocol over --remote-debugging-pipe
(JSON messages separated by NUL bytes on file descriptors 3 and 4), so no driver or websocket
library is needed.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from .label_studio import REPO_ROOT, LabelStudio, start_backend, stop_process

PHOTOS = REPO_ROOT / "tests" / "data" / "photos"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--window-size=1600,1000", "--remote-debugging-pipe",
]
FIRST_FACE_IN_REGION_LIST = """(() => {
    const face = [...document.querySelectorAll('.lsf-outliner-item .lsf-labels-list')]
        .find(labels => labels.textContent.trim() === 'Face');
    if (!face) return null;
    const box = face.getBoundingClientRect();
    return {x: box.x + box.width / 2, y: box.y + box.height / 2};
})()"""
VIEWPORT = {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False}


class DevTools:
    """Chromium under the DevTools protocol, over the pipe pair that --remote-debugging-pipe opens."""

    def __init__(self, chromium: str, user_data_dir: Path):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # The browser expects its commands on fd 3 and writes answers to fd 4: the shell puts them there.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}',
             chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:  # skip events until the answer to this call
            answer = self._read()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self):
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        stop_process(self.process)
        os.close(self._to_browser)
        os.close(self._from_browser)


def wait_for(devtools: DevTools, session: str, expression: str, timeout: float, what: str):
    """Evaluates `expression` in the page until it is truthy, and returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = devtools.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        found = value.get("result", {}).get("value")
        if found:
            return found
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def screenshot_task(label_studio: LabelStudio, url: str, out: Path, chromium: str, work_dir: Path):
    devtools = DevTools(chromium, work_dir / "chromium-profile")
    try:
        target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
        session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for command in ("Page.enable", "Network.enable", "Runtime.enable"):
            devtools.call(command, session)
        devtools.call("Emulation.setDeviceMetricsOverride", session, **VIEWPORT)
        # The browser gets the session that the harness's login made, as if the user had logged in.
        for cookie in label_studio.browser.cookies:
            devtools.call("Network.setCookie", session, name=cookie.name, value=cookie.value, url=label_studio.url)
        devtools.call("Page.navigate", session, url=url)
        # The editor draws regions on a canvas over the image; wait for the image, then for them to settle.
        wait_for(devtools, session,
                 "[...document.images].some(i => i.src.includes('/data/upload/') && i.complete && i.naturalWidth > 0)"
                 " && document.querySelectorAll('canvas').length > 0", 120, "the task's image in the editor")
        time.sleep(3)
        # Click the first face in the region list, so that the editor shows its identity.
        point = wait_for(devtools, session, FIRST_FACE_IN_REGION_LIST, 10, "a face in the region list")
        for event in ("mousePressed", "mouseReleased"):
            devtools.call("Input.dispatchMouseEvent", session, type=event, button="left", clickCount=1, **point)
        time.sleep(1)
        png = devtools.call("Page.captureScreenshot", session, format="png")["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(png))
    finally:
        devtools.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="street_bus.jpg", help="the photo whose task is shown")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "label-studio-task.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        parser.error(f"{args.chromium} not found: apt-get install -y chromium")

    with tempfile.TemporaryDirectory(prefix="ls-screenshot-") as tmp:
        work_dir = Path(tmp)
        label_studio = LabelStudio(work_dir / "label-studio", "annotator@example.com", "screenshot-password").start()
        try:
            backend = start_backend(label_studio, work_dir / "backend")
            try:
                photos = sorted(json.loads((PHOTOS / "faces.json").read_text()))
                project_id = label_studio.create_project("Faces and people", (REPO_ROOT / "label_config.xml").read_text())
                label_studio.upload_files(project_id, [PHOTOS / name for name in photos])
                label_studio.connect_ml_backend(project_id, backend.url, "autoannotator", backend.auth)
                label_studio.retrieve_predictions(project_id)
                task = next(t for t in label_studio.tasks(project_id) if t["data"]["image"].endswith("-" + args.photo))
                tab = label_studio.open_data_manager(project_id)
                url = f"{label_studio.url}/projects/{project_id}/data?tab={tab}&task={task['id']}"
                screenshot_task(label_studio, url, args.out, args.chromium, work_dir)
            finally:
                backend.stop()
        finally:
            label_studio.stop()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
