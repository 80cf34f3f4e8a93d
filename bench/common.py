"""What every benchmark script shares: the machine it ran on, the test photos, and writing the results."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
PHOTOS = REPO_ROOT / "tests" / "data" / "photos"

from backend.evaluation.report import markdown_table  # noqa: F401  (re-exported for the scripts)
from backend.vision.models.base import l2_normalise


def machine() -> str:
    """CPU model, cores, memory and load: timings mean little without them (and this machine may be shared)."""
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    memory_kb = next((int(line.split()[1]) for line in _lines("/proc/meminfo") if line.startswith("MemTotal")), 0)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {memory_kb / 2**20:.1f} GiB RAM; load average {load} (1/5/15 min) "
            f"at the start; Python {platform.python_version()}, {platform.system()} {platform.release()}")


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def photos() -> list[Path]:
    return sorted(p for p in PHOTOS.iterdir() if p.suffix == ".jpg")


def load_photo(path: Path):
    """RGB uint8, decoded as the service decodes uploads."""
    from backend.config import Settings
    from backend.service.images import decode_image

    return decode_image(path.read_bytes(), str(path), Settings())


def write_results(name: str, title: str, machine_line: str, sections: list[str]) -> Path:
    """Print the results and write them to bench/results/<name>.md."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n\n".join([f"# {title}", f"Machine: {machine_line}. Run {stamp}: `python -m bench.{name}`.",
                        *sections]) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(text)
    return path


# Synthetic face descriptors for the clustering and store benchmarks: people are random directions, each
# face its person's direction plus noise, so that same-person cosine distances come out near dlib's (~NOISE^2).
DIM = 128
FACES_PER_PERSON = 10
NOISE = 0.18


def person_directions(rng, people: int):
    import numpy as np

    return l2_normalise(rng.standard_normal((people, DIM), dtype=np.float32))


def faces_of(rng, directions, persons):
    """One unit descriptor per entry of `persons` (indices into `directions`)."""
    import numpy as np

    noise = rng.standard_normal((len(persons), DIM), dtype=np.float32) * np.float32(NOISE / np.sqrt(DIM))
    return l2_normalise(directions[persons] + noise)
