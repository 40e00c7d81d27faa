"""Benchmark 6: how many jobs per second the emulator creates and completes.

The emulator runs in its own process (``python -m miragic_nb.emulator``, as a user's CI would
run it), jobs take no time of their own (so rendering and HTTP are the limit), 256×256. Each
client thread loops: create a job, poll it until ``COMPLETED`` with a tight schedule, download
the result. Baseline: one such thread.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from miragic_nb._core.request import GenerationRequest
from miragic_nb.client import Client

from .common import API_KEY, TIGHT_POLLS, Row, Settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def emulator_process() -> Iterator[str]:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "miragic_nb.emulator",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--job-seconds",
        "0",
        "--jitter",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator process did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def jobs_per_second(url: str, threads: int, seconds: float) -> float:
    client = Client(api_key=API_KEY, base_url=url, poll_schedule=TIGHT_POLLS, history=False)
    done = [0] * threads
    stop = time.monotonic() + seconds
    request = GenerationRequest("throughput", model="turbo", width=256, height=256)

    def loop(slot: int) -> None:
        while time.monotonic() < stop:
            client.generate(request, timeout=60)
            done[slot] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    client.close()
    return sum(done) / elapsed


def run(settings: Settings) -> list[Row]:
    seconds = settings.pick(4.0, 12.0)
    with emulator_process() as url:
        jobs_per_second(url, 2, 1.0)  # warm-up: imports, first renders
        one = jobs_per_second(url, 1, seconds)
        sixteen = jobs_per_second(url, 16, seconds)
    return [
        Row(
            "6 emulator",
            "jobs created, polled to COMPLETED and downloaded per second, 16 threads",
            one,
            sixteen,
            "jobs/s",
            baseline_label="one polling thread",
            note="higher is better here; the emulator is a separate process on the same cores",
        )
    ]
