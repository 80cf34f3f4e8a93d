#!/usr/bin/env bash
# The test command (README, .ci/run): installs everything the tests need from this repo's files, then runs
# pytest. Label Studio goes into its own virtualenv (.venv-ls) so it never shares or pins our packages.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k fusion`.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.txt -r requirements-test.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
bash tests/integration/install_label_studio.sh

exec .venv/bin/python -m pytest "$@"
