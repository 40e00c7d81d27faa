"""``%miragic login`` as a notebook user meets it: a real ipykernel asks its front end for the key.

The kernel is started by jupyter_client with stdin allowed (as JupyterLab does). Its
environment holds the emulator's URL but no key; the test plays the front end, answers the
kernel's ``input_request`` on the stdin channel, and reads everything the kernel published.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from miragic_nb.emulator import Emulator

REPO = Path(__file__).resolve().parents[2]
FAST = "%config Miragic.poll_interval = 0.02\n%config Miragic.max_poll_interval = 0.2"


@pytest.fixture
def keyed() -> Iterator[Emulator]:
    """An emulator that accepts one key, distinctive enough to be found in any output."""
    with Emulator(api_key="login-" + secrets.token_hex(16), job_seconds=0.2) as emulator:
        yield emulator


@pytest.fixture
def kernel(keyed: Emulator, tmp_path: Path) -> Iterator[BlockingKernelClient]:
    """A kernel that knows where the API is, but not the key, and cannot fall back offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAGIC_")}
    env.update(
        MIRAGIC_BASE_URL=keyed.url,
        MIRAGIC_HOME=str(tmp_path / "home"),
        MIRAGIC_OFFLINE_FALLBACK="0",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    )
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, cwd=str(tmp_path))
    client = manager.client()
    client.allow_stdin = True
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


class Frontend:
    """What a notebook front end sees: every iopub message, and the input requests it answered."""

    def __init__(self, client: BlockingKernelClient) -> None:
        self.client = client
        self.published: list[dict[str, Any]] = []
        self.input_requests: list[dict[str, Any]] = []

    def execute(self, code: str, *, answer: str | None = None) -> list[dict[str, Any]]:
        """Run ``code``, typing ``answer`` if the kernel asks; return its iopub messages."""
        msg_id = self.client.execute(code, allow_stdin=True)
        messages: list[dict[str, Any]] = []
        if answer is not None:
            request = self._input_request(msg_id, messages)
            assert request["msg_type"] == "input_request"
            assert request["parent_header"]["msg_id"] == msg_id
            self.input_requests.append(request["content"])
            self.client.input(answer)
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=60)
            except queue.Empty:
                raise AssertionError(f"no kernel output for 60s; got {messages}") from None
            self.published.append(message)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return messages
            messages.append(message)

    def _input_request(self, msg_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The kernel's request for input, while its output is read too: a cell that ends or
        fails without asking says so with what it printed, instead of a silent timeout."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                request: dict[str, Any] = self.client.get_stdin_msg(timeout=0.2)
                return request
            except queue.Empty:
                pass
            while True:
                try:
                    message = self.client.get_iopub_msg(timeout=0)
                except queue.Empty:
                    break
                self.published.append(message)
                if message["parent_header"].get("msg_id") != msg_id:
                    continue
                idle = message["msg_type"] == "status"
                if idle and message["content"]["execution_state"] == "idle":
                    raise AssertionError(f"the cell ended without asking for input: {messages}")
                messages.append(message)
        raise AssertionError(f"no input request for 60s; the cell published {messages}")


def of_type(messages: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["msg_type"] in types]


def printed(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in of_type(messages, "stream"))


def test_login_through_the_stdin_channel_then_a_cell_uses_the_key(
    kernel: BlockingKernelClient, keyed: Emulator
) -> None:
    frontend = Frontend(kernel)
    loaded = frontend.execute(f"%load_ext miragic_nb\n{FAST}")
    assert of_type(loaded, "error") == []

    # Without a key (and no offline fallback) a cell is refused before any request.
    refused = frontend.execute("%%miragic --size 256x256\nbefore login")
    (error,) = of_type(refused, "error")
    assert "%miragic login" in error["content"]["evalue"]
    assert keyed.requests == []

    login = frontend.execute("%miragic login", answer=keyed.api_key)
    (asked,) = frontend.input_requests
    assert asked["password"] is True  # the front end hides what is typed
    assert asked["prompt"].startswith("Miragic API key")
    assert of_type(login, "error") == []
    assert "Key set for this session" in printed(login)

    cell = frontend.execute("%%miragic --size 256x256 --seed 5\na lighthouse after login")
    assert of_type(cell, "error") == []
    (job_id,) = keyed.jobs
    assert keyed.jobs[job_id].form["prompt"] == "a lighthouse after login"
    # Every request the cell made carried the typed key, and the emulator accepted each one.
    assert keyed.requests
    for request in keyed.requests:
        assert request.headers.get("X-API-Key") == keyed.api_key
        assert request.status < 400
    shown = of_type(cell, "display_data", "update_display_data", "execute_result")
    assert any("image/jpeg" in m["content"]["data"] for m in shown)

    # The key is in no message the front end received, whole or in part (an 8-character
    # piece of its random tail would be a chance of 1 in 64**8 per place in the images' base64).
    everything = json.dumps([m["content"] for m in frontend.published], default=str)
    tail = keyed.api_key[len("login-") :]
    pieces = {tail[i : i + 8] for i in range(len(tail) - 7)}
    assert [piece for piece in pieces if piece in everything] == []


def test_an_empty_answer_changes_nothing(kernel: BlockingKernelClient, keyed: Emulator) -> None:
    frontend = Frontend(kernel)
    frontend.execute(f"%load_ext miragic_nb\n{FAST}")
    login = frontend.execute("%miragic login", answer="   ")
    (asked,) = frontend.input_requests
    assert asked["password"] is True
    # A UsageError: IPython prints it (no traceback) instead of sending an error message.
    assert "%miragic login: no key entered; nothing changed" in printed(login)
    cell = frontend.execute("%%miragic --size 256x256\nstill no key")
    assert "%miragic login" in of_type(cell, "error")[0]["content"]["evalue"]
    assert keyed.requests == []
