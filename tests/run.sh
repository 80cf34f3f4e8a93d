#!/usr/bin/env bash
# The test command (README, .ci/run): installs everything the tests need from this repo's files, then runs
# pytest. Label Studio goes into its own virtualenv (.venv-ls) so it never shares or pins our packages.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k fusion`.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
# requirements-ray.txt: Ray, an optional extra of the backend, for tests/integration/test_prelabel.py.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.txt -r requirements-test.txt \
    -r requirements-ray.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
bash tests/integration/install_label_studio.sh
# PostgreSQL server binaries, for the PostgreSQL variant of the face store tests (they start their own server).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
    else
        echo "tests/run.sh: install PostgreSQL's server (apt-get install postgresql) for the face store tests" >&2
    fi
fi
# Headless Chromium for the browser tests (tests/integration/test_review_page.py, ...), which Playwright drives
# at /usr/bin/chromium: Debian's package, no browser download.
if ! [ -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
    else
        echo "tests/run.sh: install Chromium (apt-get install chromium) for the browser tests" >&2
    fi
fi

exec .venv/bin/python -m pytest "$@"
