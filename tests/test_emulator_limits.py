"""The emulator's rate limits: the token bucket as pure arithmetic, then over real sockets.

Socket tests speak plain ``requests`` to the emulator (not our client), and assert counts and
headers, never speed: limits are chosen so slow enough (0.01/s) that no token comes back
during a test, or the test waits as long as the emulator said and then expects a token.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from miragic_nb.emulator import Emulator, Fault, RateLimit, RateLimits
from miragic_nb.emulator.__main__ import main
from miragic_nb.emulator.limits import TokenBucket

KEY = "limits-test-key"
HEADERS = {"X-API-Key": KEY}
FORM = {"prompt": "A lighthouse at dusk", "model": "flux", "width": "256", "height": "256"}
#: A limit under which no token comes back within any test.
NO_REFILL = 0.01


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the bucket, pure


@pytest.mark.parametrize(
    ("rate", "burst", "script"),
    [
        # (advance the clock by, expected take(): 0.0 admitted, else the wait)
        (2.0, 3, [(0, 0.0), (0, 0.0), (0, 0.0), (0, 0.5), (0.25, 0.25), (0.25, 0.0), (0, 0.5)]),
        # refilled tokens never exceed the burst, however long the pause
        (2.0, 3, [(0, 0.0), (0, 0.0), (0, 0.0), (60, 0.0), (0, 0.0), (0, 0.0), (0, 0.5)]),
        # a refused request takes nothing: the wait keeps shrinking with the clock
        (1.0, 1, [(0, 0.0), (0.1, 0.9), (0.1, 0.8), (0.1, 0.7), (0.7, 0.0)]),
        # a clock that steps back neither drains nor fills the bucket
        (4.0, 2, [(0, 0.0), (-5, 0.0), (0, 0.25)]),
    ],
)
def test_bucket_arithmetic(rate: float, burst: int, script: list[tuple[float, float]]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(RateLimit(rate, burst), clock)
    for step, (advance, expected) in enumerate(script):
        clock.now += advance
        assert bucket.take() == pytest.approx(expected, abs=1e-9), f"step {step}"


@given(
    rate=st.floats(0.05, 200),
    burst=st.integers(1, 10),
    gaps=st.lists(st.floats(0, 1.5), min_size=1, max_size=80),
)
def test_bucket_admits_at_most_burst_plus_refill_and_its_wait_is_exact(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    start = clock.now
    bucket = TokenBucket(RateLimit(rate, burst), clock)
    admitted = 0
    for gap in gaps:
        clock.now += gap / rate  # gaps in units of one token's time, so buckets run dry
        wait = bucket.take()
        if wait == 0:
            admitted += 1
            continue
        assert 0 < wait <= 1 / rate + 1e-9
        clock.now += wait / 2
        assert bucket.take() > 0, "a token came before the announced wait"
        clock.now += wait / 2 + 1e-9
        assert bucket.take() == 0, "no token after the announced wait"
        admitted += 1
    assert admitted <= burst + rate * (clock.now - start) + 1e-6


@given(rate=st.floats(0.05, 200), burst=st.integers(1, 30), count=st.integers(1, 50))
def test_requests_spaced_by_the_rate_are_never_refused(rate: float, burst: int, count: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(RateLimit(rate, burst), clock)
    for _ in range(burst):
        assert bucket.take() == 0
    for _ in range(count):
        clock.now += 1 / rate + 1e-9
        assert bucket.take() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1), "per_second must be a positive finite number"),
        ((-1, 1), "per_second must be a positive finite number"),
        ((math.inf, 1), "per_second must be a positive finite number"),
        ((1, 0), "burst must be a positive int"),
        ((1, 2.5), "burst must be a positive int"),
    ],
)
def test_bad_limits_are_refused_with_the_rule(args: tuple[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimit(*args)


def test_rate_limits_reject_unknown_kinds_and_values() -> None:
    limits = RateLimits()
    with pytest.raises(AttributeError, match="no kind 'creat'"):
        limits.creat = RateLimit(1, 1)
    with pytest.raises(TypeError, match="must be a RateLimit or None"):
        limits.create = 4  # type: ignore[assignment]
    with pytest.raises(AttributeError, match="no kind 'upload'"):
        RateLimits({"upload": RateLimit(1, 1)})
    assert limits.settings() == {}


# ---------------------------------------------------------------- over sockets


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, job_seconds=0.05, jitter=0.0, seed=5) as emulator:
        yield emulator


def create(emu: Emulator, http: requests.Session) -> requests.Response:
    return http.post(emu.create_url, headers=HEADERS, data=FORM, timeout=10)


def created_job(emu: Emulator, http: requests.Session) -> str:
    response = create(emu, http)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["data"]["jobId"]
    return job_id


def get_status(emu: Emulator, http: requests.Session, job_id: str) -> requests.Response:
    return http.get(emu.status_url(job_id), headers=HEADERS, timeout=10)


def result_url(emu: Emulator, http: requests.Session, job_id: str) -> str:
    """The job's result URL on the main origin, once it is completed."""
    emu.wait_for_job(job_id)
    deadline = time.monotonic() + 10
    while emu.jobs[job_id].status() == "PENDING":
        assert time.monotonic() < deadline, "job never finished"
        time.sleep(0.02)
    url: str = get_status(emu, http, job_id).json()["data"]["processedImageUrl"]
    return url


