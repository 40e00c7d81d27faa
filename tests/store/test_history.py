"""History: job ids and results persisted in the database and image files, shared safely
between processes."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import multiprocessing
import os
import random
import re
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import platformdirs
import pytest
from PIL import Image

import miragic_nb
from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.jobs import Job
from miragic_nb._core.request import MAX_PROMPT_CHARS, GenerationRequest
from miragic_nb._core.result_info import ResultInfo
from miragic_nb._core.states import CANCELLED, COMPLETED, FAILED, PENDING, TIMEOUT
from miragic_nb._store.history import (
    History,
    HistoryRecord,
    _write_file,
    jpeg_insert_comment,
    read_embedded_metadata,
    reuse_key,
)
from miragic_nb.client import Client
from tests.first_release import JOBS as FIRST_RELEASE_JOBS
from tests.first_release import copy_fixture

BASE = "http://127.0.0.1:8765"
PROMPT = "A lighthouse on a cliff at dusk, {style} — 灯台 ☼"


# -- real images and the metadata the client attaches ----------------------------------------


def noise(size: tuple[int, int] = (64, 48), *, seed: int = 1, mode: str = "RGB") -> Image.Image:
    """A picture with detail in it, so a re-encode would show."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    return image.convert(mode)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(seed: int = 1, **options: Any) -> bytes:
    return encode(noise(seed=seed), "JPEG", quality=85, **options)


def png_bytes(seed: int = 1, mode: str = "RGB") -> bytes:
    return encode(noise(seed=seed, mode=mode), "PNG")


def metadata(job_id: str, request: GenerationRequest, *, base_url: str = BASE) -> dict[str, Any]:
    """The metadata a result carries (the keys ``ResultInfo.as_dict`` writes)."""
    return {
        "job_id": job_id,
        "prompt": request.prompt,
        "model": request.model,
        "width": request.width,
        "height": request.height,
        "seed": request.seed,
        "image_url": request.image_url,
        "options": {f: getattr(request, f) for f in ("enhance", "safe", "private", "nologo")},
        "result_url": f"{base_url}/uploads/{job_id}.jpg?sig=abc",
        "elapsed_s": 4.2,
        "processing_s": 3.9,
        "credits_used": 1.0,
        "created_at": "2025-01-02T03:04:05+00:00",
        "base_url": base_url,
    }


def result(
    job_id: str,
    request: GenerationRequest,
    data: bytes | None = None,
    *,
    base_url: str = BASE,
) -> GeneratedImage:
    return GeneratedImage.from_bytes(
        data if data is not None else jpeg_bytes(), metadata(job_id, request, base_url=base_url)
    )


def complete(
    store: History,
    job_id: str,
    request: GenerationRequest,
    data: bytes | None = None,
    *,
    base_url: str = BASE,
) -> HistoryRecord:
    store.record_created(job_id, request, base_url=base_url)
    return store.record_result(result(job_id, request, data, base_url=base_url))


def pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


@pytest.fixture
def store(tmp_path: Path) -> History:
    return History(tmp_path / "home")


def reused_job(store: History, request: GenerationRequest, base_url: str = BASE) -> str | None:
    """The job id of the saved result ``reuse`` returns for ``request``, or None."""
    image = store.reuse(request, base_url=base_url)
    return None if image is None else str(image.metadata["job_id"])


# -- the round trip --------------------------------------------------------------------------


