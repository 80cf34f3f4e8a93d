"""Rebuild the hard-face photos of this folder and their ground truth (SOURCES.md says what each one is).

    .venv/bin/python tests/data/hard_faces/build.py [OUTPUT_DIR]      (default: this folder)

Two photos are real hard cases, copied from tests/data/people (a face in profile, a motion-blurred face);
the others are the public-domain photos of tests/data/photos made hard on purpose: darkened with sensor
noise, motion-blurred, reduced to a quarter of their resolution, or shrunk onto a wall so that their faces
are 16 to 52 pixels wide. Then the degradation grid (SOURCES.md): the 8 faces of tests/data/photos, each with
its surroundings, on one 1024x768 wall per cell of the grid (small, blurred, dark, compressed, turned,
mirrored). Each face box of a degraded photo is its box in tests/data/photos/ground_truth_coco.json carried
through the same geometry, so no box is guessed twice. The wall is
scikit-image's CC0 brick texture (the wheel is fetched with `pip download --no-deps`, checked by sha256).
Noise is seeded: the pixels are the same on every run with the same OpenCV and NumPy.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
PHOTOS = HERE.parent / "photos"
PEOPLE = HERE.parent / "people"
BRICK_SHA256 = "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 90]

# The two real hard cases, boxed by hand ([x1, y1, x2, y2], hairline to chin, ear to nose tip or ear to ear).
# In basketball1 the man on the right turns away: his cheek and ear show, not his face ("don't care").
HAND_BOXED = {
    "cameraman_profile.jpg": ("cameraman.jpg", [([180, 122, 256, 197], "cameraman", False)]),
    "basketball_blur.jpg": ("basketball1.jpg", [([61, 92, 101, 138], "basketball_left", False),
                                                ([509, 60, 552, 128], None, True)]),
}
# The walls: (portrait, face width in pixels, top-left corner of the pasted photo)
WALLS = {
    "small_faces_wall.jpg": [("obama_1.jpg", 16, (90, 120)), ("biden.jpg", 20, (430, 90)),
                             ("grace_hopper.jpg", 24, (760, 160)), ("astronaut_eileen_collins.jpg", 28, (1100, 110)),
                             ("obama_3.jpg", 34, (240, 520)), ("obama_2.jpg", 40, (900, 480))],
    "small_faces_wall_dark.jpg": [("grace_hopper.jpg", 24, (120, 420)), ("obama_2.jpg", 28, (560, 700)),
                                  ("biden.jpg", 32, (700, 430)), ("obama_1.jpg", 36, (1000, 140)),
                                  ("astronaut_eileen_collins.jpg", 44, (1280, 500)), ("obama_3.jpg", 52, (250, 40))],
}
WALL_SIZE = (1600, 1000)
# The degradation grid (SOURCES.md, fixed before any model ran on it): photo -> (face width, degradation)
GRID = {f"grid_width_{width}.jpg": (width, {}) for width in (12, 16, 20, 24, 32, 48, 96)}
GRID |= {f"grid_blur_{sigma}.jpg": (96, {"blur": sigma}) for sigma in (3, 6)}
GRID |= {f"grid_dark_{round(gain * 100)}.jpg": (96, {"dark": gain}) for gain in (0.25, 0.10)}
GRID |= {f"grid_jpeg_{quality}.jpg": (96, {"jpeg": quality}) for quality in (10, 5)}
GRID |= {f"grid_rotate_{turn}{abs(angle)}.jpg": (96, {"angle": angle})
         for angle in (20, 40, -20, -40) for turn in ["ccw" if angle > 0 else "cw"]}
GRID |= {"grid_mirror.jpg": (96, {"mirror": True})}
GRID_SIZE, GRID_CELL, GRID_CONTEXT = (1024, 768), (256, 384), 2.5  # wall, cell (4 x 2 of them), window / box
DARK_NOISE = 2.0  # grey levels, as bench/identity_sequence.py


def dark(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """About three stops under-exposed (gamma 1.8, then 30% of the light) with the sensor noise that brings."""
    light = 255.0 * (image / 255.0) ** 1.8 * 0.3
    return np.clip(light + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def motion_blur(image: np.ndarray, length: int = 31) -> np.ndarray:
    """A horizontal motion blur over `length` pixels (the camera panned during the exposure)."""
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1.0 / length
    return cv2.filter2D(image, -1, kernel)


def low_resolution(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """Reduced `factor` times and enlarged back: the size is the same, the detail a sixteenth."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def brick_wall(tmp: Path) -> np.ndarray:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                    "-d", str(tmp), "scikit-image==0.26.0"], check=True)
    with zipfile.ZipFile(next(tmp.glob("scikit_image-0.26.0-*.whl"))) as wheel:
        data = wheel.read("skimage/data/brick.png")
    if hashlib.sha256(data).hexdigest() != BRICK_SHA256:
        sys.exit(f"skimage/data/brick.png: sha256 {hashlib.sha256(data).hexdigest()}, expected {BRICK_SHA256}")
    brick = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    tiles = np.tile(brick, (WALL_SIZE[1] // brick.shape[0] + 1, WALL_SIZE[0] // brick.shape[1] + 1, 1))
    warm = np.array([0.8, 0.9, 1.1])  # BGR: the grey texture tinted like a brick wall
    return np.clip(tiles[:WALL_SIZE[1], :WALL_SIZE[0]] * warm, 0, 255).astype(np.uint8)


def easy_truth() -> dict[str, list[tuple[list[float], str | None, bool]]]:
    """tests/data/photos' face boxes: file -> [(x1, y1, x2, y2), identity, don't care]."""
    coco = json.loads((PHOTOS / "ground_truth_coco.json").read_text())
    faces = next(c["id"] for c in coco["categories"] if c["name"] == "face")
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    truth: dict[str, list] = {name: [] for name in names.values()}
    for a in coco["annotations"]:
        if a["category_id"] == faces:
            x, y, w, h = a["bbox"]
            truth[names[a["image_id"]]].append(([x, y, x + w, y + h], a["attributes"].get("identity"),
                                                bool(a["iscrowd"])))
    return truth


def wall(background: np.ndarray, layout, truth) -> tuple[np.ndarray, list]:
    """Each portrait shrunk so that its face is the given width, pasted at its corner; the faces' boxes."""
    canvas, faces = background.copy(), []
    covered = np.zeros(canvas.shape[:2], bool)
    for name, face_width, (left, top) in layout:
        photo = cv2.imread(str(PHOTOS / name))
        main_face = next(box for box, _, ignore in truth[name] if not ignore)
        scale = face_width / (main_face[2] - main_face[0])
        small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if covered[top:top + small.shape[0], left:left + small.shape[1]].any():
            sys.exit(f"{name} would cover another photo of the wall")
        covered[top:top + small.shape[0], left:left + small.shape[1]] = True
        canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
        for box, identity, ignore in truth[name]:
            faces.append(([round(v * scale + offset, 1) for v, offset in zip(box, (left, top, left, top))],
                          identity, ignore))
    return canvas, faces


def grid_tile(photo: np.ndarray, box, others, face_width: int, angle: float = 0.0, mirror: bool = False):
    """The face of `box` with its surroundings (GRID_CONTEXT times its box), shrunk until the box is `face_width`
    wide, turned by `angle` degrees (counter-clockwise) about its centre and mirrored if asked; with its box and
    the `others` face boxes in the tile (clipped; "don't care")."""
    scale = face_width / (box[2] - box[0])
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    x1, y1, x2, y2 = (v * scale for v in box)
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    size = (round(GRID_CONTEXT * (x2 - x1)), round(GRID_CONTEXT * (y2 - y1)))
    # In pixel-index coordinates (OpenCV's: pixel i's centre is i, a box edge at x is x - 0.5); the shift to the
    # tile's centre is whole pixels, so that a tile that is not turned is not resampled either.
    matrix = cv2.getRotationMatrix2D(tuple(centre - 0.5), angle, 1.0)
    matrix[:, 2] += np.round(np.array(size) / 2 - centre)
    if mirror:
        matrix = np.array([[-1.0, 0, size[0] - 1], [0, 1, 0]]) @ np.vstack([matrix, [0, 0, 1]])
    tile = cv2.warpAffine(small, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    to_tile = lambda points: (points - 0.5) @ matrix[:, :2].T + matrix[:, 2] + 0.5  # noqa: E731
    # The face: the ellipse inscribed in its box (through hairline, chin and ears), turned; its extent.
    a, b = (x2 - x1) / 2, (y2 - y1) / 2
    cos, sin = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    half = np.array([np.hypot(a * cos, b * sin), np.hypot(a * sin, b * cos)])
    middle = to_tile(centre[None])[0]
    faces = [([*(middle - half), *(middle + half)], False)]
    for other in others:  # the extent of its turned corners, inside the tile
        corners = to_tile(np.array([[other[0], other[1]], [other[2], other[1]], [other[0], other[3]],
                                    [other[2], other[3]]]) * scale)
        low, high = corners.min(axis=0).clip(0, size), corners.max(axis=0).clip(0, size)
        if (high > low).all():
            faces.append(([*low, *high], True))
    return tile, faces


def grid(background: np.ndarray, face_width: int, degradation: dict, truth, rng: np.random.Generator):
    """One cell of the degradation grid: the 8 faces of tests/data/photos on a wall, degraded; and their boxes."""
    canvas, found = background[:GRID_SIZE[1], :GRID_SIZE[0]].copy(), []
    portraits = [(name, box, identity, [b for b, _, _ in truth[name] if b is not box])
                 for name, faces in truth.items() for box, identity, ignore in faces if not ignore]
    for index, (name, box, identity, others) in enumerate(portraits):
        tile, boxes = grid_tile(cv2.imread(str(PHOTOS / name)), box, others, face_width,
                                degradation.get("angle", 0.0), degradation.get("mirror", False))
        left = (index % 4) * GRID_CELL[0] + (GRID_CELL[0] - tile.shape[1]) // 2
        top = (index // 4) * GRID_CELL[1] + (GRID_CELL[1] - tile.shape[0]) // 2
        canvas[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
        found += [([round(v + offset, 1) for v, offset in zip(b, (left, top, left, top))],
                   None if ignore else identity, ignore) for b, ignore in boxes]
    if "blur" in degradation:
        canvas = cv2.GaussianBlur(canvas, (0, 0), degradation["blur"])
    if "dark" in degradation:
        canvas = np.clip(canvas * degradation["dark"] + rng.normal(0, DARK_NOISE, canvas.shape), 0, 255)
    return canvas.astype(np.uint8), found


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(8)
    truth = easy_truth()
    made: dict[str, tuple[np.ndarray, list]] = {}
    for name, (source, faces) in HAND_BOXED.items():
        made[name] = cv2.imread(str(PEOPLE / source)), faces
    made["obama_1_dark.jpg"] = dark(cv2.imread(str(PHOTOS / "obama_1.jpg")), rng), truth["obama_1.jpg"]
    made["biden_motion_blur.jpg"] = motion_blur(cv2.imread(str(PHOTOS / "biden.jpg"))), truth["biden.jpg"]
    made["street_bus_low_resolution.jpg"] = (low_resolution(cv2.imread(str(PHOTOS / "street_bus.jpg"))),
                                             truth["street_bus.jpg"])
    with tempfile.TemporaryDirectory() as tmp:
        background = brick_wall(Path(tmp))
    made["small_faces_wall.jpg"] = wall(background, WALLS["small_faces_wall.jpg"], truth)
    image, faces = wall(background, WALLS["small_faces_wall_dark.jpg"], truth)
    made["small_faces_wall_dark.jpg"] = dark(image, rng), faces
    grid_noise = np.random.default_rng(2026)
    for name, (face_width, degradation) in GRID.items():
        made[name] = grid(background, face_width, degradation, truth, grid_noise)

    images, annotations = [], []
    for image_id, (name, (image, faces)) in enumerate(made.items(), 1):
        quality = GRID.get(name, (0, {}))[1].get("jpeg")
        cv2.imwrite(str(out / name), image, [cv2.IMWRITE_JPEG_QUALITY, quality] if quality else JPEG)
        images.append({"id": image_id, "file_name": name, "width": image.shape[1], "height": image.shape[0]})
        for (x1, y1, x2, y2), identity, ignore in faces:
            width, height = round(x2 - x1, 1), round(y2 - y1, 1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x1, y1, width, height], "area": round(width * height, 1),
                                "iscrowd": int(ignore), "attributes": {"identity": identity} if identity else {}})
    coco = {"info": {"description": "hard faces: faces only (tests/data/hard_faces/SOURCES.md)"},
            "categories": [{"id": 1, "name": "face"}], "images": images, "annotations": annotations}
    (out / "ground_truth_coco.json").write_text(json.dumps(coco, indent=1) + "\n")
    print(f"wrote {len(images)} photos, {sum(not a['iscrowd'] for a in annotations)} faces to {out}")


if __name__ == "__main__":
    main()