def assert_throttled(response: requests.Response, most_seconds: float) -> float:
    """A 429 in the API's error shape; returns the precise wait it announced."""
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "success": False,
        "message": "Too many requests, please try again later.",
    }
    retry_after = int(response.headers["Retry-After"])  # delta-seconds: an integer
    precise = float(response.headers["X-RateLimit-Reset-After"])
    assert 0 < precise <= most_seconds
    assert retry_after == max(1, math.ceil(precise))
    return precise


def test_burst_is_admitted_then_429_and_a_refused_create_makes_no_job(
    emu: Emulator, http: requests.Session
) -> None:
    emu.limits.create = RateLimit(per_second=0.5, burst=3)
    admitted = [created_job(emu, http) for _ in range(3)]
    refused = create(emu, http)
    assert_throttled(refused, most_seconds=2.0)
    assert set(emu.jobs) == set(admitted)
    assert emu.throttled("create") == 1
    assert emu.throttled() == 1
    assert emu.count("POST", "/api/v1/image/generate", status=429) == 1
    [record] = [r for r in emu.requests if r.status == 429]
    assert (record.kind, record.throttled, record.job_id) == ("create", True, None)


def first_refusal(send: Callable[[], requests.Response], attempts: int) -> requests.Response:
    """Send until the emulator answers 429 (at most ``attempts`` requests)."""
    for _ in range(attempts):
        response = send()
        if response.status_code != 200:
            return response
    raise AssertionError(f"{attempts} requests in a row were admitted")


def test_concurrent_creates_get_exactly_the_burst(emu: Emulator) -> None:
    emu.limits.create = RateLimit(NO_REFILL, burst=10)

    def client(_: int) -> list[int]:
        with requests.Session() as session:
            session.trust_env = False
            return [create(emu, session).status_code for _ in range(5)]

    with ThreadPoolExecutor(8) as pool:
        codes = [code for codes in pool.map(client, range(8)) for code in codes]
    assert (codes.count(200), codes.count(429)) == (10, 30)
    assert len(emu.jobs) == 10
    assert emu.throttled("create") == 30


def test_tokens_come_back_when_the_429_said(emu: Emulator, http: requests.Session) -> None:
    emu.limits.status = RateLimit(per_second=5, burst=2)
    job_id = created_job(emu, http)
    admitted_after_wait = 0
    for _ in range(4):  # four refusals, each followed by a wait as long as announced
        response = first_refusal(lambda: get_status(emu, http, job_id), attempts=50)
        wait = assert_throttled(response, most_seconds=1 / 5)
        time.sleep(wait)
        assert get_status(emu, http, job_id).status_code == 200
        admitted_after_wait += 1
    assert admitted_after_wait == 4
    assert emu.throttled("status") == 4


def test_a_hammering_client_gets_no_more_than_burst_plus_the_rate(
    emu: Emulator, http: requests.Session
) -> None:
    emu.limits.status = RateLimit(per_second=10, burst=3)
    job_id = created_job(emu, http)
    started = time.monotonic()
    codes = [get_status(emu, http, job_id).status_code for _ in range(60)]
    elapsed = time.monotonic() - started
    admitted = codes.count(200)
    assert codes[:3] == [200, 200, 200]
    assert admitted <= 3 + 10 * elapsed + 1
    assert emu.throttled("status") == codes.count(429)


def test_each_kind_has_its_own_bucket_and_download_spans_both_origins(
    emu: Emulator, http: requests.Session
) -> None:
    emu.faults.result_redirects = 1  # the main-origin URL redirects to the second origin
    job_id = created_job(emu, http)
    url = result_url(emu, http, job_id)
    emu.limits.configure(
        create=RateLimit(NO_REFILL, 1), status=RateLimit(NO_REFILL, 2), download=None
    )
    assert created_job(emu, http)
    assert_throttled(create(emu, http), most_seconds=1 / NO_REFILL)
    # creates are exhausted; status still has its own two tokens
    assert [get_status(emu, http, job_id).status_code for _ in range(3)] == [200, 200, 429]
    # a download is two requests here (main origin, then its redirect to the second origin)
    emu.limits.download = RateLimit(NO_REFILL, 1)
    hop = http.get(url, allow_redirects=False, timeout=10)
    assert hop.status_code == 302
    assert_throttled(http.get(hop.headers["Location"], timeout=10), 1 / NO_REFILL)
    assert emu.second_origin.count("GET", "/files/") == 1
    assert (emu.throttled("create"), emu.throttled("status"), emu.throttled("download")) == (
        1,
        1,
        1,
    )


