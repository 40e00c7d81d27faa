"""The emulator's server-side truth about each job, and the clock that drives it.

A job's status is computed lazily from the monotonic clock: it is ``PENDING`` while it waits
for a service worker (``queued_seconds`` after creation, see
:mod:`miragic_nb.emulator.queueing`) and then until its duration has passed *and* its JPEG has
been rendered by the render pool; then ``COMPLETED`` (or ``FAILED`` if it was chosen to fail or
its input image could not be used).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["EmulatedJob"]

PENDING, COMPLETED, FAILED = "PENDING", "COMPLETED", "FAILED"


@dataclass
class EmulatedJob:
    """One job as the emulator sees it. Tests read it via ``emu.jobs[job_id]``."""

    id: str
    user_id: str
    form: dict[str, str]
    """The create request's form fields, exactly as submitted."""
    parameters: dict[str, str]
    """The ``parameters`` dict of the job record (all values strings)."""
    prompt: str
    model: str
    width: int
    height: int
    seed: int
    """The seed actually used for rendering (random if none was submitted)."""
    image_url: str
    file_name: str
    duration: float
    """Seconds of service, from its start to completion (jitter included). Tests may lower it."""
    fail_message: str | None = None
    """Set when the job was chosen to fail at creation (``Faults`` failure settings)."""
    never_finish: bool = False
    created_at: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=time.monotonic)
    queued_seconds: float = 0.0
    """Seconds spent waiting for a service worker before the job's duration starts."""
    result: bytes | None = None
    """The rendered JPEG once the worker pool is done (``None`` for failed jobs)."""
    render_error: str | None = None
    render_seconds: float | None = None
    _rendered: threading.Event = field(default_factory=threading.Event, repr=False)
    _rendered_mono: float | None = field(default=None, repr=False)

    # ------------------------------------------------------------ worker side

    def finish_render(
        self, result: bytes | None, error: str | None = None, seconds: float = 0.0
    ) -> None:
        """Called once by the worker pool when rendering is over (or skipped)."""
        self.result, self.render_error, self.render_seconds = result, error, seconds
        self._rendered_mono = time.monotonic()
        self._rendered.set()

    def wait_rendered(self, timeout: float | None = None) -> bool:
        """Block until the worker pool is done with this job; False on timeout."""
        return self._rendered.wait(timeout)

    @property
    def result_bytes(self) -> bytes | None:
        """The JPEG bytes served for this job (alias of ``result``)."""
        return self.result

    @property
    def rendered(self) -> bool:
        return self._rendered.is_set()

    # ------------------------------------------------------------ clock side

    @property
    def started_mono(self) -> float:
        """The monotonic time at which a worker takes the job (its creation, without a queue)."""
        return self.created_mono + self.queued_seconds

    def finished_mono(self) -> float | None:
        """The monotonic time at which the job finished, or None while it runs."""
        if self.never_finish:
            return None
        due = self.started_mono + self.duration
        if self.fail_message is not None:
            return due if time.monotonic() >= due else None
        rendered = self._rendered_mono
        if rendered is None:
            return None
        end = max(due, rendered)
        return end if time.monotonic() >= end else None

    def status(self) -> str:
        """``PENDING``, ``COMPLETED`` or ``FAILED``, right now."""
        if self.finished_mono() is None:
            return PENDING
        if self.fail_message is not None or self.render_error is not None:
            return FAILED
        return COMPLETED

    @property
    def error_message(self) -> str | None:
        """The ``errorMessage`` of a failed job (None otherwise)."""
        if self.status() != FAILED:
            return None
        return self.fail_message if self.fail_message is not None else self.render_error

    def progress(self) -> int:
        """0 while queued, then 0-99 while running, 100 when completed."""
        state = self.status()
        if state == COMPLETED:
            return 100
        elapsed = time.monotonic() - self.started_mono
        if elapsed < 0:
            return 0
        if self.duration <= 0:
            return 99
        return max(0, min(99, int(100 * elapsed / self.duration)))

    def processing_ms(self) -> int | None:
        """Milliseconds of service, from the service start to the end, once finished.

        This is ``processingTimeMs``: like a worker timing its own work, it leaves out the wait
        in the queue, which clients see as ``updatedAt - createdAt`` instead.
        """
        end = self.finished_mono()
        if end is None:
            return None
        return round((end - self.started_mono) * 1000)

    def updated_at(self) -> float:
        """Wall-clock time of the last change: the end if finished, else now."""
        end = self.finished_mono()
        if end is None:
            return time.time()
        return self.created_at + (end - self.created_mono)
