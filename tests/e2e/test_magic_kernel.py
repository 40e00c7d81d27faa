"""``%%miragic`` in a real ipykernel: the messages a notebook receives, and a real interrupt.

The kernel is started by jupyter_client (as JupyterLab does) with the test emulator's URL and key
in its environment; the test reads the iopub messages the frontend would render.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from miragic_nb.emulator import Emulator

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FAST = "%config Miragic.poll_interval = 0.02\n%config Miragic.max_poll_interval = 0.2"


@pytest.fixture
def kernel(
    emulator: Emulator, tmp_path: Path
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    env = {
        **os.environ,
        "MIRAGIC_API_KEY": emulator.api_key,
        "MIRAGIC_BASE_URL": emulator.url,
        "MIRAGIC_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, cwd=str(tmp_path))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        execute(client, f"%load_ext miragic_nb\n{FAST}")
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(
    client: BlockingKernelClient,
    code: str,
    *,
    on_message: Any = None,
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """Run ``code``; return its iopub messages up to idle (``on_message`` sees each first)."""
    msg_id = client.execute(code)
    messages = []
    while True:
        try:
            message = client.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no kernel output for {timeout}s; got {messages}") from None
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if on_message is not None:
            on_message(message)
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return messages
        messages.append(message)


def of_type(messages: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["msg_type"] in types]


def collapsed_bar(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What the progress bar's output holds at the end of the cell (its last update)."""
    (bar,) = [m for m in of_type(messages, "display_data") if WIDGET_VIEW in m["content"]["data"]]
    display_id = bar["content"]["transient"]["display_id"]
    updates = [
        m
        for m in of_type(messages, "update_display_data")
        if m["content"]["transient"]["display_id"] == display_id
    ]
    data: dict[str, Any] = updates[-1]["content"]["data"]
    return data


def test_a_cell_in_a_kernel_shows_a_widget_bar_then_one_jpeg(
    kernel: tuple[KernelManager, BlockingKernelClient], emulator: Emulator
) -> None:
    _, client = kernel
    messages = execute(client, "%%miragic --size 512x384 --seed 4\na kernel-side lighthouse")
    assert of_type(messages, "error") == []
    (job_id,) = emulator.jobs
    shown = of_type(messages, "display_data", "update_display_data", "execute_result")
    bars = [m for m in shown if WIDGET_VIEW in m["content"]["data"]]
    assert [m["msg_type"] for m in bars] == ["display_data"]  # the progress bar, a real widget
    # When the cell ends, the bar's output becomes one plain line (no widget to save).
    final = collapsed_bar(messages)
    assert set(final) == {"text/plain", "text/html"}
    assert final["text/plain"].startswith("completed · ")
    images = [m for m in shown if any(k.startswith("image/") for k in m["content"]["data"])]
    assert len(images) == 1
    data = images[0]["content"]["data"]
    assert set(data) == {"image/jpeg", "text/plain"}
    import base64

    assert base64.b64decode(data["image/jpeg"]) == emulator.jobs[job_id].result
    assert job_id in data["text/plain"]
    # The widget models the bar drew with were opened on the comm channel.
    opened = of_type(messages, "comm_open")
    assert any(m["content"]["data"]["state"]["_model_name"] == "FloatProgressModel" for m in opened)


def test_a_kernel_interrupt_stops_the_wait_and_prints_the_resume_command(
    kernel: tuple[KernelManager, BlockingKernelClient], emulator: Emulator
) -> None:
    manager, client = kernel
    emulator.job_seconds = 120.0
    interrupted = False

    def interrupt_once_polling(message: dict[str, Any]) -> None:
        nonlocal interrupted
        if not interrupted and emulator.count("GET", "/api/v1/image/jobs/") >= 2:
            interrupted = True
            manager.interrupt_kernel()

    messages = execute(
        client,
        "%%miragic --size 256x256\na job that takes two minutes",
        on_message=interrupt_once_polling,
        timeout=30,
    )
    assert interrupted
    (job_id,) = emulator.jobs
    (error,) = of_type(messages, "error")
    # The cell fails (Run All and papermill stop) with the resume lines and nothing else.
    assert error["content"]["ename"] == "KeyboardInterrupt"
    shown = "\n".join(error["content"]["traceback"])
    assert f"    %miragic resume {job_id}" in shown
    assert "Traceback" not in shown
    assert "queue.py" not in shown
    assert "threading.py" not in shown
    assert len(error["content"]["traceback"]) <= 4
    final = collapsed_bar(messages)  # the rows collapse to one plain line when the cell ends
    assert WIDGET_VIEW not in final
    assert "interrupted" in final["text/plain"]
    # The kernel is usable again, and resume picks the job up without creating another.
    emulator.jobs[job_id].duration = 0.0
    resumed = execute(client, f"%miragic resume {job_id}")
    assert of_type(resumed, "error") == []
    assert emulator.count("POST") == 1
