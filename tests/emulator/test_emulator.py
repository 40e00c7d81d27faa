"""The emulator speaks the reference's wire format: real sockets, plain ``requests``.

Fault injection is tested in ``test_emulator_faults.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from miragic_nb.emulator import Emulator
from miragic_nb.emulator.render import render_image

KEY = "emulator-test-key"
CREATE = "/api/v1/image/generate"
STATUS = "/api/v1/image/jobs/"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
RECORD_KEYS = [
    "id",
    "userId",
    "prompt",
    "parameters",
    "status",
    "progress",
    "imageUrl",
    "processedImageUrl",
    "storagePath",
    "publicId",
    "metadata",
    "resolution",
    "errorMessage",
    "creditsUsed",
    "createdAt",
    "updatedAt",
]
PARAMETER_KEYS = [
    "safe",
    "seed",
    "model",
    "width",
    "height",
    "nologo",
    "prompt",
    "enhance",
    "private",
    "image_url",
    "uploaded_image_path",
]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, job_seconds=0.2, jitter=0.0, seed=7) as emulator:
        yield emulator


def form(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompt": "A lighthouse at dusk", "model": "flux"}
    fields.update(width=320, height=256)
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def create(emu: Emulator, http: requests.Session, **overrides: Any) -> str:
    response = http.post(emu.create_url, headers={"X-API-Key": KEY}, data=form(**overrides))
    assert response.status_code == 200, response.text
    job_id: str = response.json()["data"]["jobId"]
    return job_id


def status(emu: Emulator, http: requests.Session, job_id: str) -> dict[str, Any]:
    response = http.get(emu.status_url(job_id), headers={"X-API-Key": KEY})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is True
    data: dict[str, Any] = body["data"]
    return data


def wait_done(emu: Emulator, http: requests.Session, job_id: str) -> dict[str, Any]:
    """Poll until the job leaves PENDING (a generous deadline only guards against hangs)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = status(emu, http, job_id)
        if record["status"] in ("COMPLETED", "FAILED"):
            return record
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never finished")


# ---------------------------------------------------------------- create


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_create_answers_the_reference_envelope(
    emu: Emulator, http: requests.Session, encoding: str
) -> None:
    fields = {k: str(v) for k, v in form().items()}
    if encoding == "multipart":
        response = http.post(
            emu.create_url,
            headers={"X-API-Key": KEY},
            files={k: (None, v) for k, v in fields.items()},
        )
        assert response.request.headers["Content-Type"].startswith("multipart/form-data")
    else:
        response = http.post(emu.create_url, headers={"X-API-Key": KEY}, data=fields)
        assert response.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["success", "data", "message"]
    assert body["success"] is True
    assert body["message"] == "Image generation job created successfully"
    assert list(body["data"]) == ["jobId", "status"]
    assert body["data"]["status"] == "PENDING"
    assert uuid.UUID(body["data"]["jobId"]).version == 4
    job = emu.jobs[body["data"]["jobId"]]
    assert job.form == fields
    assert (job.prompt, job.model, job.width, job.height) == (
        "A lighthouse at dusk",
        "flux",
        320,
        256,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompt": None}, "prompt is required"),
        ({"prompt": "   "}, "prompt is required"),
        ({"model": None}, "model is required"),
        ({"model": "dalle"}, "model must be one of flux, turbo, gptimage, kontext, got 'dalle'"),
        ({"width": None}, "width is required"),
        ({"height": None}, "height is required"),
        ({"width": "wide"}, "width must be an integer between 256 and 2048, got 'wide'"),
        ({"width": 255}, "width must be an integer between 256 and 2048, got '255'"),
        ({"height": 2049}, "height must be an integer between 256 and 2048, got '2049'"),
        ({"height": "512.0"}, "height must be an integer between 256 and 2048, got '512.0'"),
        ({"width": -300}, "width must be an integer between 256 and 2048, got '-300'"),
        (
            {"image_url": "http://127.0.0.1/in.jpg"},
            "image_url is only available when model is 'kontext' (got model 'flux')",
        ),
        (
            {"model": "kontext", "image_url": "ftp://example.com/in.jpg"},
            "image_url must be an http(s) URL, got 'ftp://example.com/in.jpg'",
        ),
        ({"seed": "-1"}, "seed must be a non-negative integer, got '-1'"),
        ({"seed": "lucky"}, "seed must be a non-negative integer, got 'lucky'"),
        ({"enhance": "yes"}, "enhance must be 'true' or 'false', got 'yes'"),
        ({"safe": "1"}, "safe must be 'true' or 'false', got '1'"),
        ({"private": "no"}, "private must be 'true' or 'false', got 'no'"),
        ({"nologo": "maybe"}, "nologo must be 'true' or 'false', got 'maybe'"),
    ],
)
def test_invalid_create_is_400_with_a_clear_message(
    emu: Emulator, http: requests.Session, overrides: dict[str, Any], message: str
) -> None:
    response = http.post(emu.create_url, headers={"X-API-Key": KEY}, data=form(**overrides))
    assert response.status_code == 400
    assert response.json() == {"success": False, "message": message}
    assert emu.jobs == {}


