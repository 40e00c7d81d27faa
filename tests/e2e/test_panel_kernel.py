"""The panel in a real ipykernel: a button click that arrives as a comm message starts a job
without blocking the kernel, and a notebook saved with its widget state holds no key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

from miragic_nb.emulator import Emulator

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-kernel-secret-8d41c3a0f6"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.fixture
def keyed_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """An emulator whose key reaches the kernel only through its environment."""
    with Emulator(api_key=SECRET, job_seconds=0.5) as emulator:
        monkeypatch.setenv("MIRAGIC_API_KEY", SECRET)
        monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
        # The kernel is a child process: it imports this checkout, like the test process.
        path = os.environ.get("PYTHONPATH")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path) if p))
        yield emulator


def test_a_notebook_with_stored_widget_state_contains_no_key(
    keyed_emulator: Emulator, tmp_path: Path
) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell("import miragic_nb\npanel = miragic_nb.Panel()\npanel"),
        nbformat.v4.new_code_cell(
            'panel.prompt.value = "a lighthouse"\n'
            'panel.seed.value = "5"\n'
            "panel.generate_button.click()\n"
            "await panel.wait()\n"
            "print(panel.history[0].state, panel.image.size)"
        ),
    ]
    NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    assert nb.cells[1].outputs[0]["text"].strip() == "completed (1024, 1024)"
    view = nb.cells[0].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in view
    assert SECRET not in view["text/plain"]
    # Widget state was stored, down to the result image, so the key could have been in it.
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    models = {entry["model_name"] for entry in state.values()}
    assert {"TextareaModel", "DropdownModel", "ImageModel", "FloatProgressModel"} <= models
    assert any("a lighthouse" in json.dumps(entry["state"]) for entry in state.values())
    saved = nbformat.writes(nb)
    assert SECRET not in saved
    assert all(SECRET.encode() not in blob for blob in _buffers(state))
    assert any(blob.startswith(b"\xff\xd8\xff") for blob in _buffers(state))  # the JPEG


def test_a_click_from_the_frontend_runs_the_job_without_blocking_the_kernel(
    keyed_emulator: Emulator,
) -> None:
    keyed_emulator.job_seconds = 60  # long enough to see the kernel stay free
    manager, kernel = start_new_kernel(kernel_name="python3")
    try:
        button_id = _run(
            kernel,
            "import miragic_nb\n"
            "panel = miragic_nb.Panel()\n"
            'panel.prompt.value = "clicked in the browser"\n'
            "print(panel.generate_button.model_id)",
        )
        # What the browser sends when the Generate button is clicked.
        message = kernel.session.msg(
            "comm_msg",
            {"comm_id": button_id, "data": {"method": "custom", "content": {"event": "click"}}},
        )
        kernel.shell_channel.send(message)
        # The kernel answers the next cell while the job is still running.
        assert _run(kernel, "print(len(panel.history), panel.history[0].is_active)") == "1 True"
        job_id = _run(
            kernel,
            "import asyncio\n"
            "while panel.history[0].job_id is None:\n"
            "    await asyncio.sleep(0.02)\n"
            "print(panel.history[0].job_id)",
        )
        assert job_id in keyed_emulator.jobs
        keyed_emulator.job_seconds = 0.2
        assert _run(kernel, "panel.cancel()\nprint(panel.history[0].state)") == "cancelled"
        assert "%miragic resume" in _run(kernel, "print(panel.status.value)")
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)


def _run(kernel: BlockingKernelClient, code: str) -> str:
    """Execute ``code``; return what it printed (stripped), failing on an error."""
    printed: list[str] = []
    errors: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            errors.append("\n".join(msg["content"]["traceback"]))

    reply = kernel.execute_interactive(code, timeout=60, output_hook=collect)
    assert reply["content"]["status"] == "ok", errors
    return "".join(printed).strip()


def _buffers(state: dict[str, Any]) -> list[bytes]:
    return [
        base64.b64decode(buffer["data"])
        for entry in state.values()
        for buffer in entry.get("buffers", [])
    ]


EXIT_MID_JOB = """
import asyncio
import miragic_nb

panel = miragic_nb.Panel(miragic_nb.Client())
panel.prompt.value = "still polling at exit"


async def start() -> None:
    panel.generate_button.click()
    while panel.history[0].job_id is None:
        await asyncio.sleep(0.02)


# Like a kernel shutting down: the loop stops with the job's task still pending.
asyncio.new_event_loop().run_until_complete(start())
print("leaving", panel.history[0].state)
"""


def test_a_job_still_polling_does_not_hold_up_the_interpreter_exit(
    keyed_emulator: Emulator,
) -> None:
    keyed_emulator.job_seconds = 600
    done = subprocess.run(
        [sys.executable, "-c", EXIT_MID_JOB],
        capture_output=True,
        text=True,
        timeout=60,  # a joined worker would poll for the job's 600 s
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaving pending"
    assert len(keyed_emulator.jobs) == 1