def test_limits_change_at_run_time(emu: Emulator, http: requests.Session) -> None:
    for _ in range(5):
        assert create(emu, http).status_code == 200  # off by default
    emu.limits.create = RateLimit(NO_REFILL, 1)
    assert create(emu, http).status_code == 200
    assert create(emu, http).status_code == 429
    emu.limits.clear()
    assert [create(emu, http).status_code for _ in range(3)] == [200, 200, 200]
    emu.limits.create = RateLimit(NO_REFILL, 2)  # a new limit starts with a full bucket
    assert [create(emu, http).status_code for _ in range(3)] == [200, 200, 429]
    emu.limits.create = None
    assert create(emu, http).status_code == 200
    assert len(emu.jobs) == 5 + 1 + 3 + 2 + 1
    assert emu.throttled("create") == 2


def test_limits_given_at_construction_apply_from_the_first_request(
    http: requests.Session,
) -> None:
    limits = {"status": RateLimit(NO_REFILL, 1)}
    with Emulator(api_key=KEY, job_seconds=0.05, rate_limits=limits) as emu:
        job_id = created_job(emu, http)
        assert get_status(emu, http, job_id).status_code == 200
        assert_throttled(get_status(emu, http, job_id), most_seconds=1 / NO_REFILL)
        assert emu.limits.status == RateLimit(NO_REFILL, 1)
        assert emu.limits.create is None


def test_a_throttled_request_consumes_no_injected_fault(
    emu: Emulator, http: requests.Session
) -> None:
    emu.limits.create = RateLimit(NO_REFILL, 1)
    assert created_job(emu, http)
    emu.faults.push("create", Fault.http(503))
    assert create(emu, http).status_code == 429
    assert emu.faults.pending("create") == 1


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--create-rate", "0"], "--create-rate/--create-burst: per_second must be a positive"),
        (["--status-rate", "inf"], "per_second must be a positive finite number, not inf"),
        (["--status-rate", "nan"], "per_second must be a positive finite number, not nan"),
        (["--status-rate", "2", "--status-burst", "0"], "burst must be a positive int"),
        (["--download-burst", "3"], "--download-burst needs --download-rate"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_cli_refuses_bad_limits_before_serving(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Run the emulator's command line; returns the process and its banner."""
    process = subprocess.Popen(
        [sys.executable, "-m", "miragic_nb.emulator", "--port", "0", "--api-key", KEY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    banner: list[str] = []
    for _ in range(20):  # the banner is a handful of lines
        line = process.stdout.readline()
        if not line or line.startswith("Press Ctrl-C"):
            break
        banner.append(line.strip())
    return process, banner


def _seconds_between(created: str, updated: str) -> float:
    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    return (parse(updated) - parse(created)).total_seconds()


def test_cli_flags_reach_the_emulator(http: requests.Session) -> None:
    process, banner = _start_cli(
        "--job-seconds", "1", "--jitter", "0", "--create-rate", "0.01", "--create-burst", "2",
        "--workers", "1",
    )  # fmt: skip
    try:
        assert "Rate limit on create: 0.01/s, burst 2" in banner
        assert "Service workers: 1" in banner
        [url] = [
            m[1] for line in banner if (m := re.match(r"Miragic emulator serving at (\S+)", line))
        ]
        create_url = f"{url}/api/v1/image/generate"
        ids = []
        for _ in range(2):
            response = http.post(create_url, headers=HEADERS, data=FORM, timeout=10)
            assert response.status_code == 200, response.text
            ids.append(response.json()["data"]["jobId"])
        assert_throttled(
            http.post(create_url, headers=HEADERS, data=FORM, timeout=10), 1 / NO_REFILL
        )
        # One worker: the second job waited in the queue for the first (its 1 s less the time
        # between the two creates), which shows between createdAt and updatedAt but not in
        # processingTimeMs, the service time.
        record: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while record.get("status") != "COMPLETED":
            assert time.monotonic() < deadline, "the queued job never completed"
            time.sleep(0.1)
            reply = http.get(f"{url}/api/v1/image/jobs/{ids[1]}", headers=HEADERS, timeout=10)
            record = reply.json()["data"]
        service = record["metadata"]["processingTimeMs"] / 1000
        assert service >= 1.0
        assert _seconds_between(record["createdAt"], record["updatedAt"]) - service >= 0.5
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_cli_standard_headers_send_retry_after_only(http: requests.Session) -> None:
    process, banner = _start_cli(
        "--create-rate", "0.01", "--create-burst", "1", "--standard-headers"
    )
    try:
        assert "429 answers carry Retry-After only (whole seconds)" in banner
        [url] = [
            m[1] for line in banner if (m := re.match(r"Miragic emulator serving at (\S+)", line))
        ]
        create_url = f"{url}/api/v1/image/generate"
        answers = [http.post(create_url, headers=HEADERS, data=FORM, timeout=10) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 429]
        assert answers[1].headers["Retry-After"] == "100"
        assert "X-RateLimit-Reset-After" not in answers[1].headers
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
