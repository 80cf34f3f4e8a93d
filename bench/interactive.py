"""Latency of interactive pre-annotation: /predict answering the region an annotator has just drawn with a smart
tool (backend/service/interactive.py), as Label Studio's editor waits for it.

    python -m bench.interactive [--repeat 5]

Through the Flask test client (no HTTP, no Label Studio), with the shipped label config, in a project whose face
store already holds the faces of every test photo (so that the identity lookup searches real identities). Each
region is asked `--repeat` times after one warm-up call; every call's wall-clock time counts, image decoding
included. The regions are those of tests/data/photos/faces.json: each face's box drawn loosely (1.2 times its
size), each person's box likewise, and a nose point clicked at each face's centre.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from backend.config import REPO_ROOT

from .common import PHOTOS, load_photo, machine, markdown_table, write_results

LOOSE = 1.2  # a hand-drawn box is looser than the face


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per region (default 5)")
    args = parser.parse_args()
    machine_line = machine()
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="bench-data-"))
    os.environ.setdefault("LOCAL_FILES_ROOT", str(PHOTOS))
    from backend.service.app import create_app

    client = create_app().test_client()
    config = (REPO_ROOT / "label_config.xml").read_text()
    truth = json.loads((PHOTOS / "faces.json").read_text())
    sizes = {name: load_photo(PHOTOS / name).pixels.shape[:2] for name in truth}
    tasks = [{"id": i, "data": {"image": str(PHOTOS / name)}} for i, name in enumerate(sorted(truth), 1)]
    seeded = client.post("/predict", json={"tasks": tasks, "label_config": config, "project": "1.1"})
    assert seeded.status_code == 200, seeded.get_data(as_text=True)

    cases = []  # (kind, photo, context item)
    for name, photo in sorted(truth.items()):
        height, width = sizes[name]
        for face in photo["faces"]:
            cases.append(("face box", name, _box(_loose(face["box"]), "Face", width, height)))
            centre = np.add(face["box"][:2], face["box"][2:]) / 2
            cases.append(("nose clicked on a face", name, _point(centre, "nose", width, height)))
        for person in photo["people"]:
            cases.append(("person box", name, _box(_loose(person["box"]), "Person", width, height)))

    times = {}
    for kind, name, item in cases:
        body = {"tasks": [{"id": 99, "data": {"image": str(PHOTOS / name)}}], "label_config": config,
                "project": "1.1", "params": {"context": {"result": [item]}}}
        _ask(client, body)  # warm-up
        for _ in range(args.repeat):
            started, cpu = time.perf_counter(), time.process_time()
            _ask(client, body)
            times.setdefault(kind, []).append((time.perf_counter() - started, time.process_time() - cpu, name))

    megapixels = lambda names: np.mean([sizes[n][0] * sizes[n][1] / 1e6 for n in names])  # noqa: E731
    rows = []
    for kind, measured in times.items():
        for label, chosen in (("all photos", measured),
                              ("obama_1.jpg (1.03 Mpx)", [m for m in measured if m[2] == "obama_1.jpg"])):
            if chosen:
                wall, cpu = np.array([m[0] for m in chosen]), np.array([m[1] for m in chosen])
                rows.append([kind, label, len(chosen), f"{megapixels([m[2] for m in chosen]):.2f}",
                             f"{np.median(wall):.3f}", f"{np.percentile(wall, 90):.3f}", f"{wall.max():.3f}",
                             f"{np.median(cpu):.3f}", f"{np.percentile(cpu, 90):.3f}"])
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    write_results("interactive", "Interactive pre-annotation latency", machine_line, [
        f"Load average at the end: {load}. One /predict per drawn region (Flask test client, shipped config, local "
        f"files), {args.repeat} calls per region after a warm-up: wall-clock seconds, and CPU seconds of the "
        "process (all its threads). The machine is shared: other jobs ran at the same time and took cores from "
        "this one, which stretches wall-clock time but not CPU time. On an otherwise idle 2-core machine a call "
        "takes between half its CPU time (both cores busy) and its CPU time (one core busy).",
        markdown_table(["region drawn", "photos", "calls", "megapixels (mean)", "median wall s", "90th pct wall s",
                        "max wall s", "median CPU s", "90th pct CPU s"], rows),
    ])


def _ask(client, body) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)


def _loose(box) -> list[float]:
    box = np.asarray(box, dtype=float)
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * LOOSE
    return [*(centre - half), *(centre + half)]


def _box(box, label: str, width: int, height: int) -> dict:
    """A rectangle as Label Studio's editor serializes it."""
    x1, y1, x2, y2 = box
    return {"id": "drawn", "type": "rectanglelabels", "from_name": "boxes", "to_name": "image",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x1 / width * 100, "y": y1 / height * 100, "width": (x2 - x1) / width * 100,
                      "height": (y2 - y1) / height * 100, "rotation": 0, "rectanglelabels": [label]}}


def _point(point, label: str, width: int, height: int) -> dict:
    return {"id": "clicked", "type": "keypointlabels", "from_name": "landmarks", "to_name": "image",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": point[0] / width * 100, "y": point[1] / height * 100, "width": 0.5,
                      "keypointlabels": [label]}}


if __name__ == "__main__":
    main()
