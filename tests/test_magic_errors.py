"""``%%miragic`` failures: one short line, a failed cell, nothing sent for bad input."""

from __future__ import annotations

import _thread
import threading
from typing import TYPE_CHECKING

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb._core.errors import (
    APIError,
    AuthenticationError,
    JobFailedError,
    JobTimeoutError,
    MissingAPIKeyError,
)
from miragic_nb._magic.magic import Miragic
from miragic_nb._store.history import History
from miragic_nb._views.gallery import ImageGrid
from miragic_nb.emulator import Emulator, Fault

if TYPE_CHECKING:
    from .magic_fixtures import Run, Runner

pytest_plugins = ["tests.magic_fixtures"]


def assert_one_short_line(cell: Run, *needles: str) -> str:
    """The cell failed with one error line (no traceback) containing every needle; the only
    other lines are the job's progress line."""
    assert cell.error is not None
    assert "Traceback" not in cell.text
    assert "File " not in cell.text
    lines = [line for line in cell.text.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith(f"{type(cell.error).__name__}: ")]
    assert len(error_lines) == 1, lines
    assert lines[-1] == error_lines[0]
    assert all(" · " in line for line in lines[:-1]), lines  # progress lines only
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]
    return error_lines[0]


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ("--width 100", "from 256 to 2048"),
        ("-H 4096", "from 256 to 2048"),
        ("--width wide", "from 256 to 2048"),
        ("--size 10x10", "from 256 to 2048"),
        ("--size big", "must look like 1024x768"),
        ("--size 512x512 --width 512", "either --size WxH or --width/--height"),
        ("--model dalle", "choose from flux, turbo, gptimage, kontext"),
        ("--model flux,nope", "choose from flux, turbo, gptimage, kontext"),
        ("--model ,", "needs a model name"),
        ("--image-url https://example.org/a.png", "only with model 'kontext'"),
        ("-m kontext --image-url ftp://example.org/a.png", "must be an http(s) URL"),
        ("--seed -1", "non-negative integer"),
        ("--seed x", "non-negative integer"),
        ("--n 0", "from 1 to 64"),
        ("--n 65", "from 1 to 64"),
        ("--model flux,turbo,gptimage --n 22", "at most 64 per cell"),
        ("--timeout 0", "positive number of seconds"),
        ("--timeout nan", "positive number of seconds"),
        ("-o 1bad", "Python variable name"),
        ("-o class", "Python variable name"),
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--enhance=maybe", "ignored explicit argument"),
    ],
)
def test_invalid_options_fail_short_and_send_nothing(
    run: Runner, api: Emulator, options: str, allowed: str
) -> None:
    cell = run(f"%%miragic {options}\na prompt")
    assert isinstance(cell.error, UsageError)
    assert_one_short_line(cell, "UsageError: %%miragic", allowed)
    assert api.requests == []


def test_an_empty_cell_is_refused_before_anything_is_sent(run: Runner, api: Emulator) -> None:
    cell = run("%%miragic --model turbo\n   \n;\n")
    assert isinstance(cell.error, UsageError)
    assert_one_short_line(cell, "no prompt")
    assert api.requests == []


def test_invalid_options_do_not_start_the_builtin_emulator(run: Runner, magic: Miragic) -> None:
    from miragic_nb import session as builtin

    assert run("%%miragic --width 5\nno key, bad option").error is not None
    assert builtin.builtin_emulator_running() is None


def test_missing_key_without_the_fallback(run: Runner, magic: Miragic) -> None:
    from miragic_nb import session as builtin

    magic.offline_fallback = False
    cell = run("%%miragic\nno key")
    assert isinstance(cell.error, MissingAPIKeyError)
    assert_one_short_line(cell, "MissingAPIKeyError", "MIRAGIC_API_KEY", "%miragic login")
    assert builtin.builtin_emulator_running() is None


