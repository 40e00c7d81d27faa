"""A hand-written Miragic API on loopback that rate-limits creates the way most services do.

It speaks only the HTTP standard: an over-limit create is answered ``429`` with
``Retry-After`` in whole seconds (or with no header at all), never a precise reset header.
It is not our emulator, so the pacing is measured (and tested) against a server it was not
written against. Jobs take ``job_seconds`` from their create; results are one small PNG.

Shapes of limit (``Shape``): a token bucket of ``rate`` creates a second holding at most
``burst``; ``halve_after`` halves the rate once that many creates were admitted.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

CREATE = "/api/v1/image/generate"
STATUS = "/api/v1/image/jobs/"
_PROMPT = re.compile(rb'name="prompt"\r\n\r\n(.*?)\r\n--', re.S)


class PlainHandler(BaseHTTPRequestHandler):
    """What every hand-written server's handler needs: answer with a body, log nothing."""

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, "application/json", json.dumps(body).encode(), headers)

    def _send(
        self, status: int, kind: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Shape:
    """How a server limits creates."""

    name: str
    rate: float
    burst: int
    #: "retry-after": 429 with ``Retry-After`` in whole seconds; "none": a bare 429.
    header: str = "retry-after"
    #: Halve the rate once this many creates were admitted (None: never).
    halve_after: int | None = None

    def ideal(self, jobs: int, job_seconds: float) -> float:
        """The fastest any client can finish: the burst at once, the rest at the rate (the
        halved rate after ``halve_after``), then one job's time."""
        if self.halve_after is None or self.halve_after >= jobs:
            return max(0, jobs - self.burst) / self.rate + job_seconds
        first = max(0, self.halve_after - self.burst) / self.rate
        return first + (jobs - self.halve_after) / (self.rate / 2) + job_seconds


#: The shapes the pacing is benchmarked on (and tested against, smaller).
SHAPES = (
    Shape("Retry-After in whole seconds, 4/s burst 4", rate=4, burst=4),
    Shape("no header at all, 10/s burst 1", rate=10, burst=1, header="none"),
    Shape("burst larger than the rate, 2/s burst 10", rate=2, burst=10),
    Shape("limit halving halfway, 8/s then 4/s, burst 4", rate=8, burst=4, halve_after=20),
)


@dataclass
class LimitedApi:
    """The server's state: its token bucket, the jobs it made, the creates it refused."""

    shape: Shape
    job_seconds: float = 1.0
    #: Job id -> (prompt, when it was created).
    jobs: dict[str, tuple[str, float]] = field(default_factory=dict)
    admitted: int = 0
    refused: int = 0
    #: Tokens the bucket could not hold (it was full while the client sent nothing): capacity
    #: the service offered and the client left unused.
    wasted: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rate = float(self.shape.rate)
        self._tokens = float(self.shape.burst)
        self._at = time.monotonic()
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), "teal").save(buffer, "PNG")
        self.png = buffer.getvalue()

    def admit(self) -> float | None:
        """None when a create may go through (a token taken), else seconds to the next token."""
        with self._lock:
            now = time.monotonic()
            earned = self._tokens + (now - self._at) * self._rate
            if self.admitted:  # before the first create, a full bucket wastes nothing
                self.wasted += max(0.0, earned - self.shape.burst)
            self._tokens = min(self.shape.burst, earned)
            self._at = now
            if self._tokens < 1:
                self.refused += 1
                return (1 - self._tokens) / self._rate
            self._tokens -= 1
            self.admitted += 1
            if self.admitted == self.shape.halve_after:
                self._rate /= 2
            return None

    def made_twice(self) -> int:
        """Prompts a job was made for more than once."""
        counts = Counter(prompt for prompt, _ in self.jobs.values())
        return sum(1 for n in counts.values() if n > 1)


@contextmanager
def limited_api(shape: Shape, *, job_seconds: float = 1.0) -> Iterator[tuple[str, LimitedApi]]:
    """Serve a ``LimitedApi`` of ``shape`` on a free loopback port: (base URL, state)."""
    state = LimitedApi(shape, job_seconds)

    class Handler(PlainHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != CREATE:
                self._json(404, {"success": False, "message": "Route not found"})
                return
            wait = state.admit()
            if wait is not None:
                headers = {}
                if shape.header == "retry-after":
                    headers["Retry-After"] = str(max(1, math.ceil(wait)))
                self._json(429, {"success": False, "message": "Too many requests"}, headers)
                return
            found = _PROMPT.search(body)
            job_id = str(uuid.uuid4())
            with state._lock:
                state.jobs[job_id] = (found.group(1).decode() if found else "", time.monotonic())
            self._json(200, {"success": True, "data": {"jobId": job_id, "status": "PENDING"}})

        def do_GET(self) -> None:
            if self.path.startswith("/files/"):
                self._send(200, "image/png", state.png)
                return
            job_id = self.path.removeprefix(STATUS)
            with state._lock:
                job = state.jobs.get(job_id)
            if not self.path.startswith(STATUS) or job is None:
                self._json(404, {"success": False, "message": "Job not found"})
                return
            data: dict[str, Any] = {"jobId": job_id, "status": "PENDING"}
            if time.monotonic() - job[1] >= state.job_seconds:
                port = self.server.server_address[1]
                data["status"] = "COMPLETED"
                data["processedImageUrl"] = f"http://127.0.0.1:{port}/files/{job_id}.png"
            self._json(200, {"success": True, "data": data})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", state
    finally:
        server.shutdown()
        server.server_close()
