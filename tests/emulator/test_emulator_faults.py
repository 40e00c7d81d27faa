"""Every fault the emulator can inject behaves as documented in ``docs/emulator.md``."""

from __future__ import annotations

import email.utils
import io
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from PIL import Image

from miragic_nb.emulator import Emulator, Fault, Faults

KEY = "emulator-test-key"
HEADERS = {"X-API-Key": KEY}
FORM = {"prompt": "A lighthouse at dusk", "model": "flux", "width": "320", "height": "256"}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, job_seconds=0.1, jitter=0.0, seed=11) as emulator:
        yield emulator


def create(emu: Emulator, http: requests.Session, **fields: str) -> str:
    response = http.post(emu.create_url, headers=HEADERS, data={**FORM, **fields})
    assert response.status_code == 200, response.text
    job_id: str = response.json()["data"]["jobId"]
    return job_id


def status(emu: Emulator, http: requests.Session, job_id: str) -> dict[str, Any]:
    response = http.get(emu.status_url(job_id), headers=HEADERS)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def finished(emu: Emulator, http: requests.Session, job_id: str) -> dict[str, Any]:
    """The record once the job is over (the server's truth decides, so no status spelling)."""
    deadline = time.monotonic() + 30
    while emu.jobs[job_id].status() == "PENDING":
        assert time.monotonic() < deadline, "job never finished"
        time.sleep(0.02)
    return status(emu, http, job_id)


def completed_url(emu: Emulator, http: requests.Session, **fields: str) -> tuple[str, str]:
    job_id = create(emu, http, **fields)
    record = finished(emu, http, job_id)
    assert record["status"] == "COMPLETED"
    return job_id, record["processedImageUrl"]


def send(
    emu: Emulator, http: requests.Session, route: str, job_id: str, url: str
) -> requests.Response:
    """One request to ``route``: a create, a status read of ``job_id`` or a download of ``url``."""
    if route == "create":
        return http.post(emu.create_url, headers=HEADERS, data=FORM)
    if route == "status":
        return http.get(emu.status_url(job_id), headers=HEADERS)
    return http.get(url)


# ---------------------------------------------------------------- the Faults object


def test_faults_reject_typos_and_bad_values() -> None:
    faults = Faults()
    with pytest.raises(AttributeError):
        faults.failure_rat = 1.0  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no setting 'nope'"):
        faults.configure(nope=1)
    with pytest.raises(ValueError, match="progress must be one of"):
        faults.progress = "percent"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="failure_rate"):
        Faults(failure_rate=1.5)
    with pytest.raises(ValueError, match="route must be one of"):
        faults.push("download-all", Fault.http(500))
    assert repr(Faults(never_finish=True)) == "Faults(never_finish=True)"


def test_one_shot_queue_semantics(emu: Emulator, http: requests.Session) -> None:
    job_id = create(emu, http)
    emu.faults.push("status", Fault.http(502), times=2)
    emu.faults.push("*", Fault.http(504))
    assert emu.faults.pending("status") == 2
    codes = [http.get(emu.status_url(job_id), headers=HEADERS).status_code for _ in range(4)]
    assert codes == [502, 502, 504, 200]  # a route's own queue first, then "*"
    emu.faults.push("status", Fault.http(500), times=None)
    codes = [http.get(emu.status_url(job_id), headers=HEADERS).status_code for _ in range(3)]
    assert codes == [500, 500, 500]
    assert emu.faults.pending() == -1
    emu.faults.clear("status")
    assert http.get(emu.status_url(job_id), headers=HEADERS).status_code == 200
    assert emu.count("GET", job_id=job_id, status=500) == 3
    assert [r.fault for r in emu.requests[-2:]] == ["http", None]


def test_reset_restores_defaults(emu: Emulator) -> None:
    emu.faults.configure(never_finish=True, progress="string")
    emu.faults.push("create", Fault.http(500))
    emu.faults.reset()
    assert emu.faults.settings() == Faults().settings()
    assert emu.faults.pending() == 0


# ---------------------------------------------------------------- job failures


