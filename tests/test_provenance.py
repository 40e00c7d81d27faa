"""Saved notebooks say how every picture in them was made, and ``%miragic history --notebook``
reads that back against the job history.

The notebook is executed by nbclient in a real ``python3`` kernel against an emulator started
here with a distinctive key, so the saved file can be searched for it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
import pytest

from miragic_nb._cli import demo
from miragic_nb._core.provenance import FIELDS
from miragic_nb.emulator import Emulator
from tests.test_notebooks import SECRET_KEY, keyed_emulator, keyed_environment

if TYPE_CHECKING:
    from .magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]
__all__ = ["keyed_emulator"]  # a fixture, used by name

CELLS = [
    "%load_ext miragic_nb",
    "%%miragic --seed 5 --size 256x256 -o one\na lighthouse at dusk",
    "%%miragic --n 2 --seed 7 --size 256x320\ntwo boats",
    "%%miragic --model flux,turbo --seed 3 --size 320x256\na harbour",
    # The same request as the first: reused from the history, no new job.
    "%%miragic --seed 5 --size 256x256\na lighthouse at dusk",
    "one",
    (
        "from miragic_nb import Panel\n"
        "panel = Panel()\n"
        "panel.prompt.value = 'the panel harbour'\n"
        "panel.width.value = panel.height.value = 256\n"
        "panel.generate_button.click()\n"
        "await panel.wait()\n"
        "panel.image"
    ),
]


def pictures(output: dict[str, Any]) -> int:
    """How many pictures an output shows: an image mimetype, or <img> tags in its HTML."""
    data = output.get("data", {})
    if any(mime.startswith("image/") for mime in data):
        return 1
    return len(re.findall(r"<img\b", data.get("text/html", "")))


def described(output: dict[str, Any]) -> list[dict[str, Any]]:
    meta = output.get("metadata", {}).get("miragic")
    if meta is None:
        return []
    return list(meta["images"]) if "images" in meta else [meta]


@pytest.fixture
def executed(tmp_path: Path, keyed_emulator: Emulator) -> tuple[Path, Emulator]:
    source = tmp_path / "made.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [nbformat.v4.new_code_cell(cell) for cell in CELLS]
    nbformat.write(notebook, source)
    result = demo.run_notebook(source, tmp_path / "out", env=keyed_environment(keyed_emulator))
    return result.notebook, keyed_emulator


def test_every_picture_in_the_saved_notebook_says_how_it_was_made(
    executed: tuple[Path, Emulator],
) -> None:
    path, emulator = executed
    saved = path.read_text(encoding="utf-8")
    assert SECRET_KEY not in saved
    notebook = nbformat.reads(saved, as_version=4)
    per_cell = [
        [(pictures(o), described(o)) for o in cell.outputs if pictures(o)]
        for cell in notebook.cells
    ]
    # Every output that shows pictures describes each one of them.
    for outputs in per_cell:
        for count, entries in outputs:
            assert len(entries) == count
    entries = [entry for outputs in per_cell for _, entry_list in outputs for entry in entry_list]
    assert len(entries) == 1 + 2 + 2 + 1 + 1 + 1
    for entry in entries:
        assert set(entry) >= {*FIELDS, "emulator"}
        assert entry["emulator"] is False  # a configured API, not the built-in emulator
        job = emulator.jobs[entry["job_id"]]  # the server's own record of that job
        assert (entry["prompt"], entry["model"]) == (job.prompt, job.model)
        assert (entry["width"], entry["height"]) == (job.width, job.height)
        # Every job is sent with a seed (the client picks one when the user gave none), and the
        # output records the seed the server received.
        assert job.parameters["seed"]
        assert entry["seed"] == job.seed
        assert entry["image_url"] is None
        assert not any(SECRET_KEY in json.dumps(value) for value in entry.values())

    first, grid, comparison, reused, shown_again, panel = (
        [entry for _, entry_list in outputs for entry in entry_list] for outputs in per_cell[1:]
    )
    assert [e["seed"] for e in grid] == [7, 8]
    assert [e.get("label") for e in grid] == ["seed 7", "seed 8"]
    assert [e["model"] for e in comparison] == ["flux", "turbo"]
    assert reused[0]["job_id"] == first[0]["job_id"]
    assert reused[0]["reused"] is True
    assert first[0]["reused"] is False
    assert shown_again == first
    assert panel[0]["prompt"] == "the panel harbour"
    assert len(emulator.jobs) == 1 + 2 + 2 + 1  # the reused result made no job

    # The panel's own pictures (result and gallery thumbnail) live in the saved widget state.
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    widget_pictures = [
        model["state"]
        for model in state.values()
        if model["model_name"] == "ImageModel"
        and any(b["path"] == ["value"] and b["data"] for b in model.get("buffers", []))
    ]
    assert len(widget_pictures) == 2
    for picture in widget_pictures:
        assert picture["miragic"] == panel[0]


def test_history_notebook_lists_its_jobs_and_whether_the_store_has_them(
    executed: tuple[Path, Emulator], run: Runner, tmp_path: Path
) -> None:
    path, emulator = executed
    # The kernel recorded its jobs in MIRAGIC_HOME, which this shell reads too.
    listed = run(f"%miragic history --notebook {path}")
    assert listed.error is None
    lines = listed.io.stdout.splitlines()
    # 8 image outputs, and the panel's job once more from the widget state.
    assert lines[0].startswith(f"9 images in {path}; 9 of them in the history at ")
    assert len(lines) == 10
    assert all("in the history (COMPLETED)" in line for line in lines[1:])
    assert lines[-1].startswith("panel  job ")
    assert '"the panel harbour"' in lines[-1]
    assert {job_id for job_id in emulator.jobs if any(job_id in line for line in lines)} == set(
        emulator.jobs
    )
    assert any('"two boats"' in line and "seed 8" in line for line in lines)

    run(f"%config Miragic.home = {str(tmp_path / 'elsewhere')!r}")
    elsewhere = run(f"%miragic history --notebook {path}").io.stdout.splitlines()
    assert elsewhere[0].endswith("0 of them in the history at " + str(tmp_path / "elsewhere"))
    assert all("not in the history" in line for line in elsewhere[1:])


def test_history_notebook_refuses_what_is_not_a_notebook(run: Runner, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not json", encoding="utf-8")
    failed = run(f"%miragic history --notebook {text}")
    assert "is not a notebook" in failed.text
    missing = run(f"%miragic history --notebook {tmp_path / 'gone.ipynb'}")
    assert "No such file" in missing.text
    empty = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), empty)
    assert f"No Miragic images in {empty}." in run(f"%miragic history --notebook {empty}").text
