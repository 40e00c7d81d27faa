"""Every fault of issue 5, injected by the emulator, against a real client over loopback.

For each fault the test states what the user gets (the image, or an exception of one type with a
readable one-line message), how many create POSTs reached the server (never more than one per
generation: a 429 creates no job and is the only create that is retried), and that the job id
survives: in the exception's ``job_id`` and in the history, with a status that says where the
job stands. Where the fault can be lifted, ``client.resume(job_id)`` then fetches the very same
paid-for result without a new job: nothing is lost.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from miragic_nb import (
    APIConnectionError,
    APIError,
    Client,
    DownloadError,
    GeneratedImage,
    GenerationRequest,
    Job,
    JobFailedError,
    JobTimeoutError,
    MiragicError,
    RateLimitError,
)
from miragic_nb._core.states import JobState
from miragic_nb._engine.engine import JobHandle
from miragic_nb._store.history import History
from miragic_nb.emulator import Emulator, Fault
from tests.conftest import FAST_POLLS, eventually

CREATE = "/api/v1/image/generate"
STATUS = "/api/v1/image/jobs/"
#: Longest message a user should have to read for one failure.
MAX_MESSAGE = 250

Arrange = Callable[[Emulator], object]


def creates(emulator: Emulator) -> int:
    """Create POSTs that reached the application (a 429 is refused before, and makes no job)."""
    return emulator.count("POST", CREATE) - emulator.count("POST", CREATE, status=429)


def push(route: str, fault: Fault, times: int | None = 1) -> Arrange:
    return lambda emu: emu.faults.push(route, fault, times=times)


def configure(**settings: Any) -> Arrange:
    return lambda emu: emu.faults.configure(**settings)


def lift(route: str) -> Callable[[Emulator, str], object]:
    return lambda emu, job_id: emu.faults.clear(route)


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    assert len(message) < MAX_MESSAGE, message
    assert "<html" not in message.lower()
    assert "object at 0x" not in message
    return message


@dataclass(frozen=True)
class Case:
    """One fault: how to cause it and what the user must see."""

    id: str
    arrange: Arrange
    #: None: the generation succeeds despite the fault.
    error: type[MiragicError] | None = None
    match: str = ""
    #: Jobs the server made (0 when the fault answered instead of the application).
    jobs: int = 1
    #: The client learned the job id (False when the create's answer never arrived).
    known: bool = True
    history: str = "COMPLETED"
    #: 429 answers the create POST got before the one that went through.
    rate_limited: int = 0
    #: Create POSTs that got past the rate limiter (one per generation, at most).
    creates: int = 1
    #: Lift the fault, then ``client.resume(job_id)`` must return the paid-for image.
    recover: Callable[[Emulator, str], object] | None = None
    client_options: dict[str, Any] = field(default_factory=dict)
    same_bytes: bool = True


def _http(route: str, status: int, times: int | None = 2) -> Case:
    return Case(f"{route}-{status}-html", push(route, Fault.http(status), times))


CASES = [
    # -- the create call ----------------------------------------------------------------------
    Case("create-429-seconds", push("create", Fault.rate_limited(0.1), 2), rate_limited=2),
    Case(
        "create-429-http-date",
        push("create", Fault.rate_limited(1, http_date=True)),
        rate_limited=1,
    ),
    Case(
        "create-429-burst-outlasts-retries",
        push("create", Fault.rate_limited(0.05), None),
        RateLimitError,
        r"^rate limited by the API; retry after 0\.05s: Too many requests",
        jobs=0,
        known=False,
        rate_limited=4,
        creates=0,
    ),
    *(
        Case(
            f"create-{status}-html",
            push("create", Fault.http(status)),
            APIError,
            rf"^the API answered {status}: {status} \w",
            jobs=0,
            known=False,
        )
        for status in (500, 502, 503, 504)
    ),
    Case(
        "create-reset-mid-answer",
        push("create", Fault.reset()),
        APIConnectionError,
        r"failed: .*; a job may have been created all the same \(never sent twice\)$",
        known=False,
    ),
    Case(
        "create-read-timeout",
        push("create", Fault.slow(1.0)),
        APIConnectionError,
        r"did not answer within 0\.3s; a job may have been created all the same",
        known=False,
        client_options={"read_timeout": 0.3},
    ),
    Case(
        "create-malformed-json",
        push("create", Fault.malformed_json()),
        APIError,
        r"^the API answered 200 with a body that is not a JSON object",
        jobs=0,
        known=False,
    ),
    Case(
        "create-success-false",
        push("create", Fault.unsuccessful("Insufficient credits")),
        APIError,
        r"^the API reported failure: Insufficient credits$",
        jobs=0,
        known=False,
    ),
    # -- status reads: transient faults never end the wait ------------------------------------
    Case("status-429-seconds", push("status", Fault.rate_limited(0.1), 2)),
    Case("status-429-http-date", push("status", Fault.rate_limited(1, http_date=True))),
    # More 429s than urllib3's own retries: the wait itself keeps going.
    Case("status-429-long-burst", push("status", Fault.rate_limited(0.05), 7)),
    *(_http("status", status) for status in (500, 502, 503, 504)),
    Case("status-reset", push("status", Fault.reset(), 2)),
    Case(
        "status-read-timeout",
        push("status", Fault.slow(1.0)),
        client_options={"read_timeout": 0.3},
    ),
    Case("status-malformed-json", push("status", Fault.malformed_json(), 2)),
    Case("status-success-false", push("status", Fault.unsuccessful("temporarily unavailable"), 2)),
    Case(
        "status-500-until-the-deadline",
        push("status", Fault.http(500), None),
        JobTimeoutError,
        r"^job \S+ did not finish within 1s; it may still finish: client\.wait\('\S+'\) picks",
        history="TIMEOUT",
        recover=lift("status"),
        client_options={"timeout": 1.0},
    ),
    Case("status-unknown-value", configure(pending_status="PROCESSING")),
    Case("status-lowercase", configure(lowercase_status=True)),
    Case("progress-missing", configure(progress="missing")),
    Case("progress-float", configure(progress="float")),
    Case("progress-string", configure(progress="string")),
    # -- the job itself -----------------------------------------------------------------------
    Case(
        "job-never-finishes",
        configure(never_finish=True),
        JobTimeoutError,
        r"^job \S+ did not finish within 1s; it may still finish: client\.wait\('\S+'\) picks",
        history="TIMEOUT",
        recover=lambda emu, job_id: setattr(emu.jobs[job_id], "never_finish", False),
        client_options={"timeout": 1.0},
    ),
    Case(
        "job-fails",
        configure(force_failure=True, failure_message="NSFW content detected"),
        JobFailedError,
        r"^job \S+ failed: NSFW content detected$",
        history="FAILED",
    ),
    # -- the result download ------------------------------------------------------------------
    *(_http("download", status, times=1) for status in (500, 502, 503, 504)),
    Case(
        "download-500-persistent",
        push("download", Fault.http(500), None),
        DownloadError,
        r"^result download answered 500 \(job \S+\)$",
        history="ERROR",
        recover=lift("download"),
    ),
    Case("download-reset-once", push("download", Fault.reset())),
    Case(
        "download-reset-persistent",
        push("download", Fault.reset(), None),
        DownloadError,
        r"^result download failed: Connection reset by peer \(job \S+\)$",
        history="ERROR",
        recover=lift("download"),
    ),
    Case(
        "download-truncated",
        push("download", Fault.truncated(), None),
        DownloadError,
        r"^result download (failed: IncompleteRead\(\d+ bytes read|was cut short)",
        history="ERROR",
        recover=lift("download"),
    ),
    Case(
        "download-not-an-image",
        push("download", Fault.not_image(), None),
        DownloadError,
        r"^the result is not a decodable image \(an HTML/XML page\): UnidentifiedImageError",
        history="ERROR",
        recover=lift("download"),
    ),
    Case(
        "download-decompression-bomb",
        push("download", Fault.bomb(), None),
        DownloadError,
        r"^the result looks like a decompression bomb; refused before decoding",
        history="ERROR",
        recover=lift("download"),
    ),
    Case(
        "download-expired-url",
        configure(url_ttl=-1),  # every URL the server mints is already expired
        DownloadError,
        r"^result download answered 403 \(job \S+\)$",
        history="ERROR",
        recover=lambda emu, job_id: setattr(emu.faults, "url_ttl", None),
    ),
    Case("download-other-size", push("download", Fault.wrong_size(300, 200)), same_bytes=False),
    Case("result-relative-url", configure(result_url="relative")),
    Case("result-link-only", configure(result_url="link_only")),
    Case("result-second-origin", configure(result_url="second_origin")),
    Case("result-behind-redirects", configure(result_url="absolute", result_redirects=2)),
]


@pytest.fixture
def history(emulator: Emulator) -> History:
    return History()  # MIRAGIC_HOME, set per test by conftest


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fault(case: Case, emulator: Emulator, history: History) -> None:
    case.arrange(emulator)
    options: dict[str, Any] = {"poll_schedule": FAST_POLLS, "timeout": 20.0}
    options.update(case.client_options)
    with Client(emulator.api_key, emulator.url, history=history, **options) as client:
        outcome: GeneratedImage | MiragicError
        try:
            outcome = client.generate(f"fault {case.id}", width=512, height=512, seed=9)
        except MiragicError as exc:
            outcome = exc

        # Never more than one job, and never a create POST that could have made a second one.
        assert eventually(lambda: creates(emulator) == case.creates), emulator.requests
        assert emulator.count("POST", CREATE, status=429) == case.rate_limited
        assert eventually(lambda: len(emulator.jobs) == case.jobs)
        job_id = next(iter(emulator.jobs), None)
        # The injected fault really fired (a queued one was used up).
        if emulator.faults.pending() == -1:
            assert any(r.fault for r in emulator.requests + emulator.second_origin.requests)
        else:
            assert emulator.faults.pending() == 0

        if case.error is None:
            assert isinstance(outcome, GeneratedImage), outcome
            _assert_image(outcome, emulator, history, same_bytes=case.same_bytes)
            return

        assert isinstance(outcome, case.error), repr(outcome)
        # The builtin each error also is, so plain `except TimeoutError/ConnectionError` works.
        builtin = {JobTimeoutError: TimeoutError, APIConnectionError: ConnectionError}
        assert isinstance(outcome, builtin.get(case.error, MiragicError))
        message = assert_one_line(outcome)
        assert re.search(case.match, message), message
        if not case.known:
            # The create's answer never arrived: there is no id to keep, and none is invented.
            assert outcome.job_id is None
            assert history.records() == []
            return
        assert outcome.job_id == job_id
        record = history.get(job_id or "")
        assert record is not None
        assert record.status == case.history
        assert (record.prompt, record.width, record.seed) == (f"fault {case.id}", 512, 9)
        if case.recover is not None:
            case.recover(emulator, job_id or "")
            image = client.resume(outcome.job_id or "")
            assert creates(emulator) == 1  # the paid-for job, fetched again: no new one
            _assert_image(image, emulator, history, same_bytes=True)
            assert image.metadata["prompt"] == f"fault {case.id}"


def _assert_image(
    image: GeneratedImage, emulator: Emulator, history: History, *, same_bytes: bool
) -> None:
    job_id = image.metadata["job_id"]
    assert job_id in emulator.jobs
    if same_bytes:
        assert image.original_bytes == emulator.jobs[job_id].result_bytes
        assert image.size == (512, 512)
    record = history.get(job_id)
    assert record is not None
    assert record.status == "COMPLETED"
    assert record.path is not None
    assert record.path.is_file()


# -- what the table cannot say -----------------------------------------------------------------


def test_create_429_retry_waits_as_told(client: Client, emulator: Emulator) -> None:
    emulator.faults.push("create", Fault.rate_limited(0.1), times=2)
    image = client.generate("a cat")
    assert emulator.count("POST", CREATE, status=429) == 2
    assert emulator.count("POST", CREATE, status=200) == 1
    assert len(emulator.jobs) == 1
    assert image.info["miragic"]["job_id"] in emulator.jobs
    posts = [r for r in emulator.requests if r.method == "POST"]
    # Retry-After was honoured between the attempts (a lower bound, not a timing assertion).
    assert all(b.timestamp - a.timestamp >= 0.09 for a, b in itertools.pairwise(posts))


def test_rate_limit_error_carries_retry_after(client: Client, emulator: Emulator) -> None:
    emulator.faults.push("create", Fault.rate_limited(0.05), times=None)
    with pytest.raises(RateLimitError) as info:
        client.generate("a cat")
    assert info.value.retry_after == 0.05
    assert info.value.status_code == 429
    assert emulator.jobs == {}


def test_connection_refused_before_any_job(emulator: Emulator, history: History) -> None:
    url = emulator.url
    emulator.stop()
    with Client("k", url, connect_timeout=1, history=history) as client:
        with pytest.raises(APIConnectionError) as info:
            client.generate("a cat")
    message = assert_one_line(info.value)
    assert re.fullmatch(r"could not reach \S+: Connection refused", message), message
    # Refused: certainly not created, so no "a job may have been created" warning.
    assert info.value.job_id is None
    assert history.records() == []


def test_server_gone_while_waiting_keeps_the_job(emulator: Emulator, history: History) -> None:
    emulator.job_seconds = 5.0
    with Client(
        emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, history=history, timeout=1.0
    ) as client:
        created: list[Job] = []
        emulator.faults.never_finish = True

        def stop_server(handle: JobHandle) -> None:
            if handle.state is JobState.PENDING and handle.job is not None and not created:
                created.append(handle.job)
                emulator.stop()  # every status read from now on is refused

        handle = JobHandle(GenerationRequest("a cat", seed=4))
        handle.subscribe(stop_server)
        with pytest.raises(JobTimeoutError) as info:
            client.engine.run(handle)
    (job,) = created
    assert info.value.job_id == job.id
    assert f"client.wait({job.id!r})" in assert_one_line(info.value)
    record = history.get(job.id)
    assert record is not None
    assert record.status == "TIMEOUT"


@pytest.mark.parametrize("form", ["int", "float", "string"])
def test_progress_in_every_form_reaches_the_user_as_a_number(emulator: Emulator, form: str) -> None:
    emulator.job_seconds = 0.6
    emulator.faults.configure(progress=form)
    seen: list[Job] = []
    with Client(emulator.api_key, emulator.url, poll_schedule=FAST_POLLS) as client:
        client.wait(client.submit(f"progress {form}"), on_progress=seen.append)
    pending = [job.progress for job in seen if not job.is_finished]
    assert pending, "expected status reads while the job ran"
    numbers = [p for p in pending if isinstance(p, float) and 0 <= p < 100]
    assert numbers == pending
    assert numbers == sorted(numbers)
    assert seen[-1].progress == 100.0


def test_missing_progress_is_none_not_zero(emulator: Emulator) -> None:
    emulator.job_seconds = 0.6
    emulator.faults.progress = "missing"
    seen: list[Job] = []
    with Client(emulator.api_key, emulator.url, poll_schedule=FAST_POLLS) as client:
        client.wait(client.submit("progress missing"), on_progress=seen.append)
    assert len(seen) > 1
    assert [job.progress for job in seen[:-1]] == [None] * (len(seen) - 1)
    assert seen[-1].is_completed


@pytest.fixture
def many_faults(emulator: Emulator) -> Emulator:
    """Several faults at once on every route: the worst afternoon a client can have."""
    emulator.faults.push("create", Fault.rate_limited(0.05), times=2)
    emulator.faults.push("status", Fault.http(503), times=3)
    emulator.faults.push("status", Fault.malformed_json(), times=1)
    emulator.faults.push("download", Fault.reset(), times=1)
    emulator.faults.configure(progress="string", result_redirects=1, pending_status="QUEUED")
    return emulator


def test_faults_combined(client: Client, many_faults: Emulator) -> None:
    image = client.generate("a cat", width=256, height=256)
    assert image.original_bytes == many_faults.jobs[image.metadata["job_id"]].result_bytes
    assert creates(many_faults) == 1
    assert len(many_faults.jobs) == 1