def test_missing_key_with_the_fallback_turned_off_by_environment(
    run: Runner, magic: Miragic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_OFFLINE_FALLBACK", "0")
    cell = run("%%miragic\nscheduled run")
    assert isinstance(cell.error, MissingAPIKeyError)


def test_a_rejected_key_is_one_line_without_the_key(
    run: Runner, magic: Miragic, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", "wrong-secret-key-123")
    magic.base_url = emulator.url
    cell = run("%%miragic -W 256 -H 256\nrejected")
    assert isinstance(cell.error, AuthenticationError)
    line = assert_one_short_line(cell, "AuthenticationError", "401")
    assert "wrong-secret-key-123" not in line
    assert emulator.jobs == {}


def test_a_failed_job_shows_the_server_message(run: Runner, api: Emulator) -> None:
    api.faults.configure(force_failure=True, failure_message="NSFW content detected")
    cell = run("%%miragic -W 256 -H 256\nsomething unsafe")
    assert isinstance(cell.error, JobFailedError)
    (job_id,) = api.jobs
    line = assert_one_short_line(cell)
    assert line == f"JobFailedError: job {job_id} failed: NSFW content detected"
    assert f"failed · job {job_id} failed: NSFW content detected" in cell.io.stdout  # the bar
    assert "%miragic resume" not in cell.text  # a failed job cannot be picked up


def test_a_timeout_names_the_job_and_the_resume_command(run: Runner, api: Emulator) -> None:
    api.faults.never_finish = True
    cell = run("%%miragic -W 256 -H 256 --timeout 0.3\nnever done")
    assert isinstance(cell.error, JobTimeoutError)
    (job_id,) = api.jobs
    assert "Traceback" not in cell.text
    assert (
        f"JobTimeoutError: job {job_id} did not finish in time; it may still finish: "
        f"%miragic resume {job_id}"
    ) in cell.text.splitlines()


def test_short_errors_off_shows_the_full_traceback(
    run: Runner, magic: Miragic, api: Emulator
) -> None:
    magic.short_errors = False
    api.faults.force_failure = True
    cell = run("%%miragic -W 256 -H 256\nfails loudly")
    assert isinstance(cell.error, JobFailedError)
    assert "Traceback" in cell.text
    assert "_api/miragic.py" in cell.text  # where the failure was read


def test_n_with_a_failed_job_keeps_the_others_and_fails_the_cell(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    api.faults.push("create", Fault.http(500), times=1)
    cell = run("%%miragic --n 3 --seed 1 -W 256 -H 256 -o t_some\nthree, one refused")
    assert cell.error is not None
    assert "1 of 3 jobs failed:" in cell.text
    assert "Traceback" not in cell.text
    kept = ip.user_ns["t_some"]
    assert isinstance(kept, ImageGrid)
    assert len(kept) == 2
    assert len(api.jobs) == 2


def interrupt_when(condition: threading.Event) -> threading.Thread:
    def fire() -> None:
        if condition.wait(10):
            _thread.interrupt_main()

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def test_interrupt_stops_polling_prints_resume_and_resume_finishes(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    api.job_seconds = 60.0
    polled = threading.Event()

    class Watch(threading.Thread):
        def run(self) -> None:  # interrupt once the job exists and has been polled
            while not polled.is_set():
                if api.count("GET", "/api/v1/image/jobs/") >= 2:
                    polled.set()
                threading.Event().wait(0.01)

    Watch(daemon=True).start()
    interrupt_when(polled)
    cell = run("%%miragic -W 256 -H 256\na long job")
    assert isinstance(cell.error, KeyboardInterrupt)
    (job_id,) = api.jobs
    assert f"%miragic resume {job_id}" in cell.io.stdout
    # Polling stopped: the worker's wait ended as cancelled, and no status read follows.
    record = History().get(job_id)
    assert record is not None
    assert record.status == "CANCELLED"
    polls = api.count("GET", job_id=job_id)
    threading.Event().wait(0.5)  # several poll intervals of the fast schedule
    assert api.count("GET", job_id=job_id) == polls

    api.jobs[job_id].duration = 0.0  # the job finishes on the server meanwhile
    resumed = run(f"%miragic resume {job_id} -o t_resumed")
    assert resumed.error is None, resumed.text
    image = ip.user_ns["t_resumed"]
    assert image.metadata["job_id"] == job_id
    assert image.metadata["prompt"] == "a long job"
    assert api.count("POST") == 1  # resuming created no job
    assert len(resumed.image_outputs()) == 1


def test_interrupt_during_the_create_request_says_it_may_have_created_a_job(
    run: Runner, api: Emulator
) -> None:
    api.faults.push("create", Fault.slow(6.0), times=1)
    in_create = threading.Event()

    class Watch(threading.Thread):
        def run(self) -> None:  # the worker exists, and the slow create answers much later
            while not any(t.name.startswith("miragic-job") for t in threading.enumerate()):
                threading.Event().wait(0.01)
            threading.Event().wait(0.3)
            in_create.set()

    Watch(daemon=True).start()
    interrupt_when(in_create)
    cell = run("%%miragic -W 256 -H 256\nslow create")
    assert isinstance(cell.error, KeyboardInterrupt)
    assert api.jobs == {}  # the create had not been answered when the cell returned
    assert "1 create request(s) had not been answered" in cell.io.stdout
    assert "%miragic history" in cell.io.stdout
    assert "no credit was spent" not in cell.io.stdout


def test_resuming_a_job_the_server_does_not_know_says_so_once_without_resume_advice(
    run: Runner, api: Emulator
) -> None:
    cell = run("%miragic resume 1234")
    assert isinstance(cell.error, APIError)
    assert cell.error.status_code == 404
    rendered = cell.error._render_traceback_()  # type: ignore[attr-defined]
    assert len(rendered) == 1
    assert "404" in rendered[0]
    assert "may still finish" not in rendered[0]
    assert "%miragic resume" not in rendered[0]
    assert "may still finish" not in cell.text  # neither in the progress row
