"""Rebuild the photos of this folder from the packages they ship in (SOURCES.md says what each one is).

    .venv/bin/python tests/data/people/build.py [OUTPUT_DIR]      (default: this folder)

Needs Debian's apt (bookworm's lists: `apt-get update`), pip and OpenCV. Fetches the Debian package opencv-doc 4.6.0+dfsg-12 with `apt-get download` and the scikit-image 0.26.0
wheel with `pip download --no-deps`, checks the sha256 of each and of every file taken from them, and
writes the JPEGs with OpenCV (quality 92). Frames of vtest.avi are decoded by OpenCV's FFmpeg (MPEG-4
part 2, "MP43"); other OpenCV builds give the same pixel sizes, but the bytes can differ slightly.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2

HERE = Path(__file__).resolve().parent
OPENCV_DOC = "opencv-doc=4.6.0+dfsg-12"
OPENCV_DOC_SHA256 = "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a"
DATA = "usr/share/doc/opencv-doc/examples/data"
INPUTS = {  # file taken from a package -> sha256
    f"{DATA}/vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    f"{DATA}/basketball1.png": "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6",
    "skimage/data/camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
}
VTEST_FRAMES = (50, 350, 550, 750)  # 10 frames a second: 30 s apart, different people in each
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 92]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(path: Path, expected: str) -> Path:
    if sha256(path) != expected:
        sys.exit(f"{path}: sha256 {sha256(path)}, expected {expected}")
    return path


def fetch(tmp: Path) -> dict[str, Path]:
    subprocess.run(["apt-get", "download", OPENCV_DOC], cwd=tmp, check=True)
    deb = check(next(tmp.glob("opencv-doc_*.deb")), OPENCV_DOC_SHA256)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                    "-d", str(tmp / "wheel"), "scikit-image==0.26.0"], check=True)
    with zipfile.ZipFile(next((tmp / "wheel").glob("scikit_image-0.26.0-*.whl"))) as wheel:
        wheel.extract("skimage/data/camera.png", tmp / "wheel")
    found = {name: (tmp / "deb" / name if name.startswith("usr/") else tmp / "wheel" / name) for name in INPUTS}
    return {name: check(path, INPUTS[name]) for name, path in found.items()}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = fetch(Path(tmp))
        video = cv2.VideoCapture(str(files[f"{DATA}/vtest.avi"]))
        for index in range(max(VTEST_FRAMES) + 1):
            ok, frame = video.read()
            if not ok:
                sys.exit(f"vtest.avi ends before frame {index}")
            if index in VTEST_FRAMES:
                cv2.imwrite(str(out / f"vtest_{index:04d}.jpg"), frame, JPEG)
        cv2.imwrite(str(out / "basketball1.jpg"), cv2.imread(str(files[f"{DATA}/basketball1.png"])), JPEG)
        cv2.imwrite(str(out / "cameraman.jpg"), cv2.imread(str(files["skimage/data/camera.png"])), JPEG)
    print(f"wrote {len(VTEST_FRAMES) + 2} photos to {out}")


if __name__ == "__main__":
    main()
