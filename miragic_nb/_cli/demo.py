"""Run a bundled notebook headless in a real kernel and save what it produced.

``python -m miragic_nb demo`` executes ``quickstart.ipynb`` with nbclient in a ``python3``
kernel, then writes the executed notebook and an HTML rendering of it (nbconvert). The kernel
inherits the caller's environment, so with no ``MIRAGIC_API_KEY`` the notebook runs on the
built-in emulator, and with a key it calls the real API, unchanged.

The notebooks ship in the wheel as ``miragic_nb/notebooks`` and live in ``<repo>/notebooks`` in a
source checkout; both places are searched. nbclient, nbformat, nbconvert and ipykernel are the
``demo`` extra and are imported only here, when a notebook is about to run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import site
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miragic_nb._core.config import ENV_API_KEY, ENV_BASE_URL

DEFAULT_NOTEBOOK = "quickstart"
DEFAULT_OUTPUT_DIR = Path("miragic-demo")
#: Seconds one cell may run. Generous: with a real key, a grid cell waits for several jobs.
DEFAULT_CELL_TIMEOUT_S = 900.0
KERNEL_NAME = "python3"
#: What replaces the API key if it ever shows up in an executed notebook.
REDACTED = "[MIRAGIC_API_KEY redacted]"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # miragic_nb/
_DEMO_MODULES = ("nbclient", "nbformat", "nbconvert", "ipykernel")
_INSTALL_HINT = 'pip install "miragic-nb[demo]"'


class DemoError(Exception):
    """The demo could not run, or a cell failed; the message is short enough for a terminal."""


@dataclass(frozen=True)
class DemoResult:
    """Where the executed notebook and its HTML rendering were written."""

    notebook: Path
    html: Path
    images: int


def notebook_dirs() -> list[Path]:
    """Where bundled notebooks are looked for: inside the package (wheel), then the repo."""
    candidates = [_PACKAGE_DIR / "notebooks", _PACKAGE_DIR.parent / "notebooks"]
    return [path for path in candidates if path.is_dir()]


def available_notebooks() -> list[str]:
    """Names (without ``.ipynb``) of the bundled notebooks, sorted."""
    return sorted({path.stem for folder in notebook_dirs() for path in folder.glob("*.ipynb")})


def find_notebook(name: str) -> Path:
    """The bundled notebook called ``name`` (``quickstart`` or ``quickstart.ipynb``)."""
    stem = name.removesuffix(".ipynb")
    for folder in notebook_dirs():
        path = folder / f"{stem}.ipynb"
        if path.is_file():
            return path
    known = ", ".join(available_notebooks()) or "none found"
    raise DemoError(f"no bundled notebook named {name!r} (available: {known})")


def kernel_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment, plus a ``PYTHONPATH`` entry so the kernel imports this copy.

    A source checkout run as ``python -m miragic_nb`` from the repo root is importable only
    because of the current directory; the kernel runs elsewhere (in the output directory).
    """
    env = dict(os.environ if base is None else base)
    package_root = str(_PACKAGE_DIR.parent)
    installed = {*site.getsitepackages(), site.getusersitepackages()}
    if package_root not in installed:
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if package_root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    return env


def describe_target(env: Mapping[str, str]) -> str:
    """Where the notebook's jobs will go, in words (never the key itself)."""
    if env.get(ENV_API_KEY, "").strip():
        return f"the Miragic API at {env.get(ENV_BASE_URL) or 'https://backend.miragic.ai'}"
    return "the built-in emulator (MIRAGIC_API_KEY is not set)"