def test_forced_failure(emu: Emulator, http: requests.Session) -> None:
    emu.faults.configure(force_failure=True, failure_message="NSFW content detected")
    record = finished(emu, http, create(emu, http))
    assert record["status"] == "FAILED"
    assert record["errorMessage"] == "NSFW content detected"
    assert "progress" not in record
    assert record["imageUrl"] is None
    assert record["processedImageUrl"] is None
    assert record["metadata"]["apiResponse"] == {"link": None, "success": False}
    assert isinstance(record["metadata"]["processingTimeMs"], int)


def test_failure_only_for_matching_prompts(emu: Emulator, http: requests.Session) -> None:
    emu.faults.configure(force_failure=True, failure_match="CAT")
    doomed = create(emu, http, prompt="a black cat")
    fine = create(emu, http, prompt="a black dog")
    assert finished(emu, http, doomed)["status"] == "FAILED"
    assert finished(emu, http, fine)["status"] == "COMPLETED"


def test_failure_rate(emu: Emulator, http: requests.Session) -> None:
    emu.faults.failure_rate = 1.0
    assert finished(emu, http, create(emu, http))["status"] == "FAILED"
    emu.faults.failure_rate = 0.5
    outcomes = {finished(emu, http, create(emu, http))["status"] for _ in range(16)}
    assert outcomes == {"FAILED", "COMPLETED"}  # seeded RNG: both happen in 16 draws


def test_never_finish(emu: Emulator, http: requests.Session) -> None:
    emu.faults.never_finish = True
    job_id = create(emu, http)
    emu.faults.never_finish = False  # read at creation: this job stays stuck anyway
    job = emu.wait_for_job(job_id)
    job.duration = 0.0
    record = status(emu, http, job_id)
    assert record["status"] == "PENDING"
    assert record["progress"] == 99
    assert finished(emu, http, create(emu, http))["status"] == "COMPLETED"


# ---------------------------------------------------------------- HTTP-level faults


@pytest.mark.parametrize("route", ["create", "status"])
def test_rate_limit_with_retry_after_seconds(
    emu: Emulator, http: requests.Session, route: str
) -> None:
    job_id = create(emu, http)
    emu.faults.push(route, Fault.rate_limited(7), times=2)
    for _ in range(2):
        response = send(emu, http, route, job_id, "")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert response.json()["success"] is False
    assert len(emu.jobs) == 1  # a 429 on create makes no job
    assert status(emu, http, job_id)["id"] == job_id


def test_rate_limit_with_retry_after_http_date(emu: Emulator, http: requests.Session) -> None:
    emu.faults.push("create", Fault.rate_limited(120, http_date=True))
    before = time.time()
    response = http.post(emu.create_url, headers=HEADERS, data=FORM)
    assert response.status_code == 429
    when = email.utils.parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
    assert before + 100 < when < before + 140
    assert response.headers["Retry-After"].endswith(" GMT")


@pytest.mark.parametrize("code", [500, 502, 503, 504])
@pytest.mark.parametrize("route", ["create", "status", "download"])
def test_proxy_errors_answer_an_html_page(
    emu: Emulator, http: requests.Session, code: int, route: str
) -> None:
    job_id, url = completed_url(emu, http)
    emu.faults.push(route, Fault.http(code))
    response = send(emu, http, route, job_id, url)
    assert response.status_code == code
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<html>")
    assert f"<title>{code} " in response.text
    assert len(emu.jobs) == 1


def test_slow_response_provokes_a_read_timeout(emu: Emulator, http: requests.Session) -> None:
    job_id = create(emu, http)
    emu.faults.push("status", Fault.slow(3.0))
    with pytest.raises(requests.ReadTimeout):
        http.get(emu.status_url(job_id), headers=HEADERS, timeout=(5, 0.2))


def test_slow_create_still_creates_the_job(emu: Emulator, http: requests.Session) -> None:
    emu.faults.push("create", Fault.slow(0.3))
    response = http.post(emu.create_url, headers=HEADERS, data=FORM)
    assert response.status_code == 200
    assert response.json()["data"]["jobId"] in emu.jobs
    assert emu.requests[-1].fault == "slow"


