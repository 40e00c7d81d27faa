"""When to read a job's status next: a pure schedule, shared by the blocking and async waiters.

No clock and no I/O here: callers pass in what they know (seconds elapsed, polls made, the last
progress the server reported) and sleep for what comes back. That keeps every rule unit-testable.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class PollSchedule:
    """Exponential backoff from ``initial_delay`` up to ``max_delay``, sharpened by progress.

    The first status read happens at once (the reference says to start polling immediately).
    When the server reports progress, the schedule estimates the time left from the progress
    rate and sleeps a fraction of it, so it wakes close to completion instead of up to
    ``max_delay`` late.
    """

    initial_delay: float = 0.25
    growth: float = 1.5
    max_delay: float = 5.0
    min_delay: float = 0.05
    #: Fraction of the estimated time left to sleep when progress is known.
    remaining_fraction: float = 0.5

    def next_delay(self, *, elapsed: float, polls: int, progress: float | None) -> float:
        """Seconds to sleep before status read number ``polls + 1`` (``polls`` reads so far)."""
        backoff = min(self.initial_delay * self.growth ** max(polls - 1, 0), self.max_delay)
        if progress is not None and 0 < progress < 100 and elapsed > 0:
            remaining = elapsed * (100 - progress) / progress
            return max(self.min_delay, min(remaining * self.remaining_fraction, backoff))
        return max(self.min_delay, backoff)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
