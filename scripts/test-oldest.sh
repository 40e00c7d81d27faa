#!/usr/bin/env bash
# Run the suite, browser tests aside, with every dependency at its declared lower bound
# (requirements/oldest.txt, made by scripts/lock.sh). A failure here means a lower bound in
# pyproject.toml is not honest: raise it, or make the code work on the older release.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MIRAGIC_OLDEST_VENV:-.venv-oldest}
bash scripts/venv.sh "$venv" requirements/oldest.txt
export PATH="$PWD/$venv/bin:$PATH" VIRTUAL_ENV="$PWD/$venv"
"$venv/bin/python" -m pytest -m "not browser" "$@"
