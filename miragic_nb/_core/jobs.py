"""The job record, read tolerantly (docs/api-contract.md, D4 and D5).

``progress`` may be missing, a number or a numeric string; unknown status values mean "not
finished yet"; status strings are compared case-insensitively; extra fields are ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin

from miragic_nb._core.errors import APIError, InvalidRequestError
from miragic_nb._core.states import COMPLETED, FAILED, PENDING

#: What a job id may look like (the API's are UUIDs); it becomes a URL path segment.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


@dataclass(frozen=True)
class Job:
    """One generation job as the API last described it."""

    id: str
    status: str
    progress: float | None = None
    result_url: str | None = None
    error_message: str | None = None
    created_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, base_url: str | None = None) -> Job:
        """Build a Job from the ``data`` object of a create or status answer.

        Every field but the id is read tolerantly (an odd value is as good as none); a record
        without an id is an ``APIError``.
        """
        job_id = job_id_of(record)
        if job_id is None:
            raise APIError("job record has no id", status_code=200)
        status = (_text(record.get("status")) or PENDING).upper()
        return cls(
            id=job_id,
            status=status,
            progress=_progress(record.get("progress"), status),
            result_url=_result_url(record, base_url),
            error_message=_text(record.get("errorMessage")),
            created_at=_timestamp(record.get("createdAt")),
            raw=dict(record),
        )

    @property
    def is_completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def is_failed(self) -> bool:
        return self.status == FAILED

    @property
    def is_finished(self) -> bool:
        return self.status in (COMPLETED, FAILED)

    @property
    def processing_seconds(self) -> float | None:
        """The server's own ``metadata.processingTimeMs``, in seconds, when it gives one."""
        metadata = self.raw.get("metadata")
        value = metadata.get("processingTimeMs") if isinstance(metadata, Mapping) else None
        number = _number(value)
        return number / 1000 if number is not None and number >= 0 else None

    @property
    def credits_used(self) -> float | None:
        return _number(self.raw.get("creditsUsed"))

    @property
    def parameters(self) -> dict[str, str]:
        """The parameters the server recorded (all strings, as the API sends them)."""
        params = self.raw.get("parameters")
        if not isinstance(params, Mapping):
            return {}
        return {str(k): "" if v is None else str(v) for k, v in params.items()}


def job_id_of(record: Mapping[str, Any]) -> str | None:
    """The job id a record names (``id``, else ``jobId``): a non-empty string or an integer."""
    for key in ("id", "jobId"):
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            # A number is still the job's name; str() of a huge int is refused by Python.
            return str(value) if abs(value) < 10**100 else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def check_job_id(job_id: object) -> str:
    """A job id as the API returns them (a UUID); anything else is refused before sending."""
    text = job_id.strip() if isinstance(job_id, str) else ""
    if not _JOB_ID.fullmatch(text):
        raise InvalidRequestError(
            "job_id must be an id the API returned (letters, digits, '-', '_', '.', ':'), "
            f"got {repr(job_id)[:60]}",
            field="job_id",
        )
    return text


def _number(value: object) -> float | None:
    """A finite number from a number or a numeric string (``"42%"``); anything else is None."""
    if isinstance(value, bool) or value is None:
        return None
    number: float
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip().rstrip("%"))
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _progress(value: object, status: str) -> float | None:
    number = _number(value)
    if number is None:
        return 100.0 if status == COMPLETED else None
    return min(max(number, 0.0), 100.0)


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _result_url(record: Mapping[str, Any], base_url: str | None) -> str | None:
    """``processedImageUrl``, else ``imageUrl``, else ``metadata.apiResponse.link`` (decision 5)."""
    metadata = record.get("metadata")
    api_response = metadata.get("apiResponse") if isinstance(metadata, Mapping) else None
    link = api_response.get("link") if isinstance(api_response, Mapping) else None
    for candidate in (record.get("processedImageUrl"), record.get("imageUrl"), link):
        url = _text(candidate)
        if url:
            try:
                return urljoin(base_url + "/", url) if base_url else url
            except ValueError:  # e.g. "http://[": not a URL at all
                continue
    return None


def _timestamp(value: object) -> datetime | None:
    """ISO-8601 strings (what the API sends) or Unix seconds/milliseconds (what it documents)."""
    if isinstance(value, str) and value.strip():
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass  # perhaps a number as a string
    number = _number(value)
    if number is None:
        return None
    seconds = number / 1000 if number > 1e11 else number
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):  # no calendar holds it
        return None
