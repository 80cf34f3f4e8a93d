"""The model manifest (models/manifest.json): which models exist, where their weights are, how to feed them.

Each entry names a model family (the adapter class that runs it, see backend.vision.models) and the
facts that adapter needs: weight file, download url and sha256, input size, normalisation, colour order.
Presets name the models of each ensemble.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

TASKS = ("face", "person", "descriptor")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    task: str
    file: str | None = None  # relative to the models directory; None for weights that ship in a package
    url: str | None = None
    sha256: str | None = None
    input_size: tuple[int, int] | None = None  # width, height the network takes
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    color: str = "rgb"  # channel order the network was trained on: "rgb" or "bgr"
    score_threshold: float = 0.3  # boxes below this never leave the adapter
    weight: float = 1.0  # the model's vote in the ensemble
    options: dict = field(default_factory=dict)  # family-specific settings
    licence: str = ""
    source: str = ""

    def path(self, models_dir: Path) -> Path | None:
        return None if self.file is None else Path(models_dir) / self.file


@dataclass(frozen=True)
class Manifest:
    models: dict[str, ModelSpec]
    presets: dict[str, dict[str, list[str]]]

    def preset(self, name: str) -> dict[str, list[ModelSpec]]:
        if name not in self.presets:
            raise KeyError(f"unknown preset {name!r}; the manifest has {sorted(self.presets)}")
        return {task: [self[m] for m in self.presets[name].get(task, [])] for task in TASKS}

    def __getitem__(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise KeyError(f"unknown model {name!r}; the manifest has {sorted(self.models)}")
        return self.models[name]


def load_manifest(path: str | Path) -> Manifest:
    data = json.loads(Path(path).read_text())
    models = {}
    for name, entry in data["models"].items():
        entry = dict(entry)
        for key in ("input_size", "mean", "std"):
            if entry.get(key) is not None:
                entry[key] = tuple(entry[key])
        spec = ModelSpec(name=name, **entry)
        if spec.task not in TASKS:
            raise ValueError(f"model {name!r}: task must be one of {TASKS}, got {spec.task!r}")
        if spec.color not in ("rgb", "bgr"):
            raise ValueError(f"model {name!r}: color must be 'rgb' or 'bgr', got {spec.color!r}")
        models[name] = spec
    presets = data.get("presets", {})
    for preset, tasks in presets.items():
        for task, names in tasks.items():
            for model in names:
                if model not in models:
                    raise ValueError(f"preset {preset!r} names unknown model {model!r}")
                if models[model].task != task:
                    raise ValueError(f"preset {preset!r}: {model!r} is a {models[model].task} model, not {task}")
    return Manifest(models, presets)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadError(RuntimeError):
    pass


def download_model(
    spec: ModelSpec,
    models_dir: Path,
    session: requests.Session | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fetch a model's weights into the models directory and check their sha256.

    The file appears under its final name only once its hash matches, so an interrupted or corrupted
    download never leaves a file that a later start would load.
    """
    target = spec.path(models_dir)
    if target is None:
        raise DownloadError(f"{spec.name}: its weights ship inside a Python package; nothing to download")
    if target.exists() and spec.sha256 and sha256_of(target) == spec.sha256:
        return target
    if not spec.url:
        raise DownloadError(f"{spec.name}: no url in the manifest; put {spec.file} into {models_dir} by hand")
    if not spec.sha256:
        raise DownloadError(f"{spec.name}: no sha256 in the manifest, refusing to load unverified weights")
    session = session or requests.Session()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, session.get(spec.url, stream=True, timeout=(10, 60)) as response:
            if response.status_code != 200:
                raise DownloadError(f"{spec.name}: GET {spec.url} answered HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0)
            done = 0
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if digest.hexdigest() != spec.sha256:
            raise DownloadError(
                f"{spec.name}: sha256 mismatch for {spec.url}: expected {spec.sha256}, got {digest.hexdigest()}"
            )
        os.replace(tmp_name, target)
    except requests.RequestException as error:
        raise DownloadError(f"{spec.name}: could not download {spec.url}: {error}") from error
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target