def test_round_trip_created_then_result_then_records_newest_first(store: History) -> None:
    requests = [GenerationRequest(f"prompt {n}", model="turbo", seed=n) for n in range(3)]
    for n, request in enumerate(requests):
        created = store.record_created(f"job-{n}", request, base_url=BASE)
        assert created.status == PENDING
        assert created.path is None
    image = result("job-1", requests[1])
    saved = store.record_result(image)

    assert [r.job_id for r in store.records()] == ["job-2", "job-1", "job-0"]
    assert [r.job_id for r in store.records(limit=2)] == ["job-2", "job-1"]
    record = store.get("job-1")
    assert record == saved
    assert record is not None
    assert (record.status, record.prompt, record.model) == (COMPLETED, "prompt 1", "turbo")
    assert (record.width, record.height, record.seed) == (1024, 1024, 1)
    assert record.base_url == BASE
    assert record.result_url == f"{BASE}/uploads/job-1.jpg?sig=abc"
    assert (record.elapsed_s, record.processing_s, record.credits_used) == (4.2, 3.9, 1.0)
    assert record.server_created_at == "2025-01-02T03:04:05+00:00"
    assert record.options == {"enhance": None, "safe": None, "private": None, "nologo": None}
    assert record.image_size == (64, 48)
    assert record.path == store.home / "images" / "job-1.jpg"
    assert record.path.is_file()
    assert image.metadata["path"] == str(record.path)
    assert record.created_at <= record.updated_at
    assert [e.status for e in record.events] == [PENDING, COMPLETED]
    assert store.get("job-0") is not None
    assert store.get("job-0").status == PENDING  # type: ignore[union-attr]
    assert store.get("unknown-job") is None


def test_reuse_rebuilds_a_generated_image(store: History) -> None:
    request = GenerationRequest(PROMPT, seed=7, enhance=True)
    original = jpeg_bytes()
    complete(store, "job-a", request, original)

    loaded = store.reuse(request, base_url=BASE)
    assert isinstance(loaded, GeneratedImage)
    assert isinstance(loaded, Image.Image)
    assert loaded.format == "JPEG"
    assert loaded.tobytes() == pixels(original)[2]
    meta = loaded.metadata
    assert meta["job_id"] == "job-a"
    assert meta["prompt"] == PROMPT
    assert (meta["model"], meta["width"], meta["height"], meta["seed"]) == ("flux", 1024, 1024, 7)
    assert meta["options"]["enhance"] is True
    assert meta["path"] == str(store.home / "images" / "job-a.jpg")
    assert meta["reused"] is True
    pending = GenerationRequest(PROMPT, seed=8)
    store.record_created("pending-job", pending, base_url=BASE)
    assert store.reuse(pending, base_url=BASE) is None


def test_result_metadata_from_the_real_client_is_recorded(store: History) -> None:
    # Guards the shape contract with ResultInfo, the producer of image.metadata.
    request = GenerationRequest(PROMPT, model="kontext", image_url="https://x.test/in.png", seed=3)
    job = Job.from_record(
        {
            "id": "job-client",
            "status": "COMPLETED",
            "processedImageUrl": "/uploads/out.jpg",
            "createdAt": "2025-01-02T03:04:05.000Z",
            "metadata": {"processingTimeMs": 4827},
            "creditsUsed": 1,
        },
        base_url=BASE,
    )
    meta = ResultInfo.of_job(
        job, request, base_url=BASE, elapsed=5.5, image_size=(request.width, request.height)
    ).as_dict()
    store.record_created(job.id, request, base_url=BASE)
    record = store.record_result(GeneratedImage.from_bytes(png_bytes(), meta))
    assert record.result_url == f"{BASE}/uploads/out.jpg"
    assert (record.elapsed_s, record.processing_s, record.credits_used) == (5.5, 4.827, 1.0)
    assert record.image_url == "https://x.test/in.png"
    assert record.reuse_key == reuse_key(request, base_url=BASE)
    assert reused_job(store, request) == record.job_id


def test_result_without_a_created_record_takes_the_request_from_metadata(store: History) -> None:
    # A job resumed by id in another kernel: record_created never ran here.
    request = GenerationRequest("resumed", model="gptimage", width=512, height=768, seed=9)
    record = store.record_result(result("job-r", request))
    assert (record.prompt, record.model, record.width, record.height) == (
        "resumed",
        "gptimage",
        512,
        768,
    )
    assert record.reuse_key == reuse_key(request, base_url=BASE)
    assert reused_job(store, request) == record.job_id


def test_record_result_needs_a_job_id(store: History) -> None:
    image = GeneratedImage.from_bytes(jpeg_bytes(), {"prompt": "no id"})
    with pytest.raises(ValueError, match="job_id"):
        store.record_result(image)
    with pytest.raises(ValueError, match="job_id"):
        store.record_status("  ", FAILED)
    with pytest.raises(ValueError, match="status"):
        store.record_status("job", "")


