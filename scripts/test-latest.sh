#!/usr/bin/env bash
# The suite against the newest release of every dependency, ignoring the pins: run it before a
# release and after `bash scripts/lock.sh --upgrade`, to see what a user installing today gets.
# It is not part of CI, so a new upstream release cannot block a landing. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MIRAGIC_LATEST_VENV:-.venv-latest}
bash scripts/venv.sh "$venv"
"$venv/tools/bin/uv" pip install -q --python "$venv/bin/python" --upgrade --reinstall-package \
    miragic-nb -e ".[dev]"
export PATH="$PWD/$venv/bin:$PATH" VIRTUAL_ENV="$PWD/$venv"

python -m ruff check .
python -m ruff format --check .
python -m mypy
python -m pytest "$@"
