"""Hand-written hostile servers: every byte of every answer is chosen by the test.

Our emulator is written by us, so a misreading of the API would be mirrored on both sides;
these servers are not it. ``HostileServer`` is a raw-socket HTTP/1.1 server on 127.0.0.1 that
answers one request per connection with whatever its route returns: a sequence of byte strings
to send and pauses (seconds) between them, so an answer can drip, lie in its headers, or
never end (until the client leaves, the server stops, or ``MAX_ANSWER_SECONDS`` pass).
``ScriptedApi`` puts the Miragic routes on it: a create answer, a script of status answers
(the last one repeats) and result files.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

#: An answer: bytes to send, and pauses (seconds) between them.
Answer = Iterable[bytes | float]
#: Longest any one answer may take, whatever it is: every test server stops by itself.
MAX_ANSWER_SECONDS = 30.0
JOB_ID = "job-aaaa-0001"
CREATE = "/api/v1/image/generate"
STATUS = "/api/v1/image/jobs/"
RESULT_PATH = "/files/result.png"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class HostileServer:
    """A raw-socket HTTP server on 127.0.0.1; ``route`` turns each request into an answer."""

    def __init__(self, route: Callable[[Request], Answer]) -> None:
        self.route = route
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accepting.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.startswith(prefix))

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            request = _read_request(conn)
            if request is None:
                return
            self.requests.append(request)
            deadline = time.monotonic() + MAX_ANSWER_SECONDS
            for part in self.route(request):
                if time.monotonic() > deadline:
                    return
                if isinstance(part, bytes):
                    conn.sendall(part)
                elif self._stop.wait(part):
                    return
        except OSError:
            pass  # the client went away: that is what a deadline looks like from here
        finally:
            conn.close()


def _read_request(conn: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or len(data) > 1 << 20:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, path, headers, body)


# -- answers --------------------------------------------------------------------------------


def http_answer(
    status: int = 200,
    body: bytes = b"",
    *,
    headers: Sequence[tuple[str, str]] = (),
    reason: str = "OK",
    content_length: bool = True,
) -> bytes:
    """One whole HTTP/1.1 answer, written out byte by byte (``Connection: close``)."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    names = {name.lower() for name, _ in headers}
    if content_length and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_answer(
    payload: Any, status: int = 200, *, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
    return http_answer(status, body, headers=[("Content-Type", "application/json"), *headers])


def create_answer(job_id: Any = JOB_ID, **data: Any) -> bytes:
    return json_answer({"success": True, "data": {"jobId": job_id, "status": "PENDING", **data}})


def status_record(job_id: Any = JOB_ID, status: str = "COMPLETED", **data: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"id": job_id, "status": status, **data}
    if status == "COMPLETED":
        record.setdefault("processedImageUrl", RESULT_PATH)
    return {"success": True, "data": record}


def status_answer(job_id: Any = JOB_ID, status: str = "COMPLETED", **data: Any) -> bytes:
    return json_answer(status_record(job_id, status, **data))


def gzip_json_answer(text_parts: Iterable[bytes]) -> bytes:
    """A JSON answer compressed with gzip (``Content-Encoding: gzip``), built part by part."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as packed:
        for part in text_parts:
            packed.write(part)
    return http_answer(
        200,
        buffer.getvalue(),
        headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
    )


def drip(head: bytes, *, every: float = 0.2, byte: bytes = b" ") -> Iterator[bytes | float]:
    """``head``, then one byte every ``every`` seconds for as long as the client listens."""
    yield head
    while True:
        yield every
        yield byte


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "teal").save(buffer, fmt)
    return buffer.getvalue()


# -- the API --------------------------------------------------------------------------------

#: A status answer, or something that makes one when it is needed (e.g. from the server URL).
Scripted = bytes | Callable[[], Answer]


@dataclass
class ScriptedApi:
    """The Miragic API as a script: one create answer, status answers in turn, result files.

    The last status answer repeats. Files default to one PNG at ``RESULT_PATH``.
    """

    statuses: Sequence[Scripted] = (status_answer(),)
    create: Scripted = field(default_factory=create_answer)
    files: Mapping[str, Scripted] = field(
        default_factory=lambda: {RESULT_PATH: http_answer(200, image_bytes("PNG"))}
    )
    server: HostileServer = field(init=False)
    _status_reads: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.server = HostileServer(self._route)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> ScriptedApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    def _route(self, request: Request) -> Answer:
        if request.method == "POST" and request.path == CREATE:
            return _play(self.create)
        if request.method == "GET" and request.path.startswith(STATUS):
            answer = self.statuses[min(self._status_reads, len(self.statuses) - 1)]
            self._status_reads += 1
            return _play(answer)
        path = request.path.split("?", 1)[0]
        if path in self.files:
            return _play(self.files[path])
        return [http_answer(404, b"not here", reason="Not Found")]


def _play(answer: Scripted) -> Answer:
    return [answer] if isinstance(answer, bytes) else answer()
