"""A Ctrl-C never loses the id of a job the server handed out.

``deferred_interrupt`` holds SIGINT back while the create answer is read and recorded; these
tests send real signals: to this process for the mechanism itself, and at random moments, many
times, to a subprocess running ``miragic_nb.generate()`` against a loopback server that logs
every job id it hands out.
"""

from __future__ import annotations

import io
import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import miragic_nb
from miragic_nb import Client, GenerationRequest
from miragic_nb._core.interrupts import WAITING_NOTICE, deferred_interrupt
from tests.conftest import FAST_POLLS

KEY = "interrupt-test-key"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(buffer, "PNG")
    return buffer.getvalue()


class IdLoggingServer(ThreadingHTTPServer):
    """The API, reduced to what a generation needs, logging every job id it hands out.

    The create answer leaves ``answer_delay`` seconds after the id is logged: the id exists on
    the server while its answer is still on the way, which is when a Ctrl-C used to lose it.
    """

    daemon_threads = True

    def __init__(self, answer_delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _IdLoggingHandler)
        self.answer_delay = answer_delay
        self.handed_out: list[str] = []
        self.lock = threading.Lock()
        self.image = _png()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # an interrupted client hangs up mid-answer: expected here, not worth a traceback


class _IdLoggingHandler(BaseHTTPRequestHandler):
    server: IdLoggingServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        job_id = str(uuid.uuid4())
        with self.server.lock:
            self.server.handed_out.append(job_id)
        time.sleep(self.server.answer_delay)
        self._json({"success": True, "data": {"jobId": job_id, "status": "PENDING"}})

    def do_GET(self) -> None:
        if self.path.startswith("/image/"):
            self._send(self.server.image, "image/png")
            return
        job_id = self.path.rsplit("/", 1)[-1]
        url = f"{self.server.url}/image/{job_id}.png"
        self._json({"success": True, "data": {"status": "COMPLETED", "processedImageUrl": url}})

    def _json(self, body: object) -> None:
        self._send(json.dumps(body).encode(), "application/json")

    def _send(self, data: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[IdLoggingServer]:
    made = IdLoggingServer(answer_delay=0.02)
    thread = threading.Thread(target=made.serve_forever, daemon=True)
    thread.start()
    yield made
    made.shutdown()
    made.server_close()


# -- the mechanism ------------------------------------------------------------------------------


def _ctrl_c_in_a_block(steps: list[str], *, presses: int) -> None:
    with deferred_interrupt():
        for press in range(1, presses + 1):
            signal.raise_signal(signal.SIGINT)
            steps.append(f"after Ctrl-C {press}")


def test_a_ctrl_c_inside_the_block_is_raised_when_the_block_ends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    steps: list[str] = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _ctrl_c_in_a_block(steps, presses=1)
    assert steps == ["after Ctrl-C 1"]
    assert capsys.readouterr().err == WAITING_NOTICE + "\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_abandons_the_block() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _ctrl_c_in_a_block(steps, presses=2)
    assert steps == ["after Ctrl-C 1"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_without_ctrl_c_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with deferred_interrupt():
        pass
    assert capsys.readouterr().err == ""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_it_does_nothing() -> None:
    seen: list[object] = []

    def worker() -> None:
        with deferred_interrupt():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert seen == [signal.default_int_handler]


# -- the client ---------------------------------------------------------------------------------


def test_ctrl_c_while_the_create_answer_is_on_the_way_keeps_the_job(
    server: IdLoggingServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.answer_delay = 1.0
    home = tmp_path / "home"
    main = threading.get_ident()
    with Client(KEY, server.url, poll_schedule=FAST_POLLS, history=miragic_nb.History(home)) as c:
        sent = threading.Thread(target=_interrupt_once_handed_out, args=(server, main))
        sent.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                c.generate(GenerationRequest("interrupted while the answer travels"))
        finally:
            sent.join(10)
    (job_id,) = server.handed_out
    assert [r.job_id for r in miragic_nb.history(home=home)] == [job_id]
    assert WAITING_NOTICE in capsys.readouterr().err


def _interrupt_once_handed_out(server: IdLoggingServer, main: int) -> None:
    deadline = time.monotonic() + 10
    while not server.handed_out and time.monotonic() < deadline:
        time.sleep(0.01)
    signal.pthread_kill(main, signal.SIGINT)


# Runs generate() in a loop; after each call, one line: "K" (interrupted), "D" (done) or
# "E <job id>" (an error naming a job). SIGINT is blocked outside generate(), so that a signal
# lands only in generate() and never in this loop's own bookkeeping.
_GENERATE_LOOP = textwrap.dedent(
    """
    import faulthandler, os, signal, sys
    import miragic_nb

    faulthandler.register(signal.SIGUSR1)  # the test asks for every thread's stack if stuck
    from miragic_nb._core.polling import PollSchedule

    SIGINT = {signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGINT)
    miragic_nb.default_client().api.poll_schedule = PollSchedule(initial_delay=0.0, min_delay=0.001)
    print("ready", flush=True)
    while not os.path.exists(sys.argv[1]):
        outcome = "D"
        try:
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGINT)
                miragic_nb.generate("a storm of interrupts", width=256, height=256, reuse=False)
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, SIGINT)
        except miragic_nb.MiragicError as exc:
            outcome = f"E {exc.job_id}"
        except KeyboardInterrupt:
            outcome = "K"
        print(outcome, flush=True)
    """
)


def _lines_of(child: subprocess.Popen[str]) -> queue.Queue[str]:
    """The child's stdout lines, read by a thread so that the test can wait with a timeout."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next(lines: queue.Queue[str], errors: Path, child: subprocess.Popen[str]) -> str:
    try:
        return lines.get(timeout=30)
    except queue.Empty:
        child.send_signal(signal.SIGUSR1)  # faulthandler writes every thread's stack to stderr
        time.sleep(1)
        raise AssertionError(f"the generate loop is stuck: {errors.read_text()[-6000:]}") from None


def test_random_ctrl_c_in_generate_never_loses_a_job_id(
    server: IdLoggingServer, tmp_path: Path
) -> None:
    """Every id the server handed out is afterwards in the history or in an exception."""
    home, stop, errors_file = tmp_path / "home", tmp_path / "stop", tmp_path / "stderr"
    env = {
        **os.environ,
        "MIRAGIC_API_KEY": KEY,
        "MIRAGIC_BASE_URL": server.url,
        "MIRAGIC_HOME": str(home),
    }
    with errors_file.open("w") as errors_out:
        child = subprocess.Popen(
            [sys.executable, "-c", _GENERATE_LOOP, str(stop)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors_out,
            text=True,
        )
    rng = random.Random(20261202)
    outcomes = _lines_of(child)
    lines: list[str] = []
    try:
        assert _next(outcomes, errors_file, child) == "ready"
        for _ in range(150):
            lines.append("signal")
            time.sleep(rng.uniform(0.0, 0.06))  # about one generation, so anywhere in it
            child.send_signal(signal.SIGINT)
            # The next signal only after this one was raised: two Ctrl-C in one create would
            # rightly abandon its answer.
            while not lines or lines[-1] != "K":
                lines.append(_next(outcomes, errors_file, child))
        stop.touch()
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    while not outcomes.empty():
        lines.append(outcomes.get())
    errors = errors_file.read_text()
    assert child.returncode == 0, errors[-2000:]
    in_exceptions = {line.split()[1] for line in lines if line.startswith("E ")}
    in_history = {record.job_id for record in miragic_nb.history(home=home)}
    lost = set(server.handed_out) - in_history - in_exceptions
    assert lines.count("K") >= lines.count("signal") == 150
    assert not lost, f"{len(lost)} of {len(server.handed_out)} job ids were lost"
    # Many signals landed while an answer was on the way, and the user was told why they wait.
    assert errors.count(WAITING_NOTICE) >= 10