@pytest.mark.parametrize("method", ["create", "status"])
def test_missing_or_wrong_key_is_401(emu: Emulator, http: requests.Session, method: str) -> None:
    job_id = create(emu, http)
    for headers, message in (
        ({}, "API key is required"),
        ({"X-API-Key": ""}, "API key is required"),
        ({"X-API-Key": "nope"}, "Invalid API key"),
    ):
        if method == "create":
            response = http.post(emu.create_url, headers=headers, data=form())
        else:
            response = http.get(emu.status_url(job_id), headers=headers)
        assert response.status_code == 401
        assert response.json() == {"success": False, "message": message}
    assert len(emu.jobs) == 1


def test_unknown_job_and_unknown_route_are_404(emu: Emulator, http: requests.Session) -> None:
    response = http.get(emu.status_url(str(uuid.uuid4())), headers={"X-API-Key": KEY})
    assert response.status_code == 404
    assert response.json() == {"success": False, "message": "Job not found"}
    response = http.get(emu.url + "/api/v2/nothing", headers={"X-API-Key": KEY})
    assert response.status_code == 404
    assert response.json()["success"] is False


# ---------------------------------------------------------------- status


def test_pending_record_has_the_reference_fields(emu: Emulator, http: requests.Session) -> None:
    emu.job_seconds = 30.0
    job_id = create(emu, http, seed=42, enhance="True")
    record = status(emu, http, job_id)
    assert list(record) == RECORD_KEYS
    assert record["id"] == job_id
    assert record["userId"] == emu.user_id
    assert uuid.UUID(record["userId"])
    assert record["prompt"] == "A lighthouse at dusk"
    assert list(record["parameters"]) == PARAMETER_KEYS
    assert record["parameters"] == {
        "safe": "false",
        "seed": "42",
        "model": "flux",
        "width": "320",
        "height": "256",
        "nologo": "true",
        "prompt": "A lighthouse at dusk",
        "enhance": "true",
        "private": "false",
        "image_url": "",
        "uploaded_image_path": "",
    }
    assert record["status"] == "PENDING"
    assert isinstance(record["progress"], int)
    assert 0 <= record["progress"] <= 99
    assert record["imageUrl"] is None
    assert record["processedImageUrl"] is None
    assert record["storagePath"] is None
    assert record["publicId"] is None
    assert record["metadata"] == {
        "apiResponse": None,
        "has_input_image": False,
        "processingTimeMs": None,
        "uploaded_image_path": None,
    }
    assert record["resolution"] is None
    assert record["errorMessage"] is None
    assert record["creditsUsed"] == 1
    assert ISO_MS.fullmatch(record["createdAt"])
    assert ISO_MS.fullmatch(record["updatedAt"])
    assert record["updatedAt"] >= record["createdAt"]


