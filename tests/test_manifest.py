"""The model manifest and the weight downloader (against a local HTTP server: no network here)."""
import hashlib
import json

import pytest

from backend.cli import main as cli
from backend.config import REPO_ROOT
from backend.vision.manifest import DownloadError, ModelSpec, download_model, load_manifest

WEIGHTS = b"\x08\x07fake-onnx-bytes" * 1000


def spec(url, sha256=hashlib.sha256(WEIGHTS).hexdigest(), file="sub/model.onnx"):
    return ModelSpec(name="tiny", family="scrfd", task="face", file=file, url=url, sha256=sha256)


def test_shipped_manifest_is_consistent():
    manifest = load_manifest(REPO_ROOT / "models" / "manifest.json")
    default = manifest.preset("default")
    assert [s.name for s in default["face"]] == ["mtcnn", "blazeface", "blazeface_back"]
    assert [s.name for s in default["person"]] == ["nanodet_m", "movenet_multipose", "blazepose"]
    # accurate is the default plus dlib's slow MMOD detector
    accurate = manifest.preset("accurate")
    assert [s.name for s in accurate["face"]] == [s.name for s in default["face"]] + ["dlib_mmod"]
    assert [s.name for s in accurate["person"]] == [s.name for s in default["person"]]
    for model in manifest.models.values():
        if model.url:
            assert model.sha256 and len(model.sha256) == 64, f"{model.name}: a url needs its sha256"
        assert model.licence and model.source, f"{model.name}: say where it comes from and its licence"
    for model in default["face"] + default["person"]:  # shipped weights match their hashes
        if model.file:
            assert hashlib.sha256(model.path(REPO_ROOT / "models").read_bytes()).hexdigest() == model.sha256


def test_download_checks_sha256(web, tmp_path):
    url = web.serve("/w.onnx", WEIGHTS, headers={"Content-Type": "application/octet-stream"})
    path = download_model(spec(url), tmp_path)
    assert path == tmp_path / "sub" / "model.onnx" and path.read_bytes() == WEIGHTS
    requests_before = len(web.requests)
    assert download_model(spec(url), tmp_path) == path  # already there and verified: no new request
    assert len(web.requests) == requests_before


def test_corrupt_download_leaves_nothing(web, tmp_path):
    url = web.serve("/w.onnx", WEIGHTS[:-1])
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_model(spec(url), tmp_path)
    assert list((tmp_path / "sub").iterdir()) == []


@pytest.mark.parametrize("kind, message", [
    ("404", "HTTP 404"), ("no url", "no url"), ("no sha", "refusing"), ("unreachable", "could not download"),
])
def test_download_errors(web, tmp_path, kind, message):
    model = {
        "404": spec(web.url + "/missing.onnx"),
        "no url": spec(None),
        "no sha": spec(web.url + "/w.onnx", sha256=None),
        "unreachable": spec("http://127.0.0.1:9/w.onnx"),
    }[kind]
    with pytest.raises(DownloadError, match=message):
        download_model(model, tmp_path)


def test_models_cli_download(web, tmp_path, monkeypatch, capsys):
    url = web.serve("/w.onnx", WEIGHTS)
    manifest = {"models": {"tiny": {"family": "scrfd", "task": "face", "file": "tiny.onnx", "url": url,
                                    "sha256": hashlib.sha256(WEIGHTS).hexdigest(), "licence": "test", "source": "test"}},
                "presets": {"default": {"face": ["tiny"]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("MODELS_DIR", str(tmp_path))
    assert cli(["models", "download"]) == 0
    assert (tmp_path / "tiny.onnx").read_bytes() == WEIGHTS
    assert cli(["models", "list"]) == 0
    assert "tiny" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"task": "car"}, "task must be one of"),
    ({"color": "yuv"}, "color must be"),
])
def test_bad_manifest_entries(tmp_path, change, message):
    entry = {"family": "scrfd", "task": "face", **change}
    (tmp_path / "m.json").write_text(json.dumps({"models": {"x": entry}}))
    with pytest.raises(ValueError, match=message):
        load_manifest(tmp_path / "m.json")


def test_preset_naming_unknown_model(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"models": {}, "presets": {"p": {"face": ["nope"]}}}))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        load_manifest(tmp_path / "m.json")
