"""Applies the guarantee break ``MIRAGIC_BREAK`` names in every Python process the tests start.

Only on ``PYTHONPATH`` during ``python -m tests.prove_guarantees`` break runs (see
``tests/guarantee_breaks.py``).
"""

import importlib.util
import os
import sys
from pathlib import Path

if os.environ.get("MIRAGIC_BREAK"):
    _path = Path(__file__).resolve().parent.parent / "guarantee_breaks.py"
    _spec = importlib.util.spec_from_file_location("_miragic_guarantee_breaks", _path)
    assert _spec is not None
    assert _spec.loader is not None
    _breaks = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _breaks
    _spec.loader.exec_module(_breaks)
    _breaks.apply_from_environment()
