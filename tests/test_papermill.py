"""``%%miragic`` notebooks under papermill: parameters, failures, and no waiting for input.

Each notebook is written by the test, then run by ``papermill.execute_notebook`` in a real
``python3`` kernel. There is no ``MIRAGIC_API_KEY`` (the autouse fixture removes it), so the
kernel uses the built-in emulator, as a CI job without secrets would. The last test runs
IPython with no terminal and a closed stdin (a script in cron or CI).
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from PIL import Image

#: Longest any cell may run; a cell waiting for input would hit it instead of hanging the suite.
CELL_TIMEOUT_S = 120


def write_notebook(path: Path, *sources: str, parameters: str | None = None) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    if parameters is not None:
        cells.insert(0, nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    notebook.cells = cells
    nbformat.write(notebook, path)
    return path


def execute(source: Path, target: Path, **parameters: Any) -> Any:
    papermill.execute_notebook(
        str(source),
        str(target),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(source.parent),
        execution_timeout=CELL_TIMEOUT_S,
        progress_bar=False,
    )
    return nbformat.read(target, as_version=4)


def shown_text(cell: Any) -> str:
    """Everything a cell's outputs print: streams and error tracebacks."""
    return "".join(
        output.get("text", "") + "\n".join(output.get("traceback", [])) for output in cell.outputs
    )


def test_a_parameterised_notebook_runs_and_shows_the_image(tmp_path: Path) -> None:
    source = write_notebook(
        tmp_path / "report.ipynb",
        "%load_ext miragic_nb",
        "%%miragic --seed {seed} --size {side}x{side} -o picture\n{subject}, watercolour",
        "print(picture.info['miragic']['prompt'], picture.size)",
        parameters='subject = "a harbour"\nseed = 1\nside = 512',
    )

    executed = execute(
        source, tmp_path / "report-out.ipynb", subject="a papermill lighthouse", seed=11, side=256
    )

    # papermill injected the parameters after the tagged cell, and the magic used them.
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    magic_cell = next(c for c in executed.cells if c.source.startswith("%%miragic"))
    images = [o for o in magic_cell.outputs if "image/jpeg" in o.get("data", {})]
    assert len(images) == 1
    picture = Image.open(io.BytesIO(base64.b64decode(images[0]["data"]["image/jpeg"])))
    assert picture.size == (256, 256)
    assert "seed 11" in images[0]["data"]["text/plain"]
    made = images[0]["metadata"]["miragic"]
    assert (made["prompt"], made["seed"], made["emulator"]) == (
        "a papermill lighthouse, watercolour",
        11,
        True,
    )
    printed = executed.cells[-1].outputs[0]["text"]
    assert printed == "a papermill lighthouse, watercolour (256, 256)\n"


#: Sets up the kernel's built-in emulator to fail every job, as the real service may.
FAIL_EVERY_JOB = (
    "from miragic_nb import session as builtin\n"
    "builtin.builtin_emulator().faults.configure(\n"
    "    force_failure=True, failure_message='NSFW content detected'\n"
    ")"
)


@pytest.mark.parametrize(
    ("setup", "cell", "says"),
    [
        ("", "%%miragic --width 100\na harbour", "256"),
        (FAIL_EVERY_JOB, "%%miragic --size 256x256\na harbour", "NSFW content detected"),
    ],
    ids=["bad-option", "job-failed"],
)
def test_a_failing_miragic_cell_fails_the_run(
    tmp_path: Path, setup: str, cell: str, says: str
) -> None:
    source = write_notebook(
        tmp_path / "broken.ipynb", "%load_ext miragic_nb", setup, cell, "print('after')"
    )

    with pytest.raises(papermill.PapermillExecutionError):
        execute(source, tmp_path / "broken-out.ipynb")

    executed = nbformat.read(tmp_path / "broken-out.ipynb", as_version=4)
    failed = next(c for c in executed.cells if c.source == cell)
    # A UsageError is printed on stderr (papermill's exception carries no text for it).
    assert says in shown_text(failed)
    assert executed.cells[-1].outputs == []  # the run stopped at the failing cell


def test_a_missing_key_with_the_fallback_off_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_OFFLINE_FALLBACK", "0")  # the kernel inherits the environment
    source = write_notebook(
        tmp_path / "nokey.ipynb", "%load_ext miragic_nb", "%%miragic\na harbour"
    )

    with pytest.raises(papermill.PapermillExecutionError, match="MIRAGIC_API_KEY"):
        execute(source, tmp_path / "nokey-out.ipynb")


def test_login_without_stdin_fails_at_once_with_one_line(tmp_path: Path) -> None:
    source = write_notebook(tmp_path / "login.ipynb", "%load_ext miragic_nb", "%miragic login")

    # papermill runs kernels without stdin: IPython's getpass raises StdinNotImplementedError.
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        execute(source, tmp_path / "login-out.ipynb")

    assert caught.value.ename == "MissingAPIKeyError"
    assert "set MIRAGIC_API_KEY in the kernel's environment" in caught.value.evalue
    login_cell = nbformat.read(tmp_path / "login-out.ipynb", as_version=4).cells[-1]
    shown = shown_text(login_cell)
    assert "set MIRAGIC_API_KEY in the kernel's environment" in shown
    assert "Traceback" not in shown
    assert "StdinNotImplementedError" not in shown
    assert len([line for line in shown.splitlines() if line.strip()]) == 1


def test_login_with_a_closed_stdin_and_no_terminal_fails_at_once(tmp_path: Path) -> None:
    script = tmp_path / "login.ipy"
    script.write_text("%load_ext miragic_nb\n%miragic login\nprint('after')\n", encoding="utf-8")

    finished = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", str(script)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,  # no controlling terminal: getpass falls back to stdin
        timeout=CELL_TIMEOUT_S,
        check=False,
    )

    shown = finished.stdout + finished.stderr
    assert "set MIRAGIC_API_KEY in the kernel's environment" in shown
    assert "EOFError" not in shown
    assert "after" not in finished.stdout  # the script stopped at the failing line
