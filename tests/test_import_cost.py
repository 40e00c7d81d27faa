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


#: What %load_ext may not load: the HTTP stack, Pillow, widgets, and the store's own
#: dependencies (IPython itself already loads sqlite3); the first cell loads them.
NOT_AT_LOAD_EXT = (*HEAVY, "platformdirs")
_LOAD_EXT = (
    "from IPython.core.interactiveshell import InteractiveShell\n"
    "shell = InteractiveShell.instance()\n"
    "shell.run_line_magic('load_ext', 'miragic_nb')\n"
)


def test_load_ext_loads_only_the_magic_and_its_parser() -> None:
    loaded = modules_after(_LOAD_EXT)
    assert "miragic_nb" in loaded
    assert loaded.isdisjoint(NOT_AT_LOAD_EXT), sorted(loaded.intersection(NOT_AT_LOAD_EXT))
    inside = modules_inside_after(_LOAD_EXT)
    heavy_inside = ("miragic_nb._engine.engine", "miragic_nb._store", "miragic_nb._api")
    assert not any(name.startswith(heavy_inside) for name in inside), sorted(inside)
    assert "miragic_nb.client" not in inside


def test_the_first_cell_loads_what_it_needs_and_keeps_jpeg_out(tmp_path: Path) -> None:
    # The deferred JPEG printer still applies once Pillow arrives with the first result.
    cell = (
        _LOAD_EXT
        + f"import os\nos.environ['MIRAGIC_HOME'] = {str(tmp_path)!r}\n"
        + "shell.run_cell('%%miragic -W 256 -H 256\\na first cell')\n"
        + "from PIL import Image\n"
        + "data, _ = shell.display_formatter.format(Image.new('RGB', (8, 8)))\n"
        + "assert 'image/jpeg' not in data and 'image/png' in data, sorted(data)\n"
    )
    loaded = modules_after(cell)
    assert {"requests", "PIL", "platformdirs"} <= loaded


def modules_inside_after(code: str) -> set[str]:
    """Full names of the miragic_nb modules loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    names = json.loads(result.stdout.splitlines()[-1])
    return {name for name in names if name.startswith("miragic_nb")}
