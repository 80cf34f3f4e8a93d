"""How fast the identity review page (/identities?project=ID) opens on a project with many stored faces.

    python -m bench.review_page [--faces 100000] [--database-url postgresql://...]

A fresh project is filled with that many synthetic faces through FaceStore.assign, in requests of
FILL_BATCH faces (one task per face; the same synthetic descriptors as bench/identity_store.py: ten faces
per planted person), and each face gets a thumbnail as /predict stores them: a 64 px JPEG cut by
face_thumbnails from a random box of a test photo (a pool of THUMBNAIL_POOL of them, reused). Then the
backend's app (create_app, basic auth on) serves, on a loopback port:

- the page's HTML: the first page, a page deep in the list, and an identity's own page (median of REPEATS
  requests each, end to end over HTTP, as the server answers them);
- the page in headless Chromium (/usr/bin/chromium, driven by Playwright): from navigation to the load event,
  with the thumbnails the first screen shows (the others load lazily as the page scrolls);
- one thumbnail.

SQLite runs in a temporary directory; --database-url adds a PostgreSQL run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from werkzeug.serving import make_server

from backend.config import Settings
from backend.service.app import create_app
from backend.service.context import AppContext
from backend.storage import FaceStore, NewFace, review
from backend.storage.dialects import PostgreSQLDialect

from .common import FACES_PER_PERSON, faces_of, load_photo, machine, markdown_table, person_directions, photos, \
    write_results

FILL_BATCH = 2000
THUMBNAIL_POOL = 1000
REPEATS = 5
USER, PASSWORD = "bench", "bench-password"
CHROMIUM = Path("/usr/bin/chromium")
NO_LANDMARKS = np.full((5, 2), np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--database-url", help="also run on this PostgreSQL database (postgresql://...)")
    args = parser.parse_args()
    machine_line = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-review-page-") as directory:
        settings = Settings(data_dir=Path(directory), basic_auth_user=USER, basic_auth_pass=PASSWORD)
        context = AppContext.build(settings)
        threshold = context.annotator.identity_distance
        pool = _thumbnail_pool(np.random.default_rng(0))
        stores = {"SQLite": context.store}
        if args.database_url:
            stores["PostgreSQL"] = FaceStore(PostgreSQLDialect(args.database_url))
        for database, store in stores.items():
            project = str(time.time_ns() // 1000 % 10**9)
            fill = _fill(store, project, args.faces, threshold, pool)
            context.store = store
            rows.append([database, f"{args.faces:,}", f"{fill:.0f}", *_measure(context, project)])
            print(rows[-1], flush=True)
    sections = [
        f"Synthetic faces (128-d, {FACES_PER_PERSON} per planted person), each with a 64 px JPEG thumbnail; "
        f"filled through FaceStore.assign in requests of {FILL_BATCH} faces. The page lists "
        "50 identities with up to 12 thumbnails each. Server: the backend's Flask app under werkzeug, one "
        f"process; times are medians of {REPEATS} requests. Browser: headless Chromium from navigation to the "
        "load event (the first screen's thumbnails included). The machine is shared with other jobs: times move "
        "by ~20% between runs.",
        markdown_table(["database", "stored faces", "fill (s)", "identities", "page 1 HTML (s)",
                        "page 100 HTML (s)", "an identity's own page (s)", "one thumbnail (ms)",
                        "page 1 in Chromium, to load (s)", "HTML size (KiB)"], rows),
    ]
    write_results("review_page", "Identity review page: time to open", machine_line, sections)


def _thumbnail_pool(rng) -> list[bytes]:
    """Real 64 px face-sized crops of the test photos, as face_thumbnails makes them."""
    images = [load_photo(path).pixels for path in photos()]
    pool = []
    for n in range(THUMBNAIL_POOL):
        pixels = images[n % len(images)]
        height, width = pixels.shape[:2]
        side = rng.uniform(40, min(height, width) / 2)
        x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
        pool += review.face_thumbnails(pixels, np.array([[x, y, x + side, y + side]]), 64)
    return pool


def _fill(store: FaceStore, project: str, size: int, threshold: float, pool: list[bytes]) -> float:
    rng = np.random.default_rng(size)
    people = max(1, size // FACES_PER_PERSON)
    directions = person_directions(rng, people)
    started = time.perf_counter()
    for first in range(0, size, FILL_BATCH):
        persons = rng.integers(0, people, min(FILL_BATCH, size - first))
        faces = [NewFace(str(first + i), "face1", np.array([10.0, 10.0, 60.0, 60.0]), NO_LANDMARKS, d, int(p))
                 for i, (p, d) in enumerate(zip(persons, faces_of(rng, directions, persons)))]
        store.assign(project, faces, "bench", threshold)
        review.save_thumbnails(store, project, {(face.task, face.region): pool[int(face.task) % len(pool)]
                                                for face in faces})
    return time.perf_counter() - started


def _measure(context: AppContext, project: str) -> list[str]:
    app = create_app(context=context)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    try:
        first = review.identity_page(context.store, project, 0, 1, 1).identities[0]
        total = review.identity_page(context.store, project, 0, 0, 0).total

        def median_seconds(path: str) -> tuple[float, requests.Response]:
            times = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                response = session.get(base + path, timeout=60)
                times.append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.status_code, response.text[:300])
            return statistics.median(times), response

        page_one, html = median_seconds(f"/identities?project={project}")
        page_deep, _ = median_seconds(f"/identities?project={project}&page=100")
        own, _ = median_seconds(f"/identities/{first.identity}?project={project}")
        face = first.shown[0]
        thumbnail, _ = median_seconds(f"/identities/thumbnails/{face.task}/{face.region}?project={project}")
        browser = _in_chromium(f"{base}/identities?project={project}") if CHROMIUM.exists() else None
    finally:
        server.shutdown()
    return [f"{total:,}", f"{page_one:.2f}", f"{page_deep:.2f}", f"{own:.2f}", f"{thumbnail * 1e3:.1f}",
            f"{browser:.2f}" if browser is not None else "(no /usr/bin/chromium)", f"{len(html.content) / 1024:.0f}"]


def _in_chromium(url: str) -> float:
    """Median seconds from navigation start to the load event, in a fresh browser context each time."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        for _ in range(REPEATS):
            context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                          viewport={"width": 1360, "height": 900})
            page = context.new_page()
            page.goto(url, wait_until="load", timeout=60_000)
            times.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
            context.close()
        browser.close()
    return statistics.median(times)


if __name__ == "__main__":
    main()
