"""A hand-written Miragic API that makes real jobs, for tests where processes race.

Each create makes a new job id (the creates are counted, so a test can say how many credits
were spent); a job reads ``PENDING`` for ``job_seconds``, then ``COMPLETED`` with a PNG.
Built on ``HostileServer``: every answer is written out by hand, not by our emulator.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .hostile_servers import (
    CREATE,
    RESULT_PATH,
    STATUS,
    Answer,
    HostileServer,
    Request,
    create_answer,
    http_answer,
    image_bytes,
    status_answer,
)

KEY = "sk-race-0123456789abcdef"


class JobsApi:
    """Creates make jobs (``created`` counts them); each completes after ``job_seconds``."""

    def __init__(
        self, *, job_seconds: float = 0.5, create_seconds: float = 0.0, image: bytes | None = None
    ) -> None:
        self.job_seconds = job_seconds
        self.create_seconds = create_seconds
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._started: dict[str, float] = {}
        body = image_bytes("PNG") if image is None else image
        self._png = http_answer(200, body, headers=[("Content-Type", "image/png")])
        self.server = HostileServer(self._route)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def created(self) -> int:
        with self._lock:
            return len(self._started)

    def close(self) -> None:
        self.server.close()

    def _route(self, request: Request) -> Answer:
        if request.method == "POST" and request.path == CREATE:
            with self._lock:
                job_id = f"job-race-{next(self._ids):04d}"
                self._started[job_id] = time.monotonic()
            # A slow create answer widens the window in which two runs race.
            return [self.create_seconds, create_answer(job_id)]
        match = re.fullmatch(re.escape(STATUS) + r"([\w-]+)", request.path)
        if request.method == "GET" and match:
            with self._lock:
                started = self._started.get(match.group(1))
            if started is None:
                return [http_answer(404, b"no such job", reason="Not Found")]
            done = time.monotonic() - started >= self.job_seconds
            return [status_answer(match.group(1), "COMPLETED" if done else "PENDING")]
        if request.path.split("?", 1)[0] == RESULT_PATH:
            return [self._png]
        return [http_answer(404, b"not here", reason="Not Found")]


@contextmanager
def jobs_api(
    *, job_seconds: float = 0.5, create_seconds: float = 0.0, image: bytes | None = None
) -> Iterator[JobsApi]:
    api = JobsApi(job_seconds=job_seconds, create_seconds=create_seconds, image=image)
    try:
        yield api
    finally:
        api.close()
