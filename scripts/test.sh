#!/usr/bin/env bash
# The full suite: lint, types and every test, browser tests included, in a virtualenv that holds
# exactly the pinned toolchain (requirements/dev.txt) and this project. It installs what it needs
# first: Debian's Chromium via apt when missing, and the virtualenv (default .venv, or
# $MIRAGIC_VENV). Extra arguments go to pytest, e.g. `bash scripts/test.sh -k magic`.
# pytest runs in random order (pytest-randomly, the seed printed first: pass the printed
# `--randomly-seed=N` again to replay an order) and in parallel (pytest-xdist, a worker per core;
# the browser tests share one worker, see tests/conftest.py).
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
NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --quiet --site-dir "$(mktemp -d)"

# Random order: the seed is chosen and printed here (pytest hides its own seed line under -q);
# pass the printed flag again to replay an order. --dist loadgroup: tests of one xdist_group
# (the browser tests) run one after another on one worker, the rest spread over every core.
seed=${MIRAGIC_TEST_SEED:-$((RANDOM << 15 | RANDOM))}
echo "pytest in random order, --randomly-seed=$seed; parallel: -n auto --dist loadgroup"
python -m pytest "--randomly-seed=$seed" -n auto --dist loadgroup "$@"
