"""The bundled notebooks, executed by nbclient in a real python3 kernel, and the demo command.

Each notebook runs twice: once with ``MIRAGIC_API_KEY``/``MIRAGIC_BASE_URL`` pointing at an
emulator started here with a distinctive key (the "real key" path: fast jobs, and the saved
file is searched for that key), and once with no key at all (the built-in emulator path a new
user takes). ``python -m miragic_nb demo`` is run end to end as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from miragic_nb.__main__ import main as cli_main
from miragic_nb._cli import demo
from miragic_nb.emulator import Emulator

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(path.stem for path in (REPO / "notebooks").glob("*.ipynb"))
#: The fewest images each notebook shows when it runs through (image outputs + HTML <img>s).
MIN_IMAGES = {"client": 5, "quickstart": 15, "panel": 3}
#: A key nobody would type, so finding it in a saved file can only mean a leak.
SECRET_KEY = "sk-notebook-test-7f3a9c1e5b2d4680aa"
CREATE = "/api/v1/image/generate"


@pytest.fixture
def keyed_emulator() -> Iterator[Emulator]:
    with Emulator(api_key=SECRET_KEY, job_seconds=0.3) as emulator:
        yield emulator


def keyed_environment(emulator: Emulator) -> dict[str, str]:
    return {**os.environ, "MIRAGIC_API_KEY": emulator.api_key, "MIRAGIC_BASE_URL": emulator.url}


def image_mimetypes(output: dict[str, Any]) -> list[str]:
    return [mime for mime in output.get("data", {}) if mime.startswith("image/")]


def check_executed(notebook_path: Path, name: str) -> Any:
    """The checks every executed notebook must pass; returns the notebook."""
    notebook = nbformat.read(notebook_path, as_version=4)
    outputs = [
        (cell, output)
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]
    errors = [
        (output.get("ename"), output.get("evalue"))
        for cell, output in outputs
        if output.output_type == "error" and "raises-exception" not in cell.metadata.get("tags", [])
    ]
    assert errors == []
    assert demo.count_images(notebook) >= MIN_IMAGES[name]
    # The server's bytes, or one PNG for a derived image: never Pillow's PNG + JPEG pair.
    doubled = [image_mimetypes(o) for _, o in outputs if len(image_mimetypes(o)) > 1]
    assert doubled == []
    return notebook


def widget_image_values(notebook: Any) -> list[str]:
    """The (base64) values of the ipywidgets Image models saved in the widget state."""
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [
        buffer["data"]
        for model in state.values()
        if model["model_name"] == "ImageModel"
        for buffer in model.get("buffers", [])
        if buffer["path"] == ["value"] and buffer["data"]
    ]


def test_every_notebook_is_covered() -> None:
    assert set(NOTEBOOKS) >= {"client", "quickstart", "panel"}
    assert set(NOTEBOOKS) <= set(MIN_IMAGES)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name: str) -> None:
    path = REPO / "notebooks" / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"] == {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    assert "widgets" not in notebook.metadata
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_a_key_and_never_saves_it(
    name: str, keyed_emulator: Emulator, tmp_path: Path
) -> None:
    result = demo.run_notebook(
        demo.find_notebook(name), tmp_path / "out", env=keyed_environment(keyed_emulator)
    )

    notebook = check_executed(result.notebook, name)
    if name == "panel":  # result, gallery thumbnails: images inside the saved widget state
        assert len(widget_image_values(notebook)) >= 6
    # The jobs went to the emulator named by the environment, not to the built-in one.
    assert keyed_emulator.count("POST", CREATE) >= 1
    saved = result.notebook.read_text(encoding="utf-8")
    assert "application/vnd.jupyter.widget-state+json" in saved  # the state was searched too
    assert SECRET_KEY not in saved
    assert SECRET_KEY not in result.html.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [name for name in NOTEBOOKS if name != "quickstart"])
def test_notebook_runs_with_no_key(name: str, tmp_path: Path) -> None:
    # The quickstart's no-key run is the demo command's test below.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MIRAGIC_")}
    environment["MIRAGIC_HOME"] = str(tmp_path / "home")

    result = demo.run_notebook(demo.find_notebook(name), tmp_path / "out", env=environment)

    check_executed(result.notebook, name)


def test_demo_command_runs_the_quickstart_on_the_builtin_emulator(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MIRAGIC_")}
    environment["MIRAGIC_HOME"] = str(tmp_path / "home")
    # As after a fresh clone: the package is importable, the output goes to ./miragic-demo.
    environment["PYTHONPATH"] = str(REPO)
    workdir = tmp_path / "work"
    workdir.mkdir()

    finished = subprocess.run(
        [sys.executable, "-m", "miragic_nb", "demo"],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "built-in emulator" in finished.stderr
    printed = dict(
        map(str.strip, line.split(": ", 1)) for line in finished.stdout.splitlines() if ": " in line
    )
    notebook_path, html_path = Path(printed["notebook"]), Path(printed["html"])
    assert notebook_path == workdir / "miragic-demo" / "quickstart.ipynb"
    assert html_path == workdir / "miragic-demo" / "quickstart.html"
    notebook = check_executed(notebook_path, "quickstart")
    assert f"Done: {demo.count_images(notebook)} images." in finished.stdout
    assert "<img" in html_path.read_text(encoding="utf-8")


def test_failing_cell_is_reported_and_the_partial_run_kept(tmp_path: Path) -> None:
    source = tmp_path / "broken.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Broken on purpose"),
        nbformat.v4.new_code_cell("print('first cell ran')"),
        nbformat.v4.new_code_cell("raise LookupError('the second cell fails')"),
        nbformat.v4.new_code_cell("print('never runs')"),
    ]
    nbformat.write(notebook, source)

    with pytest.raises(demo.DemoError, match=r"code cell 2 failed with LookupError") as caught:
        demo.run_notebook(source, tmp_path / "out")

    saved = nbformat.read(tmp_path / "out" / "broken.ipynb", as_version=4)
    assert saved.cells[1].outputs[0]["text"] == "first cell ran\n"
    assert saved.cells[3].outputs == []
    assert str(tmp_path / "out" / "broken.ipynb") in str(caught.value)
    assert (tmp_path / "out" / "broken.html").exists()


def test_a_leaked_key_is_redacted_and_reported(tmp_path: Path) -> None:
    source = tmp_path / "leaky.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [nbformat.v4.new_code_cell("import os; print(os.environ['MIRAGIC_API_KEY'])")]
    nbformat.write(notebook, source)
    environment = {**os.environ, "MIRAGIC_API_KEY": SECRET_KEY}

    with pytest.raises(demo.DemoError, match="the API key appeared"):
        demo.run_notebook(source, tmp_path / "out", env=environment)

    saved = (tmp_path / "out" / "leaky.ipynb").read_text(encoding="utf-8")
    assert SECRET_KEY not in saved
    printed = nbformat.reads(saved, as_version=4).cells[0].outputs[0]["text"]
    assert printed == demo.REDACTED + "\n"


def test_unknown_notebook_names_the_available_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", "--notebook", "no-such-notebook"]) == 1
    message = capsys.readouterr().err
    assert "no bundled notebook named 'no-such-notebook'" in message
    assert "quickstart" in message


def test_list_prints_the_bundled_notebooks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", "--list"]) == 0
    assert capsys.readouterr().out.split() == NOTEBOOKS


def test_missing_demo_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nbclient", None)  # what an uninstalled module looks like

    with pytest.raises(ImportError, match=r'pip install "miragic-nb\[demo\]"'):
        demo.run_notebook(REPO / "notebooks" / "client.ipynb", Path("unused"))


def test_kernel_environment_lets_the_kernel_import_this_checkout() -> None:
    environment = demo.kernel_environment({"PYTHONPATH": "/elsewhere", "MIRAGIC_HOME": "/h"})

    assert environment["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
    assert environment["MIRAGIC_HOME"] == "/h"
    assert demo.kernel_environment(environment)["PYTHONPATH"] == environment["PYTHONPATH"]
