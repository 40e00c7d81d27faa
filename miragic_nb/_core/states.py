"""Every status word in one place: the API's, the history's, and a job handle's states.

- The API says ``PENDING``, ``PROCESSING``, ``COMPLETED`` or ``FAILED`` for a job
  (``Job.status``).
- The history keeps one of ``STATUSES`` per job (the words already on disk).
- A ``JobHandle`` moves through ``JobState``: the same words in every face, progress view and
  table; ``store_status`` maps a state to the history's word, once.
"""

from __future__ import annotations

import enum

from miragic_nb._core.errors import JobFailedError

#: The API's job statuses.
PENDING = "PENDING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
#: We stopped waiting; the job may still finish on the server (and be resumed).
TIMEOUT = "TIMEOUT"
#: The user stopped the wait (kernel interrupt, Cancel button).
CANCELLED = "CANCELLED"
#: Anything else that ended the wait: a download or decoding failure, a connection error.
ERROR = "ERROR"
#: Every status a history record can have.
STATUSES = (PENDING, COMPLETED, FAILED, TIMEOUT, CANCELLED, ERROR)


class JobState(str, enum.Enum):
    """Where one job stands; the same words in every face, progress view and the history."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    PENDING = "pending"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})


def store_status(state: JobState, error: BaseException | None = None) -> str:
    """The history's status word for a job in ``state`` (the words already on disk).

    A failure the server did not report (a download or decoding problem, a lost connection)
    is ``ERROR``: the job may have completed, and ``resume`` can still fetch it.
    """
    if state is JobState.FAILED and not isinstance(error, JobFailedError):
        return ERROR
    return {
        JobState.COMPLETED: COMPLETED,
        JobState.FAILED: FAILED,
        JobState.CANCELLED: CANCELLED,
        JobState.TIMED_OUT: TIMEOUT,
    }.get(state, PENDING)