# -- status updates merge ----------------------------------------------------------------------


def test_status_updates_merge_and_a_saved_result_is_never_demoted(store: History) -> None:
    request = GenerationRequest(PROMPT, seed=1)
    store.record_created("job-s", request, base_url=BASE)
    timed_out = store.record_status("job-s", TIMEOUT, error_message="did not finish within 300s")
    assert (timed_out.status, timed_out.error_message) == (TIMEOUT, "did not finish within 300s")
    assert (timed_out.prompt, timed_out.seed, timed_out.base_url) == (PROMPT, 1, BASE)

    done = store.record_result(result("job-s", request))  # resumed later, and finished
    assert (done.status, done.error_message) == (COMPLETED, None)
    assert done.created_at == timed_out.created_at

    late = store.record_status("job-s", CANCELLED)  # another kernel gives up on it afterwards
    assert late.status == COMPLETED
    assert late.path == done.path
    assert [e.status for e in late.events] == [PENDING, TIMEOUT, COMPLETED, CANCELLED]
    assert late.events[1].error_message == "did not finish within 300s"
    assert store.get("job-s") == late


def test_status_first_then_created_keeps_the_status(store: History) -> None:
    store.record_status("job-f", "failed", error_message="NSFW content detected")
    record = store.record_created("job-f", GenerationRequest("p", seed=2), base_url=BASE)
    assert (record.status, record.error_message) == (FAILED, "NSFW content detected")
    assert (record.prompt, record.seed) == ("p", 2)


# -- crashes and concurrent writers ---------------------------------------------------------


def test_a_temp_image_left_by_a_crash_is_never_read(store: History) -> None:
    request = GenerationRequest("first", seed=1)
    saved = complete(store, "job-1", request, jpeg_bytes(seed=1))
    assert saved.path is not None
    # The crash: a new image half-written to its temp file, never renamed into place.
    stray = saved.path.with_name(f".{saved.path.name}.abc123.tmp")
    stray.write_bytes(jpeg_bytes(seed=2)[:50])
    assert store.get("job-1") == saved
    image = store.reuse(request, base_url=BASE)
    assert image is not None
    assert image.tobytes() == pixels(jpeg_bytes(seed=1))[2]
    # Writing goes on normally beside the stray temp file.
    store.record_status("job-1", FAILED, error_message="boom")
    assert store.get("job-1").events[-1].error_message == "boom"  # type: ignore[union-attr]


def test_failed_rename_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "occupied.jpg"
    target.mkdir()
    (target / "keep").write_text("a directory cannot be replaced by a file")
    with pytest.raises(IsADirectoryError):
        _write_file(target, b"\xff\xd8\xff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied.jpg"]


def _worker(home: str, worker: int, jobs: int, shared_updates: int) -> None:
    """One kernel: records its own jobs (with results) and updates a shared job repeatedly."""
    store = History(home)
    for n in range(jobs):
        job_id = f"w{worker}-job-{n}"
        request = GenerationRequest(f"worker {worker} image {n}", seed=n)
        store.record_created(job_id, request, base_url=BASE)
        store.record_status("shared-job", PENDING, error_message=f"w{worker} saw it")
        store.record_result(result(job_id, request, jpeg_bytes(seed=worker * 100 + n)))
    for n in range(shared_updates):
        store.record_status("shared-job", TIMEOUT, error_message=f"w{worker}-{n}")


def test_several_processes_write_at_once_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "shared-home"
    workers, jobs, updates = 4, 6, 10
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(str(home), w, jobs, updates)) for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * workers

    store = History(home)
    with caplog.at_level(logging.WARNING, logger="miragic_nb"):
        records = store.records()
    assert caplog.records == []
    assert len(records) == workers * jobs + 1
    for w in range(workers):
        for n in range(jobs):
            record = store.get(f"w{w}-job-{n}")
            assert record is not None
            assert (record.status, record.prompt) == (COMPLETED, f"worker {w} image {n}")
            assert record.path is not None
            assert pixels(record.path.read_bytes())[2] == pixels(jpeg_bytes(seed=w * 100 + n))[2]
    shared = store.get("shared-job")
    assert shared is not None
    messages = {e.error_message for e in shared.events}
    # Every one of the concurrent read-merge-write updates landed.
    assert len(shared.events) == workers * (jobs + updates)
    assert {f"w{w}-{n}" for w in range(workers) for n in range(updates)} <= messages
    assert {f"w{w} saw it" for w in range(workers)} <= messages
    assert not list(home.rglob("*.tmp"))
    assert not list(home.rglob("*.lock"))


