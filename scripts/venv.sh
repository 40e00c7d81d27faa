#!/usr/bin/env bash
# Make a virtualenv hold exactly one requirements file plus this project (editable), creating it
# if needed: `bash scripts/venv.sh DIR requirements/dev.txt` (with no file, only make sure DIR and
# its uv exist). Nothing from the machine's own
# site-packages is visible inside it. uv (pinned in requirements/uv.txt) is kept in DIR/tools,
# outside the environment it installs, so syncing never removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1
requirements=${2:-}
python=${PYTHON:-python3}
unset PYTHONPATH PYTHONHOME PIP_USER

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
uv="$venv/tools/bin/uv"
wanted_uv=$(grep -E '^uv==' requirements/uv.txt)
if [ ! -x "$uv" ] || [ "uv==$("$uv" --version | cut -d' ' -f2)" != "$wanted_uv" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input \
        --target "$venv/tools" --upgrade "$wanted_uv"
fi
[ -n "$requirements" ] || exit 0
"$uv" pip sync -q --python "$venv/bin/python" "$requirements"
"$uv" pip install -q --python "$venv/bin/python" --no-deps -e .