@pytest.mark.parametrize("route", ["create", "status", "download"])
def test_connection_reset_mid_response(emu: Emulator, http: requests.Session, route: str) -> None:
    job_id, url = completed_url(emu, http)
    emu.faults.push(route, Fault.reset())
    with pytest.raises(requests.RequestException) as caught:
        send(emu, http, route, job_id, url)
    assert "reset" in str(caught.value).lower()
    if route == "create":
        assert len(emu.jobs) == 2  # the server made the job before the connection died
    # The next request (on a new connection) is answered normally.
    assert status(emu, http, job_id)["status"] == "COMPLETED"


def test_malformed_json(emu: Emulator, http: requests.Session) -> None:
    emu.faults.push("create", Fault.malformed_json())
    response = http.post(emu.create_url, headers=HEADERS, data=FORM)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):  # noqa: PT011 - any JSON decode error
        response.json()


def test_unsuccessful_200(emu: Emulator, http: requests.Session) -> None:
    emu.faults.push("create", Fault.unsuccessful("Insufficient credits"))
    response = http.post(emu.create_url, headers=HEADERS, data=FORM)
    assert response.status_code == 200
    assert response.json() == {"success": False, "message": "Insufficient credits"}
    assert emu.jobs == {}


# ---------------------------------------------------------------- record shape


def test_unknown_and_lowercase_status(emu: Emulator, http: requests.Session) -> None:
    emu.job_seconds = 30.0
    emu.faults.pending_status = "PROCESSING"
    job_id = create(emu, http)
    assert status(emu, http, job_id)["status"] == "PROCESSING"
    emu.faults.lowercase_status = True
    assert status(emu, http, job_id)["status"] == "processing"
    emu.wait_for_job(job_id).duration = 0.0
    assert status(emu, http, job_id)["status"] == "completed"


@pytest.mark.parametrize(
    ("form", "check"),
    [
        ("int", lambda p: isinstance(p, int) and 0 <= p <= 99),
        ("float", lambda p: isinstance(p, float) and 0 < p < 100),
        ("string", lambda p: isinstance(p, str) and p.isdigit() and 0 <= int(p) <= 99),
    ],
)
def test_progress_forms(emu: Emulator, http: requests.Session, form: str, check: Any) -> None:
    emu.job_seconds = 30.0
    emu.faults.progress = form  # type: ignore[assignment]
    assert check(status(emu, http, create(emu, http))["progress"])


def test_progress_missing(emu: Emulator, http: requests.Session) -> None:
    emu.faults.progress = "missing"
    job_id = create(emu, http)
    assert "progress" not in status(emu, http, job_id)
    assert "progress" not in finished(emu, http, job_id)


# ---------------------------------------------------------------- result URLs and origins


def test_second_origin_records_headers_and_sees_no_key_unless_sent(
    emu: Emulator, http: requests.Session
) -> None:
    emu.faults.result_url = "second_origin"
    job_id, url = completed_url(emu, http)
    assert url.startswith(emu.second_origin.url + "/files/")
    assert emu.second_origin.url != emu.url
    assert http.get(url).content == emu.jobs[job_id].result_bytes
    # A careless client that sends the key everywhere is caught by the log...
    http.get(url, headers=HEADERS)
    first, second = emu.second_origin.requests
    assert "X-API-Key" not in first.headers
    assert second.headers["X-API-Key"] == KEY
    assert (first.origin, first.status, first.job_id) == ("second", 200, job_id)
    assert emu.second_origin.count("GET", "/files/") == 2
    # ...and the API origin's log does not mix the two.
    assert all(r.origin == "main" for r in emu.requests)


def test_main_origin_redirects_to_the_second_origin(emu: Emulator, http: requests.Session) -> None:
    emu.faults.result_redirects = 3
    job_id, url = completed_url(emu, http)
    assert url.startswith(emu.url + "/uploads/")
    response = http.get(url, headers=HEADERS)  # requests keeps X-API-Key across hosts!
    assert response.content == emu.jobs[job_id].result_bytes
    assert [r.status_code for r in response.history] == [302, 302, 302]
    assert response.history[0].headers["Location"].startswith(emu.second_origin.url + "/hop/2/")
    assert response.url.startswith(emu.second_origin.url + "/files/")
    hops = emu.second_origin.requests
    assert [r.status for r in hops] == [302, 302, 200]
    assert all(r.headers.get("X-API-Key") == KEY for r in hops)  # the hazard, made visible