# -- files that are not (or no longer) good records -------------------------------------------


def test_corrupt_partial_and_foreign_first_release_files_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = copy_fixture(tmp_path / "home")
    jobs = home / "jobs"
    good = (jobs / "job-done-png.json").read_text()
    (jobs / "corrupt.json").write_text('{"format": "miragic-nb.history", "job_id": "corr')
    (jobs / "empty.json").write_bytes(b"")
    (jobs / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (jobs / "list.json").write_text("[1, 2, 3]")
    (jobs / "foreign.json").write_text(json.dumps({"job_id": "foreign", "status": "COMPLETED"}))
    (jobs / "renamed.json").write_text(good)  # a record whose job id is not its file name
    (jobs / "notes.txt").write_text("not a record at all")
    (jobs / "folder.json").mkdir()
    store = History(home)

    with caplog.at_level(logging.WARNING, logger="miragic_nb"):
        listed = {r.job_id for r in store.records()}
    assert listed == {job_id for job_id, *_ in FIRST_RELEASE_JOBS}
    skipped = " ".join(r.getMessage() for r in caplog.records)
    for name in ("corrupt", "empty", "binary", "list", "foreign", "renamed"):
        assert f"{name}.json" in skipped
    assert "notes.txt" not in skipped
    assert "folder.json" not in skipped
    assert store.get("corrupt") is None

    # The same unreadable files are not reported again on the next listing.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="miragic_nb"):
        assert len(store.records()) == len(FIRST_RELEASE_JOBS)
    assert caplog.records == []

    # A job whose file was corrupt is recorded normally by the next update of that job.
    replaced = store.record_created("corrupt", GenerationRequest("again"), base_url=BASE)
    assert store.get("corrupt") == replaced


def test_bad_field_types_are_read_as_unknown(tmp_path: Path) -> None:
    home = copy_fixture(tmp_path / "home")
    path = home / "jobs" / "job-done-png.json"
    data = json.loads(path.read_text())
    data.update(width="wide", seed=True, options=["x"], created_at="yesterday", image="/etc/passwd")
    path.write_text(json.dumps(data))
    store = History(home)
    record = store.get("job-done-png")
    assert record is not None
    assert (record.width, record.seed, record.options, record.path) == (None, None, {}, None)
    assert record.prompt == "a red fox in snow"

    # The same holds for a hand-edited database: an image outside images/ is not a path.
    with sqlite3.connect(home / "history.sqlite3") as connection:
        connection.execute("UPDATE jobs SET image = '../../etc/passwd', options = 'not json'")
    connection.close()
    assert all(r.path is None and r.options == {} for r in store.records())


def test_job_ids_are_sanitised_into_distinct_safe_file_names(store: History) -> None:
    ids = ["a/b", "a_b", "../../escape", "with space", "x" * 300, "ünï", ".hidden", "56ba-uuid"]
    for job_id in ids:
        complete(store, job_id, GenerationRequest(f"prompt for {job_id}", seed=1))
    files = sorted(p.name for p in (store.home / "images").iterdir())
    assert len(files) == len(ids)
    assert all(len(name) < 120 and not name.startswith(".") for name in files)
    assert "56ba-uuid.jpg" in files
    assert {p.parent for p in store.home.rglob("*.jpg")} == {store.home / "images"}
    for job_id in ids:
        record = store.get(job_id)
        assert record is not None
        assert record.job_id == job_id
        assert record.prompt == f"prompt for {job_id}"
        assert record.path is not None
        assert record.path.parent == store.home / "images"
    assert {r.job_id for r in store.records()} == set(ids)


# -- reuse -------------------------------------------------------------------------------------

REUSE_REQUEST = GenerationRequest(
    PROMPT,
    model="kontext",
    width=768,
    height=512,
    image_url="https://img.test/input.png",
    seed=42,
    enhance=False,
    safe=True,
)


def test_reuse_hits_an_exact_match_and_marks_the_image_reused(store: History) -> None:
    original = jpeg_bytes(seed=5)
    saved = complete(store, "job-reuse", REUSE_REQUEST, original)
    assert saved.reuse_key == reuse_key(REUSE_REQUEST, base_url=BASE)

    same = GenerationRequest(**dataclasses.asdict(REUSE_REQUEST))
    assert reused_job(store, same) == saved.job_id
    assert reused_job(store, same, BASE + "/") == saved.job_id  # same server
    image = store.reuse(same, base_url=BASE)
    assert image is not None
    assert image.metadata["reused"] is True
    assert image.metadata["job_id"] == "job-reuse"
    assert image.tobytes() == pixels(original)[2]


def test_reuse_prefers_the_newest_matching_result(store: History) -> None:
    complete(store, "older", REUSE_REQUEST, jpeg_bytes(seed=1))
    newer = complete(store, "newer", REUSE_REQUEST, jpeg_bytes(seed=2))
    assert reused_job(store, REUSE_REQUEST) == newer.job_id


@pytest.mark.parametrize(
    ("change", "base_url"),
    [
        ({}, "http://127.0.0.1:9999"),
        ({}, "https://backend.miragic.ai"),
        ({"model": "flux", "image_url": None}, BASE),
        ({"width": 769}, BASE),
        ({"height": 513}, BASE),
        ({"prompt": PROMPT + "!"}, BASE),
        ({"seed": 43}, BASE),
        ({"image_url": "https://img.test/other.png"}, BASE),
        ({"image_url": None}, BASE),
        ({"enhance": True}, BASE),
        ({"enhance": None}, BASE),
        ({"safe": False}, BASE),
        ({"private": True}, BASE),
        ({"nologo": True}, BASE),
        ({"nologo": False}, BASE),
    ],
)
def test_reuse_misses_when_anything_differs(
    store: History, change: dict[str, Any], base_url: str
) -> None:
    complete(store, "job-reuse", REUSE_REQUEST)
    other = replace(REUSE_REQUEST, **change)
    assert other != REUSE_REQUEST or base_url != BASE
    assert store.reuse(other, base_url=base_url) is None


def test_reuse_needs_a_seed(store: History) -> None:
    unseeded = replace(REUSE_REQUEST, seed=None)
    complete(store, "job-unseeded", unseeded)
    assert store.reuse(unseeded, base_url=BASE) is None


def test_reuse_needs_a_completed_record_with_a_readable_image(store: History) -> None:
    store.record_created("only-created", REUSE_REQUEST, base_url=BASE)
    assert store.reuse(REUSE_REQUEST, base_url=BASE) is None
    store.record_status("only-created", FAILED, error_message="no")
    assert store.reuse(REUSE_REQUEST, base_url=BASE) is None

    saved = complete(store, "gone", REUSE_REQUEST)
    assert saved.path is not None
    saved.path.unlink()
    assert store.reuse(REUSE_REQUEST, base_url=BASE) is None

    broken = complete(store, "broken", REUSE_REQUEST)
    assert broken.path is not None
    broken.path.write_bytes(b"<html>not an image</html>")
    assert store.reuse(REUSE_REQUEST, base_url=BASE) is None

    # A truncated file passes the header check but does not decode: reuse() skips it.
    good = complete(store, "good", REUSE_REQUEST, jpeg_bytes(seed=3))
    truncated = complete(store, "truncated", REUSE_REQUEST, jpeg_bytes(seed=4))
    assert truncated.path is not None
    truncated.path.write_bytes(truncated.path.read_bytes()[:40])
    image = store.reuse(REUSE_REQUEST, base_url=BASE)
    assert image is not None
    assert image.metadata["job_id"] == good.job_id


# -- metadata inside the saved image files ----------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"exif": Image.Exif()},
        {"progressive": True, "comment": b"server comment"},
        {"icc_profile": b"\x00" * 200, "dpi": (72, 72)},
    ],
    ids=["jfif", "exif", "progressive-with-comment", "icc"],
)
def test_saved_jpeg_carries_metadata_and_identical_pixels(
    store: History, options: dict[str, Any]
) -> None:
    exif = options.get("exif")
    if exif is not None:
        exif[0x010F] = "Camera maker"
    original = jpeg_bytes(seed=11, **options)
    request = GenerationRequest(PROMPT, model="turbo", seed=5, nologo=True)
    saved = complete(store, "job-jpeg", request, original)
    assert saved.path is not None
    assert saved.path.suffix == ".jpg"
    data = saved.path.read_bytes()

    with Image.open(saved.path) as opened:
        assert opened.format == "JPEG"
        embedded = json.loads(opened.info["comment"])["miragic"]
        if exif is not None:
            assert opened.getexif()[0x010F] == "Camera maker"
    assert embedded["prompt"] == PROMPT
    assert embedded["job_id"] == "job-jpeg"
    assert (embedded["model"], embedded["seed"], embedded["width"]) == ("turbo", 5, 1024)
    assert embedded["options"]["nologo"] is True
    assert "result_url" not in embedded  # signed and temporary
    assert read_embedded_metadata(data) == embedded
    # Not re-encoded: the original bytes are all there, with one segment added.
    assert pixels(data) == pixels(original)
    assert len(data) > len(original)
    marker = data.index(b"\xff\xfe" + (len(data) - len(original) - 2).to_bytes(2, "big"))
    assert data[:marker] + data[marker + len(data) - len(original) :] == original


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L"])
def test_saved_png_carries_metadata_and_identical_pixels(store: History, mode: str) -> None:
    original = png_bytes(seed=12, mode=mode)
    request = GenerationRequest(PROMPT, seed=6, private=True)
    saved = complete(store, "job-png", request, original)
    assert saved.path is not None
    assert saved.path.suffix == ".png"
    data = saved.path.read_bytes()

    with Image.open(saved.path) as opened:
        embedded = json.loads(opened.info["miragic"])
    with Image.open(saved.path) as opened:
        opened.verify()  # chunk CRCs are checked
    assert embedded["prompt"] == PROMPT
    assert (embedded["seed"], embedded["options"]["private"]) == (6, True)
    assert read_embedded_metadata(data) == embedded
    assert pixels(data) == pixels(original)
    assert data.endswith(original[33:])  # everything after IHDR follows the new chunk unchanged
    assert data[:33] == original[:33]


