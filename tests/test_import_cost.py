"""``import miragic_nb`` stays cheap: no heavy dependency is imported until it is needed.

Checked in a fresh interpreter, where ``sys.modules`` starts clean (inside pytest, other tests
have long since imported everything). A behaviour test, not a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("PIL", "requests", "ipywidgets", "werkzeug", "numpy")


def modules_after(code: str) -> set[str]:
    """Top-level module names loaded in a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}


def test_import_loads_no_heavy_module() -> None:
    loaded = modules_after("import miragic_nb")
    assert "miragic_nb" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))


def test_error_classes_are_usable_without_heavy_imports() -> None:
    # Catching the package's errors must not drag in the HTTP stack or Pillow.
    loaded = modules_after(
        "import miragic_nb\n"
        "try:\n"
        "    raise miragic_nb.JobTimeoutError('late', job_id='j1')\n"
        "except miragic_nb.MiragicError:\n"
        "    pass"
    )
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))


@pytest.mark.parametrize(("name", "brings"), [("Client", "requests"), ("GeneratedImage", "PIL")])
def test_public_names_load_their_dependencies_on_first_use(name: str, brings: str) -> None:
    # The probe itself must be able to fail: the lazy names do pull their modules in.
    assert brings in modules_after(f"import miragic_nb\nmiragic_nb.{name}")
