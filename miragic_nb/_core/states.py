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
#: The user cancelled the job (the panel's Cancel, a cancelled ``agenerate`` task).
CANCELLED = "CANCELLED"
#: A stop (Ctrl-C, a stopped batch) while the job was on the server; it may still finish and
#: be resumed.
INTERRUPTED = "INTERRUPTED"
#: Anything else that ended the wait: a download or decoding failure, a connection error.
ERROR = "ERROR"
#: Every status a history record can have.
STATUSES = (PENDING, COMPLETED, FAILED, TIMEOUT, CANCELLED, INTERRUPTED, ERROR)


class JobState(str, enum.Enum):
    """Where one job stands; the same words in every face, progress view and the history.

    How a job ends (see ``docs/job-ends.md``): ``completed``; ``failed`` (the server said so,
    or the job could not be made or fetched); ``cancelled`` by the user (before or after it
    was sent); ``never_sent`` (a stopped group never sent it: no credit); ``interrupted`` or
    ``timed_out`` (we stopped waiting: still on the server, resumable).
    """

    QUEUED = "queued"
    SUBMITTING = "submitting"
    PENDING = "pending"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEVER_SENT = "never_sent"
    INTERRUPTED = "interrupted"
    TIMED_OUT = "timed_out"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def words(self) -> str:
        """The state as faces write it: ``timed out``, ``never sent``."""
        return self.value.replace("_", " ")

    @property
    def is_failure(self) -> bool:
        """Only a failure is shown red; a stop is not one."""
        return self is JobState.FAILED

    @property
    def resumable(self) -> bool:
        """The job is still on the server and can be picked up by its id."""
        return self in (JobState.INTERRUPTED, JobState.TIMED_OUT)

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.NEVER_SENT,
        JobState.INTERRUPTED,
        JobState.TIMED_OUT,
    }
)


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
        JobState.INTERRUPTED: INTERRUPTED,
        JobState.TIMED_OUT: TIMEOUT,
    }.get(state, PENDING)