def test_second_origin_behind_redirects_with_307(emu: Emulator, http: requests.Session) -> None:
    emu.faults.configure(result_url="second_origin", result_redirects=1, redirect_status=307)
    job_id, url = completed_url(emu, http)
    response = http.get(url)
    assert [r.status_code for r in response.history] == [307]
    assert response.content == emu.jobs[job_id].result_bytes


def test_relative_result_url(emu: Emulator, http: requests.Session) -> None:
    emu.faults.result_url = "relative"
    job_id, url = completed_url(emu, http)
    assert url.startswith("/uploads/image-generation/processed/")
    assert http.get(urljoin(emu.url, url)).content == emu.jobs[job_id].result_bytes


def test_link_only(emu: Emulator, http: requests.Session) -> None:
    emu.faults.result_url = "link_only"
    job_id = create(emu, http)
    record = finished(emu, http, job_id)
    assert record["imageUrl"] is None
    assert record["processedImageUrl"] is None
    link = record["metadata"]["apiResponse"]["link"]
    assert link.startswith(emu.second_origin.url)
    assert http.get(link).content == emu.jobs[job_id].result_bytes


def test_signed_urls_expire_and_are_refreshed(emu: Emulator, http: requests.Session) -> None:
    emu.faults.url_ttl = 60
    job_id, url = completed_url(emu, http)
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"expires", "signature"}
    assert http.get(url).content == emu.jobs[job_id].result_bytes
    bare = url.split("?")[0]
    assert http.get(bare).status_code == 403
    tampered = url.replace("signature=", "signature=0")
    assert http.get(tampered).status_code == 403

    emu.faults.url_ttl = -1  # every URL minted now is already expired
    expired = status(emu, http, job_id)["processedImageUrl"]
    response = http.get(expired)
    assert response.status_code == 403
    assert "Request has expired" in response.text

    emu.faults.url_ttl = 60
    fresh = status(emu, http, job_id)["processedImageUrl"]
    assert fresh != expired
    assert http.get(fresh).content == emu.jobs[job_id].result_bytes


def test_signed_urls_survive_redirects(emu: Emulator, http: requests.Session) -> None:
    emu.faults.configure(url_ttl=60, result_redirects=2)
    job_id, url = completed_url(emu, http)
    response = http.get(url)
    assert response.status_code == 200
    assert response.content == emu.jobs[job_id].result_bytes
    assert "signature=" in response.url


# ---------------------------------------------------------------- download faults


def test_truncated_download(emu: Emulator, http: requests.Session) -> None:
    job_id, url = completed_url(emu, http)
    emu.faults.push("download", Fault.truncated(0.25))
    with http.get(url, stream=True) as response:
        declared = int(response.headers["Content-Length"])
        assert declared == len(emu.jobs[job_id].result_bytes or b"")
        sent = rf"IncompleteRead\({declared // 4} bytes read, {declared - declared // 4} more"
        with pytest.raises(requests.exceptions.ChunkedEncodingError, match=sent):
            _ = response.content


def test_download_not_an_image(emu: Emulator, http: requests.Session) -> None:
    _, url = completed_url(emu, http)
    emu.faults.push("download", Fault.not_image())
    response = http.get(url)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(response.content))


def test_download_of_the_wrong_size(emu: Emulator, http: requests.Session) -> None:
    _, url = completed_url(emu, http)
    emu.faults.push("download", Fault.wrong_size())
    emu.faults.push("download", Fault.wrong_size(300, 300))
    assert Image.open(io.BytesIO(http.get(url).content)).size == (160, 128)
    assert Image.open(io.BytesIO(http.get(url).content)).size == (300, 300)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_download_decompression_bomb(emu: Emulator, http: requests.Session, fmt: str) -> None:
    _, url = completed_url(emu, http)
    emu.faults.push("download", Fault.bomb(fmt=fmt))
    response = http.get(url)
    assert response.headers["Content-Type"] == f"image/{fmt}"
    assert len(response.content) < 2048
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(response.content))