def run_notebook(
    source: Path,
    output_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cell_timeout: float = DEFAULT_CELL_TIMEOUT_S,
    on_cell: Callable[[int, int, str], None] | None = None,
) -> DemoResult:
    """Execute ``source`` in a fresh ``python3`` kernel; write ``<output_dir>/<name>.ipynb|html``.

    The kernel's working directory is ``output_dir``, so files a notebook saves land next to
    the results. ``on_cell(number, total, first_line)`` is called as each code cell starts.
    On a failing cell the partly executed notebook is still written, then ``DemoError`` says
    which cell failed and how. The API key, if set, must not appear in what is saved: should it
    ever, it is redacted and ``DemoError`` reports it as a bug.
    """
    nbformat, nbclient, exporters = _demo_modules()
    kernel_env = kernel_environment(env)
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(source, as_version=4)
    code_cells = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]

    def cell_started(cell: Any, cell_index: int, **_: Any) -> None:
        if on_cell is not None and cell_index in code_cells:
            first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
            on_cell(code_cells.index(cell_index) + 1, len(code_cells), first_line)

    failed_cells: list[int] = []

    def cell_failed(cell: Any, cell_index: int, **_: Any) -> None:
        # Not every failure leaves an "error" output (IPython prints a UsageError to stderr).
        if "raises-exception" not in cell.metadata.get("tags", []):
            failed_cells.append(cell_index)

    client = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=cell_timeout,
        startup_timeout=120,
        store_widget_state=True,
        resources={"metadata": {"path": str(output_dir)}},
        on_cell_start=cell_started,
        on_cell_error=cell_failed,
        config=_kernel_manager_config(),
    )
    failure: str | None = None
    try:
        client.execute(env=kernel_env)
    except nbclient.exceptions.CellExecutionError as exc:
        number = code_cells.index(failed_cells[0]) + 1 if failed_cells else None
        failure = _describe_failure(number, exc.ename, exc.evalue)
    except nbclient.exceptions.CellTimeoutError:
        failure = f"a cell ran longer than {cell_timeout:g}s (raise it with --timeout)"
    except nbclient.exceptions.DeadKernelError as exc:
        failure = f"the kernel died: {exc}"
    except Exception as exc:  # e.g. jupyter_client.NoSuchKernel, a kernel that never started
        failure = f"the {KERNEL_NAME} kernel could not run the notebook: {exc}"

    leaked = _redact_key(notebook, kernel_env.get(ENV_API_KEY, ""))
    target = output_dir / source.name
    nbformat.write(notebook, target)
    html = target.with_suffix(".html")
    body, _ = exporters.HTMLExporter().from_notebook_node(notebook)
    html.write_text(body, encoding="utf-8")

    if failure is not None:
        raise DemoError(f"{source.name}: {failure}; the partial run is in {target}")
    if leaked:
        raise DemoError(
            f"{source.name}: the API key appeared in the executed notebook (a bug, please "
            f"report it); it was redacted before saving {target}"
        )
    return DemoResult(notebook=target, html=html, images=count_images(notebook))


def count_images(notebook: Any) -> int:
    """How many images the outputs of ``notebook`` show: image outputs and HTML ``<img>``s."""
    total = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            total += any(mime.startswith("image/") for mime in data)
            html = data.get("text/html", "")
            total += ("".join(html) if isinstance(html, list) else html).count("<img")
    return total


def _describe_failure(code_cell_number: int | None, ename: str, evalue: str) -> str:
    where = f"code cell {code_cell_number}" if code_cell_number else "a cell"
    return f"{where} failed with {ename}: {_first_line(evalue)}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 200 else line[:199] + "…"


def _redact_key(node: Any, key: str) -> bool:
    """Replace ``key`` wherever it occurs in string values of ``node``; True if it occurred."""
    key = key.strip()
    if len(key) < 4:  # a one-character "key" would redact half the notebook
        return False
    found = False
    items: Any
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return False
    for index, value in list(items):
        if isinstance(value, str):
            if key in value:
                node[index] = value.replace(key, REDACTED)
                found = True
        elif _redact_key(value, key):
            found = True
    return found


def _kernel_manager_config() -> Any:
    """CurveZMQ between us and the kernel where both sides support it.

    ipykernel 7 warns on stderr about plain TCP otherwise; jupyter_client refuses "auto" when
    pyzmq lacks Curve, and versions without the setting ignore it.
    """
    import zmq
    from traitlets.config import Config

    if not zmq.has("curve"):
        return Config()
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def _demo_modules() -> tuple[Any, Any, Any]:
    """nbformat, nbclient (with its exceptions) and nbconvert.exporters, or an ImportError."""
    missing = [name for name in _DEMO_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"running notebooks needs {', '.join(missing)}: {_INSTALL_HINT}",
            name=missing[0],
        )
    nbformat = importlib.import_module("nbformat")
    nbclient = importlib.import_module("nbclient")
    importlib.import_module("nbclient.exceptions")
    # Not plain "nbconvert": its __init__ swallows a failing import and lacks HTMLExporter.
    exporters = importlib.import_module("nbconvert.exporters")
    return nbformat, nbclient, exporters
