"""Job: tolerant reading of the API's job record (docs/api-contract.md, D4 and D5)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from miragic_nb._core.errors import APIError
from miragic_nb._core.jobs import Job

# The reference's two example bodies, verbatim (its Python-dict rendering turned into JSON).
CREATE_EXAMPLE = {
    "success": True,
    "data": {"jobId": "56ba3768-2195-464c-98cd-e9dc535c2258", "status": "PENDING"},
    "message": "Image generation job created successfully",
}
STATUS_EXAMPLE = {
    "success": True,
    "data": {
        "id": "56ba3768-2195-464c-98cd-e9dc535c2258",
        "userId": "eebf31b5-7bec-445e-8b99-51c0311a389d",
        "prompt": "A beautiful sunset over the ocean",
        "parameters": {
            "safe": "false",
            "seed": "",
            "model": "flux",
            "width": "2048",
            "height": "1024",
            "nologo": "true",
            "prompt": "A beautiful sunset over the ocean",
            "enhance": "false",
            "private": "false",
            "image_url": "",
            "uploaded_image_path": "",
        },
        "status": "COMPLETED",
        "imageUrl": "https://backend.miragic.ai/uploads/image-generation/processed/eebf31b5-7bec-445e-8b99-51c0311a389d/1ce867db-a8ca-4cc2-89dc-1e1b67c3fc90.jpg",
        "processedImageUrl": "https://backend.miragic.ai/uploads/image-generation/processed/eebf31b5-7bec-445e-8b99-51c0311a389d/1ce867db-a8ca-4cc2-89dc-1e1b67c3fc90.jpg",
        "storagePath": None,
        "publicId": None,
        "metadata": {
            "apiResponse": {
                "link": "https://www.dropbox.com/scl/fi/kwmrnqzb5scb8acp9t6g5/c8ac746a-c46b-404f-b9de-f27887e05e03.jpg?rlkey=5iqqfh4yzfg49kq8hbih5sbd5&raw=1",
                "success": True,
            },
            "has_input_image": False,
            "processingTimeMs": 4827,
            "uploaded_image_path": None,
        },
        "resolution": None,
        "errorMessage": None,
        "creditsUsed": 1,
        "createdAt": "2025-11-05T13:52:00.801Z",
        "updatedAt": "2025-11-05T13:52:05.629Z",
    },
}


def test_reference_create_example() -> None:
    job = Job.from_record(CREATE_EXAMPLE["data"])  # type: ignore[arg-type]
    assert job.id == "56ba3768-2195-464c-98cd-e9dc535c2258"
    assert job.status == "PENDING"
    assert not job.is_finished
    assert job.progress is None
    assert job.result_url is None


def test_reference_status_example() -> None:
    job = Job.from_record(STATUS_EXAMPLE["data"])  # type: ignore[arg-type]
    assert job.id == "56ba3768-2195-464c-98cd-e9dc535c2258"
    assert job.is_completed
    assert job.is_finished
    assert not job.is_failed
    assert job.progress == 100.0  # absent in the example; completed means 100
    assert job.result_url == STATUS_EXAMPLE["data"]["processedImageUrl"]  # type: ignore[index]
    assert job.error_message is None
    assert job.created_at == datetime(2025, 11, 5, 13, 52, 0, 801000, tzinfo=timezone.utc)
    assert job.processing_seconds == pytest.approx(4.827)
    assert job.credits_used == 1
    assert job.parameters["width"] == "2048"
    assert job.parameters["seed"] == ""
    assert job.raw["userId"] == "eebf31b5-7bec-445e-8b99-51c0311a389d"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (42, 42.0),
        (42.5, 42.5),
        ("42", 42.0),
        (" 7% ", 7.0),
        ("n/a", None),
        (-5, 0.0),
        (250, 100.0),
        (True, None),
    ],
)
def test_progress_is_tolerant(value: object, expected: float | None) -> None:
    job = Job.from_record({"id": "j", "status": "PENDING", "progress": value})
    assert job.progress == expected


@pytest.mark.parametrize("status", ["completed", "Completed", " COMPLETED "])
def test_status_is_case_insensitive(status: str) -> None:
    assert Job.from_record({"id": "j", "status": status}).is_completed


def test_unknown_status_means_not_finished() -> None:
    job = Job.from_record({"id": "j", "status": "PROCESSING", "extra": {"x": 1}})
    assert job.status == "PROCESSING"
    assert not job.is_finished


def test_failed_job_carries_its_message() -> None:
    job = Job.from_record({"id": "j", "status": "FAILED", "errorMessage": "NSFW content"})
    assert job.is_failed
    assert job.is_finished
    assert job.error_message == "NSFW content"


def test_result_url_falls_back_and_resolves_relative() -> None:
    base = "http://127.0.0.1:9000"
    only_image = Job.from_record({"id": "j", "imageUrl": "/uploads/a.jpg"}, base_url=base)
    assert only_image.result_url == "http://127.0.0.1:9000/uploads/a.jpg"
    only_link = Job.from_record(
        {
            "id": "j",
            "processedImageUrl": None,
            "imageUrl": "",
            "metadata": {"apiResponse": {"link": "https://cdn.example/x.jpg"}},
        },
        base_url=base,
    )
    assert only_link.result_url == "https://cdn.example/x.jpg"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1762350720, datetime(2025, 11, 5, 13, 52, tzinfo=timezone.utc)),
        (1762350720000, datetime(2025, 11, 5, 13, 52, tzinfo=timezone.utc)),
        ("1762350720", datetime(2025, 11, 5, 13, 52, tzinfo=timezone.utc)),
        ("yesterday", None),
        (None, None),
    ],
)
def test_created_at_accepts_iso_and_unix(value: object, expected: datetime | None) -> None:
    assert Job.from_record({"id": "j", "createdAt": value}).created_at == expected


def test_record_without_id_is_refused() -> None:
    with pytest.raises(APIError, match="no id"):
        Job.from_record({"status": "PENDING"})
