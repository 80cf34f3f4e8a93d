"""Rebuild the photos of this folder from the packages they ship in (SOURCES.md says what each one is).

    .venv/bin/python tests/data/people/build.py [OUTPUT_DIR]      (default: this folder)

Needs Debian's apt (bookworm's lists: `apt-get update`), pip, OpenCV and Pillow. Fetches the Debian packages
opencv-doc 4.6.0+dfsg-12 and scratch 1.4.0.6~dfsg1-6.1 with `apt-get download` and the scikit-image 0.26.0
wheel with `pip download --no-deps`, checks the sha256 of each and of every file taken from them, and
writes the JPEGs with OpenCV (quality 92). Frames of vtest.avi are decoded by OpenCV's FFmpeg (MPEG-4
part 2, "MP43"); other OpenCV builds give the same pixel sizes, but the bytes can differ slightly.

The two photos of children are composites: Scratch 1.4 ships photographs of children cut out of their
background (its "People" costumes, GIFs with a transparent background) and photographs of places (its
backgrounds); SCENES pastes the children onto two of the places, at the sizes and places it lists.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OPENCV_DOC = "opencv-doc=4.6.0+dfsg-12"
OPENCV_DOC_SHA256 = "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a"
SCRATCH = "scratch=1.4.0.6~dfsg1-6.1"
SCRATCH_SHA256 = "36c582eb93110f64f06c4e685c41e933ccba2fa68db12f79b10bfe840b21fc10"
DATA = "usr/share/doc/opencv-doc/examples/data"
MEDIA = "usr/share/scratch/Media"
INPUTS = {  # file taken from a package -> sha256
    f"{DATA}/vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    f"{DATA}/basketball1.png": "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6",
    "skimage/data/camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    f"{MEDIA}/Backgrounds/Outdoors/atom-playground.jpg": "b4c35a6c9d5e5243df537dd674d784e9f8944308a2ce77cc4e4dce49b2c5ca94",
    f"{MEDIA}/Backgrounds/Sports/playing-field.jpg": "bee22943bceb3e8b654f4a15e8467cb6ca32f91a6971a8e7a0b055678376eaec",
    f"{MEDIA}/Costumes/People/anna-1.gif": "807755c0e8133d5f9dc25881fdd5138f23aa79f8f81f307d46b503ad80564cd8",
    f"{MEDIA}/Costumes/People/anna-3.gif": "4d6681120a927379de4663401f7ca8f2a94157c1cf566bb1cbd3ef4a291cef1e",
    f"{MEDIA}/Costumes/People/sam.gif": "ecc4b17723b3bf608bfec6c048c5c5f62662695e1a097ee6c63d633e068b5b98",
    f"{MEDIA}/Costumes/People/ribbon-dancer.gif": "4afdcfd4d2609dd6750fb4796221a53eafc636333a72ae4f3890f9828907e09c",
    f"{MEDIA}/Costumes/People/chamak2.gif": "9a9797b952131a44555de94d73e157599a06c9e8780ee17d8311db19818c2f86",
}
# Composites of children: background (480x360, enlarged BACKGROUND_SCALE times), then the children back to
# front: (cut-out, scale, mirrored, (x of the cut-out's left side, y of its bottom) in the composite). Those
# in front hide parts of those behind; one is cut off by the frame in each.
BACKGROUND_SCALE = 1.5
SCENES = {
    "children_playground.jpg": ("Backgrounds/Outdoors/atom-playground.jpg", [
        ("chamak2.gif", 0.55, False, (585, 385)),
        ("ribbon-dancer.gif", 0.95, False, (330, 470)),
        ("anna-1.gif", 1.05, False, (250, 505)),
        ("sam.gif", 1.25, False, (40, 530)),
        ("anna-3.gif", 1.1, True, (640, 560)),
    ]),
    "children_field.jpg": ("Backgrounds/Sports/playing-field.jpg", [
        ("anna-3.gif", 0.3, False, (120, 300)),
        ("chamak2.gif", 0.35, True, (215, 290)),
        ("ribbon-dancer.gif", 0.3, False, (420, 270)),
        ("anna-1.gif", 0.4, True, (500, 330)),
        ("sam.gif", 1.6, True, (200, 640)),
    ]),
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
    subprocess.run(["apt-get", "download", OPENCV_DOC, SCRATCH], cwd=tmp, check=True)
    for pattern, expected in (("opencv-doc_*.deb", OPENCV_DOC_SHA256), ("scratch_*.deb", SCRATCH_SHA256)):
        deb = check(next(tmp.glob(pattern)), expected)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                    "-d", str(tmp / "wheel"), "scikit-image==0.26.0"], check=True)
    with zipfile.ZipFile(next((tmp / "wheel").glob("scikit_image-0.26.0-*.whl"))) as wheel:
        wheel.extract("skimage/data/camera.png", tmp / "wheel")
    found = {name: (tmp / "deb" / name if name.startswith("usr/") else tmp / "wheel" / name) for name in INPUTS}
    return {name: check(path, INPUTS[name]) for name, path in found.items()}


def cut_out(path: Path, scale: float, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
    """A cut-out's colour premultiplied by its opacity, and its opacity (0-1), scaled. Premultiplied, so that
    the colour its transparent pixels happen to hold does not bleed into the child's outline."""
    rgba = np.asarray(Image.open(path).convert("RGBA"), np.float32) / 255
    rgba = rgba[:, ::-1] if mirrored else rgba
    size = (round(rgba.shape[1] * scale), round(rgba.shape[0] * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    colour = cv2.resize(np.ascontiguousarray(rgba[..., :3] * rgba[..., 3:]), size, interpolation=interpolation)
    return colour, cv2.resize(np.ascontiguousarray(rgba[..., 3]), size, interpolation=interpolation)


def composite(files: dict[str, Path], background: str, children: list) -> np.ndarray:
    """The background enlarged, with the cut-outs pasted back to front (RGB uint8)."""
    image = np.asarray(Image.open(files[f"{MEDIA}/{background}"]).convert("RGB"), np.float32) / 255
    image = cv2.resize(image, None, fx=BACKGROUND_SCALE, fy=BACKGROUND_SCALE, interpolation=cv2.INTER_CUBIC)
    height, width = image.shape[:2]
    for name, scale, mirrored, (left, bottom) in children:
        colour, opacity = cut_out(files[f"{MEDIA}/Costumes/People/{name}"], scale, mirrored)
        top = bottom - opacity.shape[0]
        x1, y1 = max(left, 0), max(top, 0)
        x2, y2 = min(left + opacity.shape[1], width), min(bottom, height)
        part = (slice(y1 - top, y2 - top), slice(x1 - left, x2 - left))
        alpha = opacity[part][..., None]
        image[y1:y2, x1:x2] = image[y1:y2, x1:x2] * (1 - alpha) + colour[part]
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


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
        for name, (background, children) in SCENES.items():
            cv2.imwrite(str(out / name), composite(files, background, children)[..., ::-1], JPEG)
    print(f"wrote {len(VTEST_FRAMES) + 2 + len(SCENES)} photos to {out}")


if __name__ == "__main__":
    main()
