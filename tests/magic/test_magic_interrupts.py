"""After an interrupt, the magic sends no create, and no worker holds the interpreter's exit.

Both in a real IPython shell against loopback servers: the emulator counts the creates that
arrive after the interrupt; a hand-written server that drips its create answer one byte at a
time keeps a worker in a slow read while the process tries to exit. And a cancelled download
is not retried.
"""

from __future__ import annotations

import _thread
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import miragic_nb
from miragic_nb import Client, DownloadError, Job
from miragic_nb.emulator import Emulator
from tests.conftest import eventually

if TYPE_CHECKING:
    from tests.magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]


def test_no_queued_job_is_created_after_an_interrupt(run: Runner, api: Emulator) -> None:
    """--n 16 with 8 workers: 8 jobs are polling when Ctrl-C comes; the other 8 never start."""
    api.job_seconds = 60.0
    creates_at_interrupt: list[int] = []

    def interrupt_once_eight_are_polled() -> None:
        if eventually(lambda: len({r.path for r in api.requests if r.method == "GET"}) >= 8, 20):
            creates_at_interrupt.append(api.count("POST"))
            _thread.interrupt_main()

    threading.Thread(target=interrupt_once_eight_are_polled, daemon=True).start()
    cell = run("%%miragic --n 16 -W 256 -H 256\nsixteen cats")
    assert isinstance(cell.error, KeyboardInterrupt)
    assert creates_at_interrupt == [8]
    time.sleep(1.0)  # many poll intervals: a queued worker would have sent its create by now
    assert api.count("POST") == 8
    assert len(api.jobs) == 8
    for job_id in api.jobs:  # every job that exists is named, to be resumed
        assert f"%miragic resume {job_id}" in cell.io.stdout


class _FailingFileServer(ThreadingHTTPServer):
    """Answers every GET with a 500 (a download worth retrying) and pulls ``cancel`` meanwhile."""

    daemon_threads = True

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__(("127.0.0.1", 0), _FailingFileHandler)
        self.cancel = cancel
        self.downloads = 0


class _FailingFileHandler(BaseHTTPRequestHandler):
    server: _FailingFileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.downloads += 1
        self.server.cancel.set()  # the user cancels while this download fails
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_cancelled_download_is_not_retried(client: Client) -> None:
    cancel = threading.Event()
    files = _FailingFileServer(cancel)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{files.server_address[1]}/result.png"
        job = Job.from_record({"id": "job-1", "status": "COMPLETED", "imageUrl": url})
        with pytest.raises(DownloadError, match="answered 500"):
            client.download(job, cancel=cancel)
    finally:
        files.shutdown()
        files.server_close()
    assert files.downloads == 1  # without the cancel: DOWNLOAD_ATTEMPTS


class DrippingServer:
    """Answers the create call one byte every ``interval`` seconds: a read that never times out.

    Loopback only; ``close`` ends every drip, so nothing outlives the test.
    """

    def __init__(self, interval: float = 0.5, length: int = 400) -> None:
        self.interval, self.length = interval, length
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.create_arrived = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)  # the request (the body may follow; it is never read)
            self.create_arrived.set()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {self.length}\r\n\r\n"
            )
            try:
                connection.sendall(head.encode())
                for _ in range(self.length):
                    if self.closed.wait(self.interval):
                        return
                    connection.sendall(b" ")
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.fixture
def dripping() -> Iterator[DrippingServer]:
    server = DrippingServer()
    yield server
    server.close()


_SHELL_SCRIPT = textwrap.dedent(
    """
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "miragic_nb")
    shell.run_line_magic("config", "Miragic.progress = 'text'")
    print("cell starts", flush=True)
    shell.run_cell("%%miragic -W 256 -H 256\\na create whose answer drips")
    print("cell returned", flush=True)
    """
)


def test_after_an_interrupt_the_interpreter_exits_while_a_worker_is_in_a_slow_read(
    dripping: DrippingServer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MIRAGIC_API_KEY": "drip-key",
        "MIRAGIC_BASE_URL": dripping.url,
        "MIRAGIC_HOME": str(tmp_path / "home"),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _SHELL_SCRIPT],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dripping.create_arrived.wait(60), "the create never reached the server"
        child.send_signal(signal.SIGINT)
        # The drip lasts 200 s; exiting takes the magic's 2 s grace for an answer, plus start-up
        # slack on a busy machine.
        output, _ = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        output, _ = child.communicate()
        raise AssertionError(f"no exit after the interrupt:\n{output[-3000:]}") from None
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    # A quiet stop: the summary, no traceback.
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output
    assert "1 create request(s) had not been answered" in output
    assert output.rstrip().endswith("cell returned"), output
    assert child.returncode == 0


def _interrupt_when(condition: Callable[[], bool]) -> None:
    def watch() -> None:
        if eventually(condition, 30):
            _thread.interrupt_main()

    threading.Thread(target=watch, daemon=True).start()


def test_a_stop_is_quiet_and_says_how_each_job_ended(run: Runner, api: Emulator) -> None:
    """Two of six jobs sent when Ctrl-C comes: two interrupted (resumable), four never sent;
    nothing "failed", and the cell fails with the resume lines and no traceback."""
    api.job_seconds = 60.0
    run("%config Miragic.max_concurrency = 2")
    _interrupt_when(lambda: len(api.jobs) >= 2)
    cell = run("%%miragic --n 6 -W 256 -H 256\nsix foxes")
    assert isinstance(cell.error, KeyboardInterrupt)  # the cell fails: Run All stops
    assert len(api.jobs) == 2
    text = cell.text
    assert "Traceback" not in text
    assert "queue.py" not in text
    assert "threading.py" not in text
    assert "failed" not in text
    rows = [line for line in text.splitlines() if line.startswith("#")]
    finals = [line for line in rows if "interrupted ·" in line or "never sent ·" in line]
    assert sum("never sent · no credit used" in line for line in finals) == 4
    for job_id in api.jobs:
        assert f"interrupted · still on the server: %miragic resume {job_id}" in text
        assert f"    %miragic resume {job_id}" in text
    assert "Interrupted: 2 still on the server, 4 never sent (no credit used)." in text
    # The history says the same: the two jobs are interrupted (resumable), nothing else exists.
    statuses = {record.job_id: record.status for record in miragic_nb.history()}
    assert statuses == dict.fromkeys(api.jobs, "INTERRUPTED")


def test_with_short_errors_off_a_stop_still_shows_its_traceback(run: Runner, api: Emulator) -> None:
    api.job_seconds = 60.0
    run("%config Miragic.short_errors = False")
    _interrupt_when(lambda: api.count("GET", "/api/v1/image/jobs/") >= 1)
    cell = run("%%miragic -W 256 -H 256\na slow heron")
    assert isinstance(cell.error, KeyboardInterrupt)
    (job_id,) = api.jobs
    assert f"%miragic resume {job_id}" in cell.text
    assert "Traceback" in cell.text