FORGED = {"job_id": "server-chosen", "prompt": "what the server claims", "seed": 999}


def test_a_forged_jpeg_comment_from_the_server_never_wins(store: History) -> None:
    # A server's JPEG that already holds a {"miragic": ...} comment, before and after others.
    clean = jpeg_bytes(seed=13, comment=b"an ordinary server comment")
    forged = jpeg_insert_comment(clean, json.dumps({"miragic": FORGED}).encode())
    forged = jpeg_insert_comment(forged, b'{"miragic": {"job_id": "second forgery"}}')
    request = GenerationRequest("what we asked for", seed=5)
    saved = complete(store, "our-job", request, forged)
    assert saved.path is not None
    data = saved.path.read_bytes()

    embedded = read_embedded_metadata(data)
    assert embedded is not None
    assert (embedded["job_id"], embedded["prompt"], embedded["seed"]) == (
        "our-job",
        "what we asked for",
        5,
    )
    with Image.open(saved.path) as opened:
        assert json.loads(opened.info["comment"])["miragic"]["job_id"] == "our-job"
    assert b"server-chosen" not in data
    assert b"second forgery" not in data
    assert b"an ordinary server comment" in data  # other comments are the server's to keep
    # Not re-encoded: the server's bytes minus the forged segments plus ours.
    assert pixels(data) == pixels(forged)
    ours = data.index(b"\xff\xfe", data.index(b"an ordinary server comment"))
    length = int.from_bytes(data[ours + 2 : ours + 4], "big")
    assert data[:ours] + data[ours + 2 + length :] == clean


