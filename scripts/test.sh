#!/usr/bin/env bash
# The full suite: lint, types and every test, browser tests included, in a virtualenv that holds
# exactly the pinned toolchain (requirements/dev.txt) and this project. It installs what it needs
# first: Debian's Chromium via apt when missing, and the virtualenv (default .venv, or
# $MIRAGIC_VENV). Extra arguments go to pytest, e.g. `bash scripts/test.sh -k magic`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MIRAGIC_VENV:-.venv}

if ! command -v chromium >/dev/null 2>&1; then
    # The browser tests drive JupyterLab in Debian's Chromium (a downloaded browser cannot run here).
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
fi

bash scripts/venv.sh "$venv" requirements/dev.txt
# Subprocesses the tests start (kernels, `jupyter lab`) come from the same environment.
export PATH="$PWD/$venv/bin:$PATH" VIRTUAL_ENV="$PWD/$venv"

python -m ruff check .
python -m ruff format --check .
python -m mypy
# The layers import only downwards, and the faces never reach the store or the wire.
lint-imports

python -m pytest "$@"