def test_progress_rises_then_completes_with_a_downloadable_jpeg(
    emu: Emulator, http: requests.Session
) -> None:
    emu.job_seconds = 1.0  # ample room for the first read to land while PENDING
    job_id = create(emu, http)
    seen: list[tuple[str, int]] = []
    record = status(emu, http, job_id)
    while record["status"] == "PENDING":
        seen.append((record["status"], record["progress"]))
        time.sleep(0.03)
        record = status(emu, http, job_id)
    assert seen, "the first read right after creation is PENDING"
    progress = [p for _, p in seen]
    assert progress == sorted(progress)
    assert all(0 <= p <= 99 for p in progress)

    assert record["status"] == "COMPLETED"
    assert record["progress"] == 100
    url = record["processedImageUrl"]
    assert url == record["imageUrl"]
    assert re.fullmatch(
        re.escape(f"{emu.url}/uploads/image-generation/processed/{emu.user_id}/")
        + r"[0-9a-f-]{36}\.jpg",
        url,
    )
    job = emu.jobs[job_id]
    metadata = record["metadata"]
    assert metadata["apiResponse"]["success"] is True
    assert metadata["apiResponse"]["link"].startswith(emu.second_origin.url + "/files/")
    assert metadata["has_input_image"] is False
    assert metadata["uploaded_image_path"] is None
    # processingTimeMs is the job's real duration, never less than what it was given.
    assert metadata["processingTimeMs"] >= int(job.duration * 1000)
    assert record["errorMessage"] is None

    download = http.get(url)  # no key: result files are public
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "image/jpeg"
    assert int(download.headers["Content-Length"]) == len(download.content)
    assert download.content == job.result_bytes
    image = Image.open(io.BytesIO(download.content))
    assert (image.format, image.size) == ("JPEG", (320, 256))
    # The link on the "third-party" host serves the same bytes.
    assert http.get(metadata["apiResponse"]["link"]).content == job.result_bytes


def test_result_file_is_404_until_completed(emu: Emulator, http: requests.Session) -> None:
    emu.job_seconds = 30.0
    job_id = create(emu, http)
    job = emu.wait_for_job(job_id)
    path = f"/uploads/image-generation/processed/{emu.user_id}/{job.file_name}"
    assert http.get(emu.url + path).status_code == 404
    job.duration = 0.0
    assert status(emu, http, job_id)["status"] == "COMPLETED"
    assert http.get(emu.url + path).content == job.result_bytes


def test_progress_can_be_switched_off() -> None:
    with (
        Emulator(api_key=KEY, job_seconds=0.05, report_progress=False) as emu,
        requests.Session() as http,
    ):
        http.trust_env = False
        job_id = create(emu, http)
        assert "progress" not in status(emu, http, job_id)
        record = wait_done(emu, http, job_id)
        assert "progress" not in record
        assert record["status"] == "COMPLETED"


def test_job_seconds_callable_gets_the_form(emu: Emulator, http: requests.Session) -> None:
    seen: list[dict[str, str]] = []

    def per_model(submitted: Any) -> float:
        seen.append(dict(submitted))
        return {"flux": 7.0, "turbo": 1.5}[submitted["model"]]

    emu.job_seconds = per_model
    slow, fast = create(emu, http, model="flux"), create(emu, http, model="turbo")
    assert emu.jobs[slow].duration == 7.0  # jitter=0 in this fixture
    assert emu.jobs[fast].duration == 1.5
    assert seen[0]["model"] == "flux"
    assert seen[0]["width"] == "320"