@pytest.mark.parametrize("chunk", ["tEXt", "iTXt", "zTXt"])
def test_a_forged_png_text_chunk_from_the_server_never_wins(store: History, chunk: str) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    text = json.dumps(FORGED)
    if chunk == "tEXt":
        info.add_text("miragic", text)
    else:
        info.add_itxt("miragic", text, zip=chunk == "zTXt")
    info.add_text("Software", "the server's own tool")
    forged = encode(noise(seed=14), "PNG", pnginfo=info)
    with Image.open(io.BytesIO(forged)) as opened:
        assert json.loads(opened.info["miragic"])["job_id"] == "server-chosen"  # a real forgery
    saved = complete(store, "our-job", GenerationRequest("what we asked for", seed=6), forged)
    assert saved.path is not None
    data = saved.path.read_bytes()

    embedded = read_embedded_metadata(data)
    assert embedded is not None
    assert (embedded["job_id"], embedded["prompt"]) == ("our-job", "what we asked for")
    with Image.open(saved.path) as opened:
        assert json.loads(opened.info["miragic"])["job_id"] == "our-job"
        assert opened.info["Software"] == "the server's own tool"
    with Image.open(saved.path) as opened:
        opened.verify()  # every chunk's CRC still holds
    assert b"server-chosen" not in data
    assert pixels(data) == pixels(forged)


