"""``python -m miragic_nb app`` from a visitor's side of the kernel websocket, without a browser.

A visitor with the page's token can send the kernel websocket any frame, not only what the
page's JavaScript sends. These tests start the command as a user would, open the websocket of
the kernel the page started, speak both framings Jupyter Server offers (the browser's
``v1.kernel.websocket.jupyter.org`` and the legacy one a client gets by asking for no
subprotocol), and watch the server's resident memory.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests

from miragic_nb._cli.app import V1_PROTOCOL
from tests.e2e.test_app_browser import RunningApp, app_environment, running_app

# websocket-client and Voilà come with the dev install, not with the oldest-versions run.
pytestmark = [pytest.mark.timeout(300), pytest.mark.devtools]

#: How much the server may grow while answering a few messages (it answers in kilobytes).
GROWTH_BOUND = 150 * 1024 * 1024
#: Seconds to wait for an answer; the memory bound usually fails a broken server far sooner.
ANSWER_S = 90.0
REQUESTS = 5


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    work = tmp_path_factory.mktemp("app")
    with running_app(app_environment(work / "home"), work) as running:
        yield running


class Visitor:
    """One kernel websocket of the app, in one framing, with the server's memory watched."""

    def __init__(self, app: RunningApp, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol
        self.server = psutil.Process(app.process.pid)
        page = requests.get(app.url, timeout=120)  # starts a kernel and runs the panel's cell
        page.raise_for_status()
        found = re.search(r'"kernelId"\s*:\s*"([0-9a-f-]{36})"', page.text)
        assert found, "the page names no kernel"
        token = app.url.split("token=", 1)[1]
        base = app.url.split("?", 1)[0].replace("http://", "ws://").rstrip("/")
        self.baseline = self.rss()
        import websocket  # websocket-client: in the dev install only (see pytestmark)

        #: What a read raises when no frame came in time, and once the server has closed.
        self.no_frame = websocket.WebSocketTimeoutException
        self.closed = websocket.WebSocketConnectionClosedException
        self.ws = websocket.create_connection(
            f"{base}/api/kernels/{found.group(1)}/channels?token={token}",
            subprotocols=[subprotocol] if subprotocol else None,
            timeout=0.5,
        )
        self.session = uuid.uuid4().hex
        self.control = uuid.uuid4().hex

    def rss(self) -> int:
        rss: int = self.server.memory_info().rss
        return rss

    def growth(self) -> int:
        return self.rss() - self.baseline

    def send(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any]) -> None:
        header = {
            "msg_id": uuid.uuid4().hex,
            "username": "visitor",
            "session": self.session,
            "msg_type": msg_type,
            "version": "5.3",
            "date": "",
        }
        parts = [header, {}, metadata, content]
        if self.subprotocol == V1_PROTOCOL:
            self.ws.send_binary(v1_frame("shell", [json.dumps(p).encode() for p in parts]))
        else:
            names = ("header", "parent_header", "metadata", "content")
            message = dict(zip(names, parts, strict=True))
            self.ws.send(json.dumps({**message, "channel": "shell", "buffers": []}))

    def request_states(self) -> None:
        self.send(
            "comm_open",
            {"comm_id": self.control, "target_name": "jupyter.widget.control", "data": {}},
            {"version": "1.0.0"},
        )
        for _ in range(REQUESTS):
            data = {"method": "request_states"}
            self.send("comm_msg", {"comm_id": self.control, "data": data}, {})

    def answers(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` ``update_states`` answers; fails as soon as the server has grown
        past the bound (a server stuck on a frame grows tens of MB a second)."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + ANSWER_S
        while len(found) < count:
            growth = self.growth()
            assert growth < GROWTH_BOUND, f"the server grew {growth / 1e6:.0f} MB, still waiting"
            assert time.monotonic() < deadline, f"{len(found)} of {count} answers came"
            try:
                frame = self.ws.recv()
            except self.no_frame:
                continue
            content = self.content(frame)
            if content.get("data", {}).get("method") == "update_states":
                found.append(content)
        return found

    def content(self, frame: str | bytes) -> dict[str, Any]:
        if isinstance(frame, str):
            content: dict[str, Any] = json.loads(frame)["content"]
        elif self.subprotocol == V1_PROTOCOL:
            content = json.loads(v1_parts(frame)[4])
        else:
            (count,) = struct.unpack("!I", frame[:4])
            offsets = struct.unpack(f"!{count}I", frame[4 : 4 * (count + 1)])
            first_end = offsets[1] if count > 1 else len(frame)
            content = json.loads(frame[offsets[0] : first_end])["content"]
        return content

    def read_until_closed(self) -> None:
        """Read (and drop) frames until the server closes; fails once it has grown too much."""
        deadline = time.monotonic() + ANSWER_S
        while True:
            growth = self.growth()
            assert growth < GROWTH_BOUND, f"the server grew {growth / 1e6:.0f} MB"
            assert time.monotonic() < deadline, "the server kept the connection open"
            try:
                self.ws.recv()
            except self.no_frame:
                continue

    def close(self) -> None:
        self.ws.close()


def v1_frame(channel: str, parts: list[bytes]) -> bytes:
    """A message in the v1 framing: count, offsets (8-byte little-endian), channel, parts."""
    chunks = [channel.encode(), *parts]
    offsets = [8 * (len(chunks) + 2)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    head = b"".join(n.to_bytes(8, "little") for n in [len(offsets), *offsets])
    return head + b"".join(chunks)


def v1_parts(frame: bytes) -> list[bytes]:
    count = int.from_bytes(frame[:8], "little")
    assert 8 * (count + 1) <= len(frame)
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    return [frame[a:b] for a, b in itertools.pairwise(offsets)]


@pytest.mark.parametrize("subprotocol", [None, V1_PROTOCOL], ids=["legacy", "v1"])
def test_request_states_is_answered_and_the_server_stays_small(
    app: RunningApp, subprotocol: str | None
) -> None:
    visitor = Visitor(app, subprotocol)
    try:
        visitor.request_states()
        answers = visitor.answers(REQUESTS)
    finally:
        visitor.close()
    models = {state["model_name"] for state in answers[-1]["data"]["states"].values()}
    assert {"ImageModel", "TextareaModel", "ButtonModel"} <= models
    # After the answers, and after the connection is gone, nothing keeps growing.
    assert visitor.growth() < GROWTH_BOUND


@pytest.mark.parametrize(
    ("subprotocol", "frame"),
    [
        # 2**60 offsets announced in 32 bytes.
        (V1_PROTOCOL, (2**60).to_bytes(8, "little") + bytes(24)),
        # 2**31 - 1 buffers announced in 28 bytes: one struct format character each.
        (None, (2**31 - 1).to_bytes(4, "big") + bytes(24)),
    ],
    ids=["v1", "legacy"],
)
def test_a_frame_announcing_more_than_it_holds_closes_the_connection(
    app: RunningApp, subprotocol: str | None, frame: bytes
) -> None:
    visitor = Visitor(app, subprotocol)
    try:
        visitor.ws.send_binary(frame)
        with pytest.raises((visitor.closed, OSError)):
            visitor.read_until_closed()
    finally:
        visitor.close()
    # The server still serves others.
    other = Visitor(app, subprotocol)
    try:
        other.request_states()
        assert len(other.answers(1)) == 1
    finally:
        other.close()
    assert other.growth() < GROWTH_BOUND


def test_the_frame_reader_only_reads_offsets_the_frame_holds() -> None:
    from miragic_nb._cli.app import frame_is_readable, v1_frame_header

    header = {"msg_type": "execute_input", "msg_id": "1"}
    good = v1_frame("iopub", [json.dumps(header).encode(), b"{}", b"{}", b"{}"])
    assert v1_frame_header(good) == header
    assert frame_is_readable(good, V1_PROTOCOL)
    assert v1_frame_header((2**60).to_bytes(8, "little") + bytes(24)) is None
    assert not frame_is_readable((2**60).to_bytes(8, "little") + bytes(24), V1_PROTOCOL)
    assert not frame_is_readable("{}", V1_PROTOCOL)  # v1 frames are binary
    assert frame_is_readable("{}", None)
    assert not frame_is_readable((5).to_bytes(4, "big") + bytes(8), None)
    assert frame_is_readable((1).to_bytes(4, "big") + (8).to_bytes(4, "big") + b"{}", None)


def test_the_legacy_binary_framing_is_not_read_as_v1() -> None:
    # How the server frames an answer with buffers for a client that asked for no subprotocol.
    from jupyter_server.services.kernels.connection.base import serialize_binary_message

    from miragic_nb._cli.app import v1_frame_header

    frame = serialize_binary_message(
        {"header": {"msg_type": "comm_msg"}, "parent_header": {}, "content": {}, "buffers": [b""]}
    )
    assert v1_frame_header(frame) is None
