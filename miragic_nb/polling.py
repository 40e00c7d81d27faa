"""When to read a job's status next: a pure schedule, shared by every waiter.

No clock and no I/O here: callers pass in what they know (seconds elapsed, the progress the
server reported, how long earlier jobs of the same kind took) and sleep for what comes back.
That keeps every rule unit-testable.

Three sources of knowledge, best first:

1. **Progress.** While the server reports ``progress``, a :class:`PollPlan` fits a straight
   line through the readings and computes the earliest and latest moment the job can end,
   allowing for whole-percent rounding and for not knowing exactly when, during the create
   request, the job started. When that window is narrow it sleeps to its end; when it is wide
   it reads once more, later, when a reading narrows it.
2. **Earlier jobs.** A :class:`DurationLearner` remembers the server's ``processingTimeMs`` of
   recent jobs per model and size; a job expected to take 3 s is first read at about 2.8 s and
   then a few times until the longest duration seen, instead of from the start.
3. **Backoff.** With neither, exponential backoff from ``initial_delay`` to ``max_delay``.

A sleep never exceeds ``max_delay``, so a job that fails early is noticed promptly.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DurationEstimate:
    """How long a job is expected to run on the server, in seconds: between ``low`` and ``high``."""

    low: float
    high: float
    samples: int = 0
    #: Whether jobs of this kind reported ``progress`` while they ran.
    progress: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high or math.isinf(self.high):
            raise ValueError(f"need 0 <= low <= high < inf, got {self.low!r}, {self.high!r}")


@dataclass(frozen=True)
class PollSchedule:
    """The tuning of every wait; :meth:`plan` starts one wait.

    The first status read of a fresh job happens after ``initial_delay`` (the create answer
    already said ``PENDING``); a job whose age is unknown (resumed by id) is read at once.
    """

    initial_delay: float = 0.25
    growth: float = 1.5
    max_delay: float = 5.0
    min_delay: float = 0.05
    #: Fraction of the estimated time left to sleep in the stateless :meth:`next_delay`.
    remaining_fraction: float = 0.5
    #: Width (seconds) of the predicted end window accepted as it is; a wider one is narrowed
    #: by one more read. Sleeping to the end of a window of this width makes the caller up to
    #: this late, so it trades status reads against latency.
    precision: float = 0.2
    #: Added to a predicted end, so the read lands after it rather than just before.
    end_margin: float = 0.02
    #: First pause once a job has outlived its predicted end (then it grows by ``growth``).
    overdue_delay: float = 0.05
    #: To narrow a wide window, read at this fraction of the way to its earliest end.
    refine_fraction: float = 0.75
    #: Reads spread over a learned duration window when the server reports no progress.
    window_reads: int = 3
    #: Resolution of the server's progress figures (whole percent: 42 means 42 to 43).
    progress_step: float = 1.0
    #: When progress is reported, a learned window is trusted for the first read only if it
    #: comes from at least ``trusted_samples`` jobs and is no wider than ``narrow_spread``
    #: (high / low); otherwise (jobs of mixed length) a quick first read measures the rate.
    narrow_spread: float = 1.5
    trusted_samples: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.min_delay <= self.max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        if self.initial_delay < 0 or self.growth < 1 or self.window_reads < 1:
            raise ValueError("need initial_delay >= 0, growth >= 1 and window_reads >= 1")
        if not 0 < self.refine_fraction <= 1:
            raise ValueError("refine_fraction must be in (0, 1]")

    def backoff(self, reads: int) -> float:
        """Sleep after read number ``reads`` (1-based) when nothing better is known."""
        delay = self.initial_delay * self.growth ** max(reads - 1, 0)
        return self.clamp(delay)

    def clamp(self, delay: float) -> float:
        return max(self.min_delay, min(delay, self.max_delay))

    def next_delay(self, *, elapsed: float, polls: int, progress: float | None) -> float:
        """Stateless rule: backoff, shortened to part of the time left when progress is known.

        For waiters that keep no state; :meth:`plan` does better with the same inputs.
        """
        backoff = self.backoff(polls)
        if progress is not None and 0 < progress < 100 and elapsed > 0:
            remaining = elapsed * (100 - progress) / progress
            return self.clamp(min(remaining * self.remaining_fraction, backoff))
        return backoff

    def plan(
        self,
        *,
        create_seconds: float | None = None,
        expected: DurationEstimate | None = None,
    ) -> PollPlan:
        """Start planning one wait.

        The plan's clock starts when the create request was *sent*, and ``create_seconds`` is
        how long that request took: the job began somewhere in that interval. ``None`` means
        the job's age is unknown (a job resumed by id); it is then read at once and neither
        the progress origin nor ``expected`` is used.
        """
        return PollPlan(self, create_seconds=create_seconds, expected=expected)


@dataclass
class PollPlan:
    """The schedule of one wait. Pure: feed it each status read, sleep what it returns.

    ``elapsed`` is always seconds on the plan's clock (see :meth:`PollSchedule.plan`).
    """

    schedule: PollSchedule
    create_seconds: float | None = None
    expected: DurationEstimate | None = None
    reads: int = 0
    #: (elapsed, progress) of every read that reported progress below 100.
    samples: list[tuple[float, float]] = field(default_factory=list)
    #: The moment the plan last promised the job would be over, if it did.
    due: float | None = None
    overdue_reads: int = 0

    @property
    def age_known(self) -> bool:
        return self.create_seconds is not None

    def first_delay(self, *, elapsed: float) -> float:
        """Sleep before the first status read."""
        if not self.age_known:
            return 0.0
        expected = self.expected
        schedule = self.schedule
        if expected is not None and (
            not expected.progress
            or (
                expected.samples >= schedule.trusted_samples
                and expected.high <= schedule.narrow_spread * expected.low
            )
        ):
            return self._sleep_until(expected.low, elapsed)
        return max(0.0, schedule.initial_delay - elapsed)

    def next_delay(self, *, elapsed: float, progress: float | None) -> float:
        """Sleep after a status read that found the job still running."""
        schedule = self.schedule
        self.reads += 1
        if progress is not None and progress < 100:
            self.samples.append((elapsed, progress))
        if self.due is not None and elapsed >= self.due:
            self.overdue_reads += 1
        window = self.end_window() if progress is not None and progress < 100 else None
        if window is not None:
            low, high = window
            if high - low <= schedule.precision:
                self.due = high
                delay = high + schedule.end_margin - elapsed
            else:
                # Too vague to sleep to its end: read again when a reading will be sharper.
                delay = max(schedule.refine_fraction * (low - elapsed), schedule.precision / 2)
        elif self.create_seconds is not None and self.expected is not None:
            delay = self._expected_step(elapsed, self.expected, self.create_seconds)
        else:
            delay = schedule.backoff(self.reads)
        if self.overdue_reads:
            # Past the promised end and still running: back off from a short interval, so a
            # job stuck at 99% is not read every few milliseconds.
            tail = schedule.overdue_delay * schedule.growth ** (self.overdue_reads - 1)
            delay = max(delay, tail)
        return schedule.clamp(delay)

    def end_window(self) -> tuple[float, float] | None:
        """Earliest and latest end (plan clock) consistent with the progress read so far.

        A straight line through two readings, each known only to ``progress_step``: the
        latest sample and an earlier anchor (the job's start, or an earlier reading). All
        anchors since the job last reported 0 (still queued) are used and the windows
        intersected; if they disagree (progress is not linear), the newest anchor wins.
        """
        if not self.samples:
            return None
        now, progress = self.samples[-1]
        if progress <= 0:
            return None  # queued or just started: no rate yet
        step = self.schedule.progress_step
        # (earliest, latest) start time of the anchor and (lowest, highest) true progress.
        anchors: list[tuple[float, float, float, float]] = []
        queued_until = max((t for t, p in self.samples[:-1] if p <= 0), default=None)
        if self.create_seconds is not None and queued_until is None:
            anchors.append((0.0, self.create_seconds, 0.0, 0.0))
        for t, p in self.samples[:-1]:
            if queued_until is None or t >= queued_until:
                anchors.append((t, t, p, p + step))
        windows = [w for a in anchors if (w := self._window(now, progress, *a)) is not None]
        if not windows:
            return None
        low = max(w[0] for w in windows)
        high = min(w[1] for w in windows)
        return (low, high) if low <= high else windows[-1]

    def _window(
        self,
        now: float,
        progress: float,
        start_min: float,
        start_max: float,
        anchor_min: float,
        anchor_max: float,
    ) -> tuple[float, float] | None:
        step = self.schedule.progress_step
        fastest_gain = min(progress + step, 100.0) - anchor_min
        slowest_gain = progress - anchor_max
        if slowest_gain <= 0 or now <= start_max:
            return None
        # Fastest: progress was at the top of its step, the anchor at the bottom of its own,
        # over the shortest interval; slowest the other way round.
        low = now + (100.0 - min(progress + step, 100.0)) * (now - start_max) / fastest_gain
        high = now + (100.0 - progress) * (now - start_min) / slowest_gain
        return (low, high)

    def _expected_step(
        self, elapsed: float, expected: DurationEstimate, create_seconds: float
    ) -> float:
        """No progress, a learned duration: a few reads across the window, then backoff."""
        schedule = self.schedule
        low = expected.low
        high = expected.high + create_seconds
        if elapsed < low:
            return low - elapsed
        step = max(schedule.min_delay, (high - low) / schedule.window_reads)
        if elapsed < high:
            self.due = high
            return min(step, high + schedule.end_margin - elapsed)
        return step * schedule.growth**self.overdue_reads

    def _sleep_until(self, moment: float, elapsed: float) -> float:
        return min(max(0.0, moment - elapsed), self.schedule.max_delay)


ModelSize = tuple[str, int, int]


class DurationLearner:
    """Remembers how long recent jobs took on the server, per (model, width, height).

    Thread-safe (a batch feeds it from several threads) and pure otherwise: it is told the
    durations and never reads a clock. The estimate spans the shortest to the longest of the
    last ``window`` durations, widened by ``tolerance`` (``single_tolerance`` with one sample).
    """

    def __init__(
        self, *, window: int = 8, tolerance: float = 0.05, single_tolerance: float = 0.15
    ) -> None:
        if window < 1 or not 0 <= tolerance < 1 or not 0 <= single_tolerance < 1:
            raise ValueError("need window >= 1 and tolerances in [0, 1)")
        self.window = window
        self.tolerance = tolerance
        self.single_tolerance = single_tolerance
        self._durations: dict[ModelSize, deque[float]] = {}
        self._progress: dict[ModelSize, bool] = {}
        self._lock = threading.Lock()

    def observe(
        self, model: str, width: int, height: int, seconds: float, *, progress: bool = False
    ) -> None:
        """Record one finished job's server-side duration, and whether it reported progress."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        key = (model.lower(), width, height)
        with self._lock:
            self._durations.setdefault(key, deque(maxlen=self.window)).append(seconds)
            self._progress[key] = progress

    def estimate(self, model: str, width: int, height: int) -> DurationEstimate | None:
        """The expected duration of a new job like this, or None before any was seen."""
        key = (model.lower(), width, height)
        with self._lock:
            seen = tuple(self._durations.get(key, ()))
            progress = self._progress.get(key, False)
        if not seen:
            return None
        spread = self.single_tolerance if len(seen) == 1 else self.tolerance
        low, high = min(seen) * (1 - spread), max(seen) * (1 + spread)
        return DurationEstimate(low, high, len(seen), progress)

    def __repr__(self) -> str:
        with self._lock:
            kinds = len(self._durations)
        return f"DurationLearner({kinds} kinds of job seen)"


@dataclass(frozen=True)
class Submission:
    """What a client knows about a job it just created, for planning the wait on it."""

    model: str
    width: int
    height: int
    #: The caller's monotonic clock when the create request was sent (the plan's zero).
    sent_at: float
    #: How long the create request took: the job began somewhere in that interval.
    create_seconds: float

    @property
    def kind(self) -> ModelSize:
        return (self.model, self.width, self.height)


class RecentSubmissions:
    """Thread-safe ``job id -> Submission`` for jobs not yet waited on, oldest dropped first."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._items: dict[str, Submission] = {}
        self._lock = threading.Lock()

    def add(self, job_id: str, submission: Submission) -> None:
        with self._lock:
            self._items[job_id] = submission
            while len(self._items) > self.limit:
                del self._items[next(iter(self._items))]

    def pop(self, job_id: str) -> Submission | None:
        with self._lock:
            return self._items.pop(job_id, None)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    Anything else (``inf``, ``nan``, garbage, a date no clock can hold) is None: no advice.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            current = time.time() if now is None else now
            seconds = when.timestamp() - current
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