def test_other_formats_are_saved_as_sent(store: History) -> None:
    original = encode(noise(seed=3), "GIF")
    saved = complete(store, "job-gif", GenerationRequest("gif", seed=1), original)
    assert saved.path is not None
    assert saved.path.suffix == ".gif"
    assert saved.path.read_bytes() == original
    loaded = store.reuse(GenerationRequest("gif", seed=1), base_url=BASE)
    assert loaded is not None
    assert loaded.metadata["prompt"] == "gif"


def test_jpeg_comment_goes_after_the_app_segments() -> None:
    original = jpeg_bytes(exif=Image.Exif())
    app_end = 2
    while original[app_end + 1] in range(0xE0, 0xF0):
        app_end += 2 + int.from_bytes(original[app_end + 2 : app_end + 4], "big")
    assert app_end > 2  # JFIF APP0 (and EXIF APP1) present
    out = jpeg_insert_comment(original, b"hello")
    assert out == original[:app_end] + b"\xff\xfe\x00\x07hello" + original[app_end:]
    with Image.open(io.BytesIO(out)) as opened:
        assert opened.info["comment"] == b"hello"

    bare = b"\xff\xd8" + original[app_end:]  # no APP segments at all
    assert jpeg_insert_comment(bare, b"x") == b"\xff\xd8\xff\xfe\x00\x03x" + original[app_end:]
    with pytest.raises(ValueError, match="SOI"):
        jpeg_insert_comment(png_bytes(), b"x")
    with pytest.raises(ValueError, match="at most"):
        jpeg_insert_comment(original, b"x" * 65534)


def test_an_enormous_prompt_is_shortened_to_fit_one_jpeg_comment(store: History) -> None:
    # Within the prompt limit in characters, yet past one comment segment (64 KiB) in UTF-8.
    prompt = "🌊🌊🌊🌊🌊🌊🌊🌊🌊 " * 1900
    assert len(prompt) <= MAX_PROMPT_CHARS < len(prompt.encode())
    saved = complete(store, "job-long", GenerationRequest(prompt, seed=1))
    assert saved.path is not None
    with Image.open(saved.path) as opened:
        embedded = json.loads(opened.info["comment"])["miragic"]
    assert embedded["prompt_truncated"] is True
    assert prompt.startswith(embedded["prompt"])
    assert saved.prompt == prompt.strip()  # the database keeps it whole


# -- where the data lives, and what never goes there -------------------------------------------


def test_home_comes_from_argument_then_env_then_platformdirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_HOME", str(tmp_path / "from-env"))
    assert History().home == (tmp_path / "from-env").resolve()
    assert History(tmp_path / "explicit").home == (tmp_path / "explicit").resolve()
    assert History(str(tmp_path / "explicit")).home == (tmp_path / "explicit").resolve()
    monkeypatch.setenv("MIRAGIC_HOME", "  ")
    assert History().home == Path(platformdirs.user_data_dir("miragic-nb")).resolve()
    monkeypatch.delenv("MIRAGIC_HOME")
    assert History().home == Path(platformdirs.user_data_dir("miragic-nb")).resolve()


