#!/usr/bin/env bash
# Installs Label Studio into its own virtualenv, .venv-ls at the repository root,
# for the integration tests (tests/integration/). It never touches the backend's
# .venv: Label Studio pins Django, requests, numpy etc. to versions of its own.
# Re-running it is cheap: when the pinned version is already there it exits at once.
set -euo pipefail

LABEL_STUDIO_VERSION=1.23.2
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$repo_root/.venv-ls"
python="${PYTHON:-python3}"

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null || true
}

if [[ -x "$venv/bin/label-studio" && "$(installed_version)" == "$LABEL_STUDIO_VERSION" ]]; then
    echo "label-studio $LABEL_STUDIO_VERSION already installed in $venv"
    exit 0
fi

echo "installing label-studio $LABEL_STUDIO_VERSION into $venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$LABEL_STUDIO_VERSION"
echo "label-studio $(installed_version) installed in $venv"
