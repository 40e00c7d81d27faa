"""A batch against a hand-written server on loopback that rate-limits creates with its own
token bucket (429, ``Retry-After`` and ``X-RateLimit-Reset-After``) and loses the answer to
one create after making its job: every 429 reaches the batch, no job is made twice, and the
lost answer is reported as uncertain, never repaid by a rerun."""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.standard_server import PlainHandler
from miragic_nb._core.errors import APIConnectionError
from miragic_nb._engine.batch import BatchResult, Plan
from miragic_nb._store.history import History
from miragic_nb.client import Client
from tests.conftest import FAST_POLLS
from tests.loopback import serving

KEY = "hostile-key-0123456789"
_PROMPT = re.compile(rb'name="prompt"\r\n\r\n(.*?)\r\n--', re.S)


class Limited:
    """The server's state: a token bucket for creates, the jobs made, the 429s sent."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.at = time.monotonic()
        self.jobs: dict[str, str] = {}  # id -> prompt
        self.refused = 0
        self.lock = threading.Lock()
        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), "teal").save(buffer, "PNG")
        self.png = buffer.getvalue()

    def admit(self) -> float | None:
        """None when a token was taken, else the seconds until the next one."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return None
            self.refused += 1
            return (1 - self.tokens) / self.rate


@pytest.fixture
def limited() -> Iterator[tuple[str, Limited]]:
    state = Limited(rate=20, burst=2)

    class Handler(PlainHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            wait = state.admit()
            if wait is not None:
                headers = {"Retry-After": "1", "X-RateLimit-Reset-After": f"{wait:.3f}"}
                self._json(429, {"success": False, "error": "Too many requests"}, headers)
                return
            found = _PROMPT.search(body)
            prompt = found.group(1).decode() if found else ""
            job_id = str(uuid.uuid4())
            with state.lock:
                state.jobs[job_id] = prompt
            if "lost" in prompt:
                self.close_connection = True  # the job exists; its answer never arrives
                return
            self._json(200, {"success": True, "data": {"jobId": job_id, "status": "PENDING"}})

        def do_GET(self) -> None:
            if self.path.startswith("/files/"):
                self._send(200, "image/png", state.png)
                return
            job_id = self.path.rsplit("/", 1)[-1]
            url = f"http://127.0.0.1:{self.server.server_address[1]}/files/{job_id}.png"
            data = {"jobId": job_id, "status": "COMPLETED", "processedImageUrl": url}
            self._json(200, {"success": True, "data": data})

    with serving(Handler) as url:
        yield url, state


def test_429s_reach_the_batch_and_a_lost_answer_is_uncertain_not_repaid(
    limited: tuple[str, Limited], tmp_path: Path
) -> None:
    url, state = limited
    items = [{"prompt": f"tile {n}", "width": 256, "height": 256} for n in range(16)]
    items[5]["prompt"] = "lost tile"
    with Client(KEY, url, poll_schedule=FAST_POLLS, timeout=30, history=History(tmp_path)) as c:
        result = c.generate_many(items, concurrency=6)  # type: ignore[arg-type]
        assert isinstance(result, BatchResult)
        assert result.uncertain == [5]
        assert isinstance(result.errors[5], APIConnectionError)
        assert [i for i, image in enumerate(result) if image is None] == [5]
        assert result.rate_limited == state.refused > 0
        assert set(Counter(state.jobs.values()).values()) == {1}
        made = len(state.jobs)
        plan = c.generate_many(items, dry_run=True)  # type: ignore[arg-type]
        assert isinstance(plan, Plan)
        done = tuple(i for i in range(16) if i != 5)
        assert (plan.uncertain, plan.from_store, plan.to_create) == ((5,), done, ())
        rerun = c.generate_many(items)  # type: ignore[arg-type]
    assert isinstance(rerun, BatchResult)
    assert rerun.uncertain == [5]
    assert len(state.jobs) == made  # nothing created again
