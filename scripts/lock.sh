#!/usr/bin/env bash
# Refresh the pins from pyproject.toml, then run `bash scripts/test.sh` and commit the files:
#   requirements/dev.txt     every tool and dependency at the version the suite was checked with
#                            (one resolution for every Python the project supports);
#   requirements/oldest.txt  each direct dependency at its declared lower bound (Python 3.11, the
#                            CI's Python), which `bash scripts/test-oldest.sh` runs the suite on.
# `bash scripts/lock.sh --upgrade` moves every pin to the newest release; without it, pins that
# still satisfy pyproject.toml stay where they are.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MIRAGIC_VENV:-.venv}
bash scripts/venv.sh "$venv"
uv="$venv/tools/bin/uv"
header="--custom-compile-command=bash scripts/lock.sh"

"$uv" pip compile -q "$header" --universal --python-version 3.10 "$@" \
    pyproject.toml --extra dev -o requirements/dev.txt
"$uv" pip compile -q "$header" --python-version 3.11 --resolution lowest-direct "$@" \
    pyproject.toml --extra demo --extra test -o requirements/oldest.txt
