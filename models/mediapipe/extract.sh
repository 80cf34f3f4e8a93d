#!/usr/bin/env bash
# Reproduce the files of this folder from the PyPI wheel they come from: mediapipe 0.10.14 for
# CPython 3.11, manylinux x86_64. Only PyPI is contacted (pip download --no-deps); mediapipe is not
# installed. Every file is checked against its sha256 (the .tflite files against models/manifest.json)
# before it is copied.
#
# Usage: bash extract.sh [OUTPUT_DIR]          (default: the folder this script is in)
#        MEDIAPIPE_WHEEL=/path/to/mediapipe-0.10.14-cp311-...whl bash extract.sh   (offline, same check)
# Needs: pip, unzip, sha256sum, python3.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MANIFEST="$HERE/../manifest.json"
OUT="${1:-$HERE}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

WHEEL="${MEDIAPIPE_WHEEL:-}"
if [[ -z "$WHEEL" ]]; then
  # The models are the same in every platform's wheel; pin one so that any host fetches the same file.
  pip download --no-deps --disable-pip-version-check -q -d "$TMP" \
    --only-binary=:all: --platform manylinux_2_17_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
    mediapipe==0.10.14
  WHEEL="$(ls "$TMP"/mediapipe-0.10.14-cp311-cp311-*.whl)"
fi

# wheel path -> file name here
FILES=(
  mediapipe/modules/face_detection/face_detection_short_range.tflite
  mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite
  mediapipe/modules/pose_detection/pose_detection.tflite
  mediapipe-0.10.14.dist-info/LICENSE
)
mkdir -p "$TMP/x"
unzip -q -j -o "$WHEEL" "${FILES[@]}" -d "$TMP/x"

# The weights' hashes come from the manifest, so that the manifest stays their one source; the
# licence text is not a model and has no manifest entry.
python3 - "$MANIFEST" > "$TMP/x/SHA256SUMS" <<'EOF'
import json, sys
for entry in json.load(open(sys.argv[1]))["models"].values():
    if (entry.get("file") or "").startswith("mediapipe/"):
        print(f'{entry["sha256"]}  {entry["file"].split("/", 1)[1]}')
EOF
echo "8707eef0533987efc5b155d64761eeb6e20793f50b9bd1a68dad1cf4719d0ed8  LICENSE" >> "$TMP/x/SHA256SUMS"
if [[ $(wc -l < "$TMP/x/SHA256SUMS") -ne 4 ]]; then
  echo "expected 3 mediapipe models in $MANIFEST plus the LICENSE; got:" >&2
  cat "$TMP/x/SHA256SUMS" >&2
  exit 1
fi
(cd "$TMP/x" && sha256sum -c --quiet SHA256SUMS)

mkdir -p "$OUT"
for f in "${FILES[@]}"; do
  cp "$TMP/x/$(basename "$f")" "$OUT/"
done
echo "extracted into $OUT:"
(cd "$TMP/x" && cut -d' ' -f3 SHA256SUMS)
