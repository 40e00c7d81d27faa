#!/usr/bin/env bash
# Run the suite, browser tests aside, with every dependency at its declared lower bound
# (requirements/oldest.txt, made by scripts/lock.sh). A failure here means a lower bound in
# pyproject.toml is not honest: raise it, or make the code work on the older release.
# The browser tests and those that need the dev install's tools (marker devtools: the import
# graph, the docs site, the app's websocket) are left out: only the demo and test extras are here.
# Extra arguments go to pytest. Random order and parallel workers, as in scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MIRAGIC_OLDEST_VENV:-.venv-oldest}
bash scripts/venv.sh "$venv" requirements/oldest.txt
export PATH="$PWD/$venv/bin:$PATH" VIRTUAL_ENV="$PWD/$venv"
# Random order: the seed is chosen and printed here (pytest hides its own seed line under -q);
# pass the printed flag again to replay an order. --dist loadgroup: tests of one xdist_group
# (the browser tests) run one after another on one worker, the rest spread over every core.
seed=${MIRAGIC_TEST_SEED:-$((RANDOM << 15 | RANDOM))}
echo "pytest in random order, --randomly-seed=$seed; parallel: -n auto --dist loadgroup"
"$venv/bin/python" -m pytest "--randomly-seed=$seed" -n auto --dist loadgroup -m "not browser and not devtools" "$@"
