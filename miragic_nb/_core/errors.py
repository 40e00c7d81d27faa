"""Every error miragic-nb raises, in one tree.

```
MiragicError
├── InvalidRequestError        (also ValueError)   bad input, refused before any request
│   └── MissingAPIKeyError                         no key configured anywhere
├── AuthenticationError                            401 / 403 from the API
├── RateLimitError                                 429, carries ``retry_after`` (seconds)
├── APIError                                       any other error answer, carries ``status_code``
│   └── DownloadError                              the result image could not be fetched or decoded
├── APIConnectionError (also ConnectionError)      no answer: refused, reset, read timeout
├── JobFailedError                                 the job ended ``FAILED``
├── JobTimeoutError  (also TimeoutError)           the job did not finish in time
├── UncertainJobError                              a batch item's create answer was lost
├── BudgetExceededError                            a plan would spend more credits than allowed
├── BatchBusyError                                 another run of the same batch holds it
└── HistoryError     (also OSError)                the history database cannot be used
    ├── HistoryBusyError                           another process holds it (locked)
    ├── HistoryCorruptError                        it is not a (sound) SQLite database
    └── HistoryTooNewError                         a newer miragic-nb wrote it
```

Every exception raised after a job exists carries its ``job_id`` so a paid-for job is never
lost: ``client.wait(err.job_id)`` or ``%miragic resume <id>`` picks it up again. Messages are
one readable line; they never contain the API key.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miragic_nb._core.jobs import Job

_EXCERPT_CHARS = 160
#: How much of a body is searched for a title or stripped of tags (the rest is never shown).
_BODY_SCAN_CHARS = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Half a surrogate pair (JSON may spell one); it has no UTF-8 form, so print() would raise.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: Longest server ``errorMessage`` kept for the history and ``JobFailedError.server_message``.
SERVER_MESSAGE_CHARS = 300


class MiragicError(Exception):
    """Base class of every miragic-nb error."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id

    def __str__(self) -> str:
        if self.job_id and self.job_id not in self.message:
            return f"{self.message} (job {self.job_id})"
        return self.message


class InvalidRequestError(MiragicError, ValueError):
    """The request is invalid: refused locally before sending, or rejected with 400/422."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status_code: int | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.field = field
        self.status_code = status_code


class MissingAPIKeyError(InvalidRequestError):
    """No API key was given, and ``MIRAGIC_API_KEY`` is not set."""


class AuthenticationError(MiragicError):
    """The API refused the key (401 or 403)."""

    def __init__(self, message: str, *, status_code: int, job_id: str | None = None) -> None:
        super().__init__(message, job_id=job_id)
        self.status_code = status_code


class RateLimitError(MiragicError):
    """The API answered 429; ``retry_after`` is the advised wait in seconds, if it said."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, job_id: str | None = None
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.retry_after = retry_after
        self.status_code = 429


class APIError(MiragicError):
    """The API answered with an error (5xx, or a 2xx body that says ``success: false``)."""

    def __init__(self, message: str, *, status_code: int, job_id: str | None = None) -> None:
        super().__init__(message, job_id=job_id)
        self.status_code = status_code


class DownloadError(APIError):
    """The result image could not be downloaded, or what came back is not a usable image."""


class APIConnectionError(MiragicError, ConnectionError):
    """No usable answer from the API: connection refused or reset, or a read timeout."""


class JobFailedError(MiragicError):
    """The job ended ``FAILED``; ``server_message`` is the API's ``errorMessage``."""

    def __init__(self, message: str, *, job: Job) -> None:
        super().__init__(message, job_id=job.id)
        self.job = job
        #: The server's reason, shortened to one line (``job.error_message`` has it whole).
        self.server_message = (
            server_text(job.error_message, SERVER_MESSAGE_CHARS) if job.error_message else None
        )


class JobTimeoutError(MiragicError, TimeoutError):
    """The job did not finish within the timeout; it may still finish on the server."""

    def __init__(self, message: str, *, job_id: str, last_job: Job | None = None) -> None:
        super().__init__(message, job_id=job_id)
        self.last_job = last_job


class UncertainJobError(MiragicError):
    """A batch item's create was sent but its answer was lost: a job may exist and be paid for."""


class BudgetExceededError(MiragicError):
    """Refused before any request: the plan would create more jobs (credits) than allowed."""

    def __init__(self, message: str, *, needed: int, allowed: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.allowed = allowed


class BatchBusyError(MiragicError):
    """Another run of the same batch holds its lease in the store: which process, where, since
    when (``pid``, ``host``, ``since``)."""

    def __init__(self, message: str, *, pid: int, host: str, since: str) -> None:
        super().__init__(message)
        self.pid = pid
        self.host = host
        self.since = since


def server_text(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """Any text a server sent, as one line of at most ``limit`` characters.

    The one place server text is shortened before it is shown: an error message, a job id,
    a reason phrase. Control characters become spaces; the text is otherwise kept as sent
    (it is escaped wherever it becomes HTML).
    """
    # Only the head can be shown: never split or scan a megabyte to show 160 characters.
    head = _SURROGATE.sub("\ufffd", text[: limit * 4 + 64])
    line = " ".join(_CONTROL.sub(" ", head).split())
    if len(line) <= limit and len(head) == len(text):
        return line
    return line[: limit - 1] + "…"


class HistoryError(MiragicError, OSError):
    """The history could not be read or written. Also an ``OSError``, like the disk problems
    it stands for, so code that survives a full disk survives this too."""


class HistoryBusyError(HistoryError):
    """The history database is held by another process (or thread) longer than we wait."""


class HistoryCorruptError(HistoryError):
    """The history database is not a database, or a damaged one; it is left as it is."""


class HistoryTooNewError(HistoryError):
    """The history database was written by a newer miragic-nb; it is left as it is."""


def body_excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """A short single line from a response body, so a proxy's HTML page cannot flood output."""
    text = text[:_BODY_SCAN_CHARS]
    title = re.search(r"<title[^>]*>(.*?)</title>", text, flags=re.IGNORECASE | re.DOTALL)
    if title and title.group(1).strip():
        text = title.group(1)
    else:
        text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.IGNORECASE | re.DOTALL)
        text = re.sub(r"<[^>]+>", " ", text)
    return server_text(text, limit)


def message_from_body(body: Any) -> str | None:
    """The API's own error text from a JSON body: ``message``, ``error`` or ``errorMessage``."""
    if not isinstance(body, dict):
        return None
    candidates = [body]
    if isinstance(body.get("data"), dict):
        candidates.append(body["data"])
    for candidate in candidates:
        for key in ("message", "error", "errorMessage"):
            value = candidate.get(key)
            if isinstance(value, str) and value.strip():
                return body_excerpt(value)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return body_excerpt(value["message"])
    return None
