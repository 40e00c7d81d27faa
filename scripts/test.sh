#!/usr/bin/env bash
# Install everything the test suite needs (Chromium included) and run lint, types and tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k magic`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    # The browser tests drive JupyterLab in Debian's Chromium (a downloaded browser cannot run here).
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
fi

python -m pip install -q --disable-pip-version-check -e ".[dev]"

python -m ruff check .
python -m ruff format --check .
python -m mypy

python -m pytest "$@"