def test_jitter_spreads_durations_within_bounds() -> None:
    with Emulator(job_seconds=10.0, jitter=0.1, seed=3) as emu, requests.Session() as http:
        http.trust_env = False
        ids = [
            http.post(emu.create_url, headers={"X-API-Key": emu.api_key}, data=form()).json()[
                "data"
            ]["jobId"]
            for _ in range(8)
        ]
        durations = [emu.jobs[i].duration for i in ids]
    assert all(9.0 <= d <= 11.0 for d in durations)
    assert len(set(durations)) > 1


# ---------------------------------------------------------------- rendering


def test_rendering_is_deterministic_and_sized() -> None:
    first = render_image("a red fox", "flux", 5, 512, 384)
    assert first == render_image("a red fox", "flux", 5, 512, 384)
    assert first != render_image("a red fox", "flux", 6, 512, 384)
    assert first != render_image("a red fox", "turbo", 5, 512, 384)
    assert first != render_image("a grey fox", "flux", 5, 512, 384)
    for model in ("flux", "turbo", "gptimage", "kontext"):
        image = Image.open(io.BytesIO(render_image("x " * 200, model, 1, 2048, 256)))
        assert (image.format, image.size) == ("JPEG", (2048, 256))


def test_same_seed_gives_same_bytes_and_no_seed_picks_one(
    emu: Emulator, http: requests.Session
) -> None:
    a, b = create(emu, http, seed=99), create(emu, http, seed=99)
    c = create(emu, http)
    for job_id in (a, b, c):
        wait_done(emu, http, job_id)
    assert emu.jobs[a].result_bytes == emu.jobs[b].result_bytes
    assert emu.jobs[a].seed == 99
    assert status(emu, http, c)["parameters"]["seed"] == ""
    assert isinstance(emu.jobs[c].seed, int)
    assert emu.jobs[c].result_bytes == render_image(
        "A lighthouse at dusk", "flux", emu.jobs[c].seed, 320, 256
    )


def test_kontext_transforms_a_loopback_input_image(emu: Emulator, http: requests.Session) -> None:
    source = wait_done(emu, http, create(emu, http, model="turbo", width=640, height=480))
    job_id = create(
        emu,
        http,
        model="kontext",
        width=256,
        height=384,
        prompt="make it winter",
        image_url=source["processedImageUrl"],
    )
    record = wait_done(emu, http, job_id)
    assert record["status"] == "COMPLETED", record["errorMessage"]
    assert record["metadata"]["has_input_image"] is True
    assert record["parameters"]["image_url"] == source["processedImageUrl"]
    edited = http.get(record["processedImageUrl"]).content
    assert Image.open(io.BytesIO(edited)).size == (256, 384)
    plain = render_image("make it winter", "kontext", emu.jobs[job_id].seed, 256, 384)
    assert edited != plain
    # The emulator fetched the input from its own origin, without a key.
    (fetch,) = [r for r in emu.requests if r.path == source["processedImageUrl"][len(emu.url) :]]
    assert "X-API-Key" not in fetch.headers
    assert fetch.headers["User-Agent"] == "miragic-emulator"


@pytest.mark.parametrize(
    ("image_url", "message"),
    [
        ("https://images.example.com/in.jpg", "is not reachable from the emulator"),
        ("http://127.0.0.1:{port}/uploads/missing.jpg", "HTTP 404"),
        ("http://127.0.0.1:{port}/api/v1/image/jobs/x", "HTTP 401"),
    ],
)
def test_kontext_input_that_cannot_be_fetched_fails_the_job(
    emu: Emulator, http: requests.Session, image_url: str, message: str
) -> None:
    url = image_url.format(port=emu.url.rsplit(":", 1)[1])
    record = wait_done(emu, http, create(emu, http, model="kontext", image_url=url))
    assert record["status"] == "FAILED"
    assert record["errorMessage"].startswith("Could not fetch image_url")
    assert message in record["errorMessage"]
    assert record["processedImageUrl"] is None
    assert record["metadata"]["apiResponse"] == {"link": None, "success": False}