def test_env_home_is_used_for_writing_and_created_only_on_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "lazy" / "home"
    monkeypatch.setenv("MIRAGIC_HOME", str(home))
    store = History()
    assert store.records() == []
    assert store.get("x") is None
    assert store.reuse(REUSE_REQUEST, base_url=BASE) is None
    assert miragic_nb.history() == []
    assert not (tmp_path / "lazy").exists()

    store.record_created("job-e", GenerationRequest("env"), base_url=BASE)
    assert (home / "history.sqlite3").is_file()
    assert [r.job_id for r in miragic_nb.history()] == ["job-e"]
    assert [r.job_id for r in miragic_nb.history(tmp_path / "elsewhere")] == []


def test_the_api_key_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "mk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    monkeypatch.setenv("MIRAGIC_API_KEY", secret)
    store = History(tmp_path / "home")
    request = GenerationRequest(PROMPT, seed=1)
    job = Job.from_record(
        {"id": "job-k", "status": "COMPLETED", "imageUrl": "/r.png"}, base_url=BASE
    )
    with Client(base_url=BASE) as client:
        assert client.has_api_key
        meta = ResultInfo.of_job(
            job, request, base_url=client.base_url, elapsed=1.0, image_size=(32, 24)
        ).as_dict()
    # Even a key that strays into the metadata is not persisted: fields are allow-listed.
    meta["api_key"] = secret
    meta["options"] = {**meta["options"], "X-API-Key": secret}
    store.record_created("job-k", request, base_url=BASE)
    store.record_result(GeneratedImage.from_bytes(jpeg_bytes(), meta))
    store.record_result(GeneratedImage.from_bytes(png_bytes(), {**meta, "job_id": "job-k2"}))
    store.record_status("job-k", CANCELLED)

    files = [p for p in store.home.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"history.sqlite3", "job-k.jpg", "job-k2.png"} <= names
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


def test_importing_history_does_not_load_pillow() -> None:
    # So the package can expose ``miragic_nb._store.history`` cheaply at import time.
    code = "import sys, miragic_nb._store.history; print('PIL' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.stdout.strip() == "False"


README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_documented_spelling_of_the_history_readers_works() -> None:
    # ``miragic_nb.history`` is the function (``miragic_nb.history()``); the readers the docs name
    # as ``miragic_nb.history.<name>`` are its attributes, the store module's own names.
    texts = [README.read_text("utf-8")] + [
        page.read_text("utf-8") for page in sorted((README.parent / "docs").glob("*.md"))
    ]
    spelled = {
        name for text in texts for name in re.findall(r"miragic_nb\.history\.([A-Za-z_]\w*)", text)
    }
    assert "read_embedded_metadata" in spelled
    module = sys.modules["miragic_nb._store.history"]
    for name in spelled:
        assert getattr(miragic_nb.history, name) is getattr(module, name), name
    assert callable(miragic_nb.history)
    assert isinstance(miragic_nb.history(), list)

    # And in a fresh interpreter, as a user would type them.
    lines = [f"print(miragic_nb.history.{name}.__name__)" for name in sorted(spelled)]
    code = "import miragic_nb\n" + "\n".join(lines)
    code += "\nprint(type(miragic_nb.history()).__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=README.parent,
        env={**os.environ, "PYTHONPATH": str(README.parent)},
    )
    assert out.stdout.split() == [*sorted(spelled), "list"]


def test_read_embedded_metadata_reads_a_saved_result_by_its_documented_name(
    store: History,
) -> None:
    saved = complete(store, "job-doc", GenerationRequest("documented", seed=1))
    assert saved.path is not None
    meta = miragic_nb.history.read_embedded_metadata(saved.path.read_bytes())  # type: ignore[attr-defined]
    assert (meta["job_id"], meta["prompt"]) == ("job-doc", "documented")
