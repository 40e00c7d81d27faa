"""Fuzzing what reads server bytes: job records, API answers and result images.

Only ``MiragicError`` may come out of any of them, and nothing may hang. Every test is bounded
(``max_examples``; each example is small) so the file stays well under a minute.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from miragic_nb import Client, Job
from miragic_nb._core.errors import DownloadError, MiragicError
from miragic_nb._core.images import decode
from tests.conftest import FAST_POLLS
from tests.hostile_servers import JOB_ID, ScriptedApi, http_answer, status_record

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# -- job records ---------------------------------------------------------------------------

#: Values JSON can hold, with the numbers and strings servers get wrong most often.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["1e400", "-1e400", "nan", "²", "٣", "Infinity", "42%", "2026-13-45T99:99"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
FIELDS = [
    "id",
    "jobId",
    "status",
    "progress",
    "processedImageUrl",
    "imageUrl",
    "errorMessage",
    "createdAt",
    "metadata",
    "parameters",
    "creditsUsed",
]
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=10)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "processingTimeMs": json_values,
        "apiResponse": st.fixed_dictionaries({}, optional={"link": json_values}) | json_values,
    },
)


def read_everything(job: Job) -> None:
    """Touch every derived field a caller may read."""
    assert isinstance(job.id, str)
    assert job.progress is None or 0 <= job.progress <= 100
    _ = (job.result_url, job.error_message, job.created_at, job.processing_seconds)
    _ = (job.credits_used, job.parameters, job.is_finished)
    if job.created_at is not None:
        job.created_at.isoformat()


@FUZZ
@given(record=records, meta=metadata, base=st.sampled_from([None, "http://127.0.0.1:9"]))
def test_a_job_record_is_read_or_refused_with_a_miragic_error(
    record: dict[str, Any], meta: dict[str, Any], base: str | None
) -> None:
    record = {**record, "metadata": meta} if meta else record
    try:
        job = Job.from_record(record, base_url=base)
    except MiragicError:
        return
    read_everything(job)


# -- whole answers through a real client ---------------------------------------------------


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer)


answers = st.one_of(
    json_values.map(lambda value: json.dumps(value, allow_nan=True).encode()),
    st.builds(
        lambda record, edits: _mutate(json.dumps(record).encode(), edits),
        st.just(status_record(JOB_ID, "COMPLETED", progress=50, createdAt=1.7e9)),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    ),
    records.map(lambda r: json.dumps({"success": True, "data": r}, allow_nan=True).encode()),
    st.binary(max_size=200),
)


@pytest.fixture(scope="module")
def live() -> Any:
    """One scripted server for all examples; each example sets the status answer it serves."""
    current: list[bytes] = [b""]
    api = ScriptedApi(statuses=[lambda: [http_answer(200, current[0])]])
    with api, Client(api_key="fuzz-key-0123", base_url=api.url, poll_schedule=FAST_POLLS) as c:
        yield current, c


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(answer=answers)
def test_a_status_answer_is_read_or_refused_with_a_miragic_error(live: Any, answer: bytes) -> None:
    current, client = live
    current[0] = answer
    try:
        job = client.get_job(JOB_ID)
    except MiragicError:
        return
    assert job.id == JOB_ID
    read_everything(job)


# -- result images ---------------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (24, 16), "teal")
    image.paste((200, 30, 90), (4, 4, 12, 12))
    image.save(buffer, fmt)
    return buffer.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP")}
#: Formats a result must never be decoded as, whole or mutated.
OTHERS = [_encoded(fmt) for fmt in ("BMP", "TIFF", "ICO", "DDS", "PPM")]

mutated_images = st.builds(
    lambda data, edits, cut: _mutate(data, edits)[: cut or None],
    st.sampled_from(sorted(VALID.values())),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 2_000),
)


@FUZZ
@given(data=mutated_images | st.sampled_from(OTHERS) | st.binary(max_size=300))
def test_image_bytes_decode_or_fail_with_a_download_error(data: bytes) -> None:
    try:
        image = decode(data, max_pixels=1 << 20)
    except DownloadError:
        return
    assert image.format in VALID
    image.tobytes()
