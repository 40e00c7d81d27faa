"""The client against the emulator, over real loopback sockets."""

from __future__ import annotations

import pytest
from PIL import Image

from miragic_nb import AuthenticationError, Client, GeneratedImage, Job, JobFailedError
from miragic_nb.emulator import Emulator
from tests.conftest import FAST_POLLS

CREATE = "/api/v1/image/generate"
STATUS = "/api/v1/image/jobs/"


def posts(emulator: Emulator) -> int:
    return emulator.count("POST", CREATE)


def test_text_to_image(client: Client, emulator: Emulator) -> None:
    seen: list[Job] = []
    image = client.generate(
        "A lighthouse on a cliff at dusk",
        model="turbo",
        width=640,
        height=384,
        seed=7,
        on_progress=seen.append,
    )
    assert isinstance(image, Image.Image)
    assert isinstance(image, GeneratedImage)
    assert image.size == (640, 384)
    meta = image.info["miragic"]
    assert meta["prompt"] == "A lighthouse on a cliff at dusk"
    assert (meta["model"], meta["width"], meta["height"], meta["seed"]) == ("turbo", 640, 384, 7)
    assert meta["image_url"] is None
    assert meta["result_url"].startswith(emulator.url + "/uploads/image-generation/processed/")
    assert meta["credits_used"] == 1
    assert meta["elapsed_s"] > 0
    job_id = meta["job_id"]
    # The original bytes are exactly what the server rendered.
    assert image.original_bytes == emulator.jobs[job_id].result_bytes
    assert image.format == "JPEG"
    # One create, and on_progress saw every status read, ending completed.
    assert posts(emulator) == 1
    assert len(seen) == emulator.count("GET", STATUS, job_id=job_id)
    assert seen[-1].is_completed
    assert all(job.id == job_id for job in seen)


def test_form_is_multipart_with_only_set_fields(client: Client, emulator: Emulator) -> None:
    client.submit("a cat", model="flux", width=512, height=512, enhance=True)
    (create,) = [r for r in emulator.requests if r.method == "POST"]
    assert create.headers["Content-Type"].startswith("multipart/form-data")
    form = dict(create.form)
    assert form.pop("seed").isdigit()  # no seed given: the client chose one (it is sent always)
    assert form == {
        "prompt": "a cat",
        "model": "flux",
        "width": "512",
        "height": "512",
        "enhance": "true",
    }
    assert create.headers["X-API-Key"] == emulator.api_key


def test_image_to_image_with_kontext(client: Client, emulator: Emulator) -> None:
    first = client.generate("a red barn", width=512, height=512, seed=1)
    url = first.info["miragic"]["result_url"]
    second = client.generate(
        "the same barn in winter", model="kontext", image_url=url, width=512, height=512, seed=1
    )
    assert second.info["miragic"]["image_url"] == url
    assert second.info["miragic"]["model"] == "kontext"
    assert second.original_bytes != first.original_bytes
    job = client.get_job(second.info["miragic"]["job_id"])
    assert job.parameters["image_url"] == url
    assert job.raw["metadata"]["has_input_image"] is True


def test_key_from_environment(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    with Client(poll_schedule=FAST_POLLS) as client:
        assert client.base_url == emulator.url
        assert client.submit("a cat").status == "PENDING"


def test_wrong_key_is_an_authentication_error(emulator: Emulator) -> None:
    with Client(api_key="wrong-key-abcdef", base_url=emulator.url) as client:
        with pytest.raises(AuthenticationError, match="401") as info:
            client.generate("a cat")
    assert "wrong-key-abcdef" not in str(info.value)
    assert "wrong-key-abcdef" not in repr(client)
    assert posts(emulator) == 1


def test_wait_resumes_an_existing_job_without_creating_one(
    client: Client, emulator: Emulator
) -> None:
    job = client.submit("a cat", seed=3)
    image = client.resume(job.id)
    assert posts(emulator) == 1
    # Metadata comes from what the server recorded.
    assert image.info["miragic"]["prompt"] == "a cat"
    assert image.info["miragic"]["seed"] == 3
    assert client.wait(job.id).is_completed


def test_progress_is_reported_while_pending(emulator: Emulator) -> None:
    emulator.job_seconds = 1.0
    with Client(emulator.api_key, emulator.url, poll_schedule=FAST_POLLS) as client:
        seen: list[Job] = []
        client.wait(client.submit("a cat"), on_progress=seen.append)
    pending = [job.progress for job in seen if not job.is_finished]
    assert pending, "expected status reads while the job ran"
    assert all(p is not None and 0 <= p < 100 for p in pending)
    assert pending == sorted(pending)
    assert seen[-1].progress == 100.0


# Faults: tests/test_faults.py; bad input: tests/test_bad_input.py; the key: tests/test_secrets.py


# -- history -------------------------------------------------------------------------------


def test_job_id_is_recorded_before_waiting(client: Client, emulator: Emulator) -> None:
    assert client.history is not None
    statuses_while_waiting: list[str | None] = []

    def look(job: Job) -> None:
        record = client.history.get(job.id) if client.history else None
        statuses_while_waiting.append(record.status if record else None)

    image = client.generate("a cat", seed=5, on_progress=look)
    assert statuses_while_waiting[0] == "PENDING"
    record = client.history.get(image.info["miragic"]["job_id"])
    assert record is not None
    assert record.status == "COMPLETED"
    assert record.path is not None
    assert record.path.read_bytes().startswith(image.original_bytes[:2])
    assert image.info["miragic"]["path"] == str(record.path)


def test_explicit_seed_reuses_a_saved_result(client: Client, emulator: Emulator) -> None:
    first = client.generate("a cat", seed=11, width=320, height=320)
    emulator.clear_requests()
    again = client.generate("a cat", seed=11, width=320, height=320)
    assert emulator.requests == []
    assert again.info["miragic"]["reused"] is True
    assert again.info["miragic"]["job_id"] == first.info["miragic"]["job_id"]
    assert again.tobytes() == first.tobytes()
    # Anything different, or reuse=False, makes a new job.
    client.generate("a cat", seed=11, width=320, height=320, enhance=True)
    client.generate("a cat", seed=11, width=320, height=320, reuse=False)
    client.generate("a cat", width=320, height=320)  # no seed: always a new image
    assert posts(emulator) == 3


def test_failures_are_recorded(client: Client, emulator: Emulator) -> None:
    emulator.faults.force_failure = True
    emulator.faults.failure_message = "bad prompt"
    with pytest.raises(JobFailedError) as info:
        client.generate("a cat")
    record = client.history.get(info.value.job_id) if client.history else None
    assert record is not None
    assert (record.status, record.error_message) == ("FAILED", "bad prompt")


def test_history_can_be_disabled(emulator: Emulator, tmp_path: object) -> None:
    with Client(emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, history=False) as c:
        assert c.history is None
        c.generate("a cat", seed=1)
        c.generate("a cat", seed=1)
    assert posts(emulator) == 2


def test_module_level_generate_uses_a_default_client_made_on_first_use(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import miragic_nb

    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    image = miragic_nb.generate("a cat", width=256, height=256)
    assert image.size == (256, 256)
    client = miragic_nb.default_client()
    assert client is miragic_nb.default_client()
    assert client.base_url == emulator.url
    assert emulator.api_key not in repr(client)
    assert emulator.api_key not in repr(vars(client))
