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


# Synthetic face descriptors for the clustering and store benchmarks: people are random directions, each face
# its person's direction plus noise (see faces_of).
FACES_PER_PERSON = 10
# The noise that made 128-d faces for dlib's ResNet alone, whose threshold is 0.1: faces of one person
# ~NOISE^2 = 0.03 apart, under a third of the threshold.
NOISE = 0.18
NOISE_THRESHOLD = 0.1


def default_descriptors(preset: str = "default") -> tuple[int, float]:
    """The size and identity_distance of the preset's joined descriptor, as DescriptorEnsemble makes them
    (the default: dlib's ResNet and FaceRes, 128 + 1024 = 1152-d, threshold 0.3), without loading the networks:
    what the service stores and compares, so what the benchmarks measure by default."""
    import importlib
    from types import SimpleNamespace

    from backend.config import Settings
    from backend.vision.ensemble import DescriptorEnsemble
    from backend.vision.manifest import load_manifest
    from backend.vision.models import FAMILIES

    def size(spec) -> int:  # a network's size: its manifest options', or its adapter's fixed one
        module, name = FAMILIES[spec.family].split(":")
        return int(spec.options.get("dim") or getattr(importlib.import_module(f"backend.vision.models.{module}"),
                                                      name).dim)

    specs = load_manifest(Settings().manifest_path).preset(preset)["descriptor"]
    joined = DescriptorEnsemble([SimpleNamespace(spec=spec, dim=size(spec)) for spec in specs])
    return joined.dim, joined.identity_distance


def noise_for(threshold: float) -> float:
    """The noise of faces_of that spreads a person's faces over the same share of `threshold` as NOISE
    does over NOISE_THRESHOLD: same-person cosine distances are ~noise^2 (the noise is ~that long, at right
    angles to the person's direction, in any dimension), so the noise grows with the threshold's square
    root; the default 0.3 gives 0.31, faces ~0.09 apart. Different people stay ~1 apart (random directions,
    more tightly so the more dimensions: at 1152-d the nearest other person's faces are ~0.8 away, 2.7
    thresholds of 0.3; at 128-d ~0.6, 6 thresholds of 0.1), so the threshold separates the planted people
    as 0.1 separates the 128-d ones of NOISE, with a person's faces as far apart in threshold units."""
    return NOISE * float(threshold / NOISE_THRESHOLD) ** 0.5


def person_directions(rng, people: int, dim: int = 128):
    """(people, dim) random unit directions (128: the size of dlib's ResNet alone)."""
    import numpy as np

    return l2_normalise(rng.standard_normal((people, dim), dtype=np.float32))


def faces_of(rng, directions, persons, noise: float = NOISE):
    """One unit descriptor per entry of `persons` (indices into `directions`): its person's direction plus
    Gaussian noise of length ~`noise` (see noise_for)."""
    import numpy as np

    dim = directions.shape[1]
    noise = rng.standard_normal((len(persons), dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    return l2_normalise(directions[persons] + noise)
