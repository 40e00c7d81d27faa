"""Benchmark 4: what ``import miragic_nb`` and ``%load_ext miragic_nb`` cost a fresh process.

Each figure is the fastest of several fresh interpreters (the least disturbed by the other
work on a shared machine), measured alternately with its baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .common import Row, Settings

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("PIL", "requests", "ipywidgets", "werkzeug", "numpy")

_LOAD_EXT = """
import time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
started = time.perf_counter()
shell.run_line_magic("load_ext", {name!r})
print(time.perf_counter() - started)
"""


def _python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def _wall(code: str) -> float:
    started = time.perf_counter()
    _python(code)
    return time.perf_counter() - started


def _fastest(codes: dict[str, str], repeats: int, *, inner: bool = False) -> dict[str, float]:
    """Fastest run of each snippet; ``inner``: the snippet prints its own timing."""
    best = dict.fromkeys(codes, float("inf"))
    for _ in range(repeats):
        for name, code in codes.items():  # alternate, so load changes hit both alike
            seconds = float(_python(code).split()[-1]) if inner else _wall(code)
            best[name] = min(best[name], seconds)
    return best


def _heavy_loaded(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    loaded = {name.split(".")[0] for name in json.loads(_python(probe).splitlines()[-1])}
    return sorted(loaded.intersection(HEAVY))


def run(settings: Settings) -> list[Row]:
    repeats = settings.pick(5, 15)
    wall = _fastest(
        {
            "bare": "pass",
            "lazy": "import miragic_nb",
            "eager": "import miragic_nb, miragic_nb.client, miragic_nb._core.images",
        },
        repeats,
    )
    load = _fastest(
        {name: _LOAD_EXT.format(name=name) for name in ("miragic_nb", "autoreload")},
        repeats,
        inner=True,
    )
    added = wall["lazy"] - wall["bare"]
    heavy_lazy = _heavy_loaded("import miragic_nb")
    heavy_eager = _heavy_loaded("import miragic_nb.client, miragic_nb._core.images")
    heavy_ext = _heavy_loaded(
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'miragic_nb')"
    )
    return [
        Row(
            "4 import",
            "`import miragic_nb`: time added to a fresh interpreter",
            wall["eager"] - wall["bare"],
            added,
            "s",
            goal_text="≤ 50 ms added",
            passed=added <= 0.050,
            baseline_label="importing the client and images modules eagerly",
            note=f"`python -c pass` takes {wall['bare'] * 1000:.0f} ms here",
        ),
        Row(
            "4 import",
            "heavy modules loaded by `import miragic_nb`",
            len(heavy_eager),
            len(heavy_lazy),
            "modules",
            goal_text="none of " + "/".join(HEAVY),
            passed=not heavy_lazy,
            baseline_label="importing the client and images modules eagerly",
            details={"eager": heavy_eager, "lazy": heavy_lazy, "after_load_ext": heavy_ext},
            note=f"eager: {', '.join(heavy_eager)}; after `%load_ext`: {', '.join(heavy_ext)}",
        ),
        Row(
            "4 import",
            "`%load_ext miragic_nb` in a fresh shell",
            load["autoreload"],
            load["miragic_nb"],
            "s",
            goal_text="≤ 150 ms",
            passed=load["miragic_nb"] <= 0.150,
            baseline_label="`%load_ext autoreload` (IPython's own extension)",
        ),
    ]