def test_kontext_input_that_is_not_an_image_fails_the_job(
    emu: Emulator, http: requests.Session
) -> None:
    url = f"{emu.url}/api/v1/image/generate"  # answers 405 JSON to a GET: not an image
    record = wait_done(emu, http, create(emu, http, model="kontext", image_url=url))
    assert record["status"] == "FAILED"
    assert "image_url" in record["errorMessage"]


# ---------------------------------------------------------------- recording and transport


def test_requests_are_recorded_per_job(emu: Emulator, http: requests.Session) -> None:
    job_id = create(emu, http)
    for _ in range(3):
        status(emu, http, job_id)
    assert emu.count("POST", CREATE) == 1
    assert emu.count("GET", STATUS, job_id=job_id) == 3
    post = emu.requests[0]
    assert (post.method, post.path, post.status, post.job_id) == ("POST", CREATE, 200, job_id)
    assert post.form["prompt"] == "A lighthouse at dusk"
    assert post.headers["x-api-key"] == KEY  # lookups ignore case
    assert "X-API-KEY" in post.headers
    assert isinstance(post.headers, dict)
    emu.clear_requests()
    assert emu.requests == []
    assert emu.count() == 0


def test_connections_are_kept_alive(emu: Emulator, http: requests.Session) -> None:
    job_id = create(emu, http)
    responses = [http.get(emu.status_url(job_id), headers={"X-API-Key": KEY}) for _ in range(3)]
    assert all(r.headers.get("Connection", "").lower() != "close" for r in responses)
    ports = {r.client_port for r in emu.requests}
    assert len(ports) == 1


def test_stop_frees_the_port_and_ends_idle_connections(http: requests.Session) -> None:
    emu = Emulator(api_key=KEY).start()
    url = emu.url
    assert http.post(emu.create_url, data=form()).status_code == 401
    emu.stop()
    assert not emu.running
    with pytest.raises(requests.ConnectionError):
        http.post(url + CREATE, data=form(), timeout=5)


def test_restart_after_stop_serves_again(http: requests.Session) -> None:
    emu = Emulator(api_key=KEY, job_seconds=0.05)
    with emu:
        create(emu, http)
    with emu:  # a fresh start: new ports, no old jobs, same fault settings object
        assert emu.jobs == {}
        assert wait_done(emu, http, create(emu, http))["status"] == "COMPLETED"


# ---------------------------------------------------------------- CLI


def test_cli_prints_its_url_and_key_and_serves() -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "miragic_nb.emulator",
            "--port",
            "0",
            "--api-key",
            "cli-key",
            "--job-seconds",
            "0.1",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", first)
        assert match, first
        assert "cli-key" in process.stdout.readline()
        url = match.group(1)
        with requests.Session() as http:
            http.trust_env = False
            created = http.post(f"{url}{CREATE}", headers={"X-API-Key": "cli-key"}, data=form())
            assert created.status_code == 200
            record = http.get(
                f"{url}{STATUS}{created.json()['data']['jobId']}", headers={"X-API-Key": "cli-key"}
            ).json()["data"]
            assert "progress" not in record
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


# ---------------------------------------------------------------- the reference's own examples

# Verbatim from the vendor's reference ("Request Example (Text-To-Image)", cURL tab).
REFERENCE_CURL = """curl -X POST "https://backend.miragic.ai/api/v1/image/generate" \\
  -H "X-API-Key: YOUR_API_KEY" \\
  -F "prompt=A beatiful sunset over the ocean" \\
  -F "model=flux" \\
  -F "width=2048" \\
  -F "height=1024"
"""

# Verbatim (less trailing whitespace) from the reference's "Full Code Example",
# Case 1: Text-To-Image, Python tab.
REFERENCE_PYTHON = """
import requests
import time

api_key = 'YOUR_API_KEY'   # ← Replace with your actual API key
base_url = 'https://backend.miragic.ai'

def image_gen():
    url = f'{base_url}/api/v1/image/generate'

    data = {
        'prompt': 'A beatiful sunset over the ocean',    # Any text available
        'model': 'flux',    # 'flux', 'turbo', 'gptimage', 'kontext'
        'width': 2048, # The valid value range is 256–2048
        'height': 1024   # The valid value range is 256–2048
    }

    headers = {'X-API-Key': api_key}
    response = requests.request("POST", url, headers=headers, data=data)
    print(response.text)

    if response.json()['success']:
        job_id = response.json()['data']['jobId']
        print(f'Job ID: {job_id}')

        # Poll for results
        while True:
            result = requests.get(
                f'{base_url}/api/v1/image/jobs/{job_id}',
                headers=headers
            )

            if result.json()['data']['status'] == 'COMPLETED':
                print('Result:', result.json())
                break
            elif result.json()['data']['status'] == 'FAILED':
                print('Job failed:', result.json())
                break

            time.sleep(2)
    else:
        print('Error:', response.json())

if __name__ == '__main__':
    image_gen()
"""  # noqa: RUF001 (the reference's own en dashes, kept verbatim)


def _substitute(code: str, emu: Emulator) -> str:
    return code.replace("https://backend.miragic.ai", emu.url).replace("YOUR_API_KEY", emu.api_key)


def test_reference_curl_example_runs_unchanged(emu: Emulator) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    result = subprocess.run(
        ["bash", "-c", _substitute(REFERENCE_CURL, emu).strip() + " --silent --show-error"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=True,
    )
    body = json.loads(result.stdout)
    assert body["success"] is True
    job = emu.jobs[body["data"]["jobId"]]
    assert (job.prompt, job.model, job.width, job.height) == (
        "A beatiful sunset over the ocean",
        "flux",
        2048,
        1024,
    )
    assert emu.requests[0].headers["Content-Type"].startswith("multipart/form-data")


def test_reference_python_full_example_runs_unchanged(emu: Emulator) -> None:
    emu.job_seconds = 0.3
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_substitute(REFERENCE_PYTHON, emu), {"__name__": "__main__"})
    output = printed.getvalue()
    assert "Job ID: " in output
    assert "Result: {'success': True" in output
    assert "'status': 'COMPLETED'" in output
    (job_id,) = emu.jobs
    assert emu.jobs[job_id].result_bytes is not None
    assert emu.requests[0].headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert emu.count("GET", STATUS, job_id=job_id) >= 1


def test_reference_image_to_image_example_is_refused_per_the_contract(emu: Emulator) -> None:
    # The reference pairs image_url with model=flux; the field table (and our contract) says
    # image_url needs kontext, so the emulator answers 400.
    curl = REFERENCE_CURL.rstrip() + (
        ' \\\n  -F "image_url=https://images.tech.co/wp-content/uploads/2023/11/'
        '21202640/AI-generated-landscape-708x400.jpg"'
    )
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    result = subprocess.run(
        ["bash", "-c", _substitute(curl, emu) + " --silent --show-error"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=True,
    )
    assert json.loads(result.stdout) == {
        "success": False,
        "message": "image_url is only available when model is 'kontext' (got model 'flux')",
    }


def test_a_huge_one_word_prompt_lays_out_a_bounded_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageDraw

    from miragic_nb.emulator import render

    measured: list[int] = []
    original = ImageDraw.ImageDraw.textlength

    def counting(self: ImageDraw.ImageDraw, text: str, *args: object, **kwargs: object) -> float:
        measured.append(len(text))
        return original(self, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageDraw.ImageDraw, "textlength", counting)
    image = render.Image.new("RGB", (512, 512))
    render._caption(image, "w" * 200_000, "flux · seed 1", nologo=True)
    # The work per job: characters measured, whatever the prompt's length.
    assert sum(measured) < 500_000  # the 200,000-character word alone, measured once, is 200,000
