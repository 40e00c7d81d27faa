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
   recent jobs per model and size as a distribution, newer jobs weighing more so a drift is
   followed. Without progress the plan reads the job at the durations where reading pays off
   most for that distribution (:func:`plan_reads`: few reads for similar jobs, more where a
   wide mix bunches up), never further apart than ``relative_gap`` of the time elapsed; past
   the longest duration seen the gap keeps growing with the job's age, since a job already in
   the tail is probably a long one. The caller is late by a small fraction of the job's own
   length whatever the spread, and reads are spent where jobs end.
3. **Backoff.** With neither, exponential backoff from ``initial_delay`` to ``max_delay``.

A sleep never exceeds ``max_delay``, so a job that fails early is noticed promptly.
"""

from __future__ import annotations

import bisect
import email.utils
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DurationEstimate:
    """How long a job is expected to run on the server, in seconds: between ``low`` and ``high``."""

    low: float
    high: float
    samples: int = 0
    #: Whether jobs of this kind reported ``progress`` while they ran.
    progress: bool = False
    #: Recent durations with their weights (newer jobs weigh more), ascending by duration;
    #: empty means only ``low`` and ``high`` are known.
    distribution: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high or math.isinf(self.high):
            raise ValueError(f"need 0 <= low <= high < inf, got {self.low!r}, {self.high!r}")
        durations = [d for d, _ in self.distribution]
        if durations != sorted(durations) or any(
            not self.low <= d <= self.high or not w > 0 for d, w in self.distribution
        ):
            raise ValueError("distribution: ascending durations in [low, high], weights > 0")


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
    #: Without progress, the longest gap between two reads as a fraction of the time elapsed
    #: (how late the caller may be, relative to the job's length); past the longest learned
    #: duration the gap therefore grows geometrically, by ``1 + relative_gap`` a read.
    relative_gap: float = 0.25
    #: Without progress, the shortest gap between two reads as a fraction of the time elapsed:
    #: learned ends closer together than that are read once.
    merge_gap: float = 0.05
    #: What one status read is worth in seconds of lateness, as a fraction of the spread of the
    #: learned durations: the price :func:`plan_reads` weighs reads against waiting with.
    read_cost: float = 0.35
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
        if self.initial_delay < 0 or self.growth < 1:
            raise ValueError("need initial_delay >= 0 and growth >= 1")
        if not 0 <= self.merge_gap <= self.relative_gap or not self.read_cost > 0:
            raise ValueError("need 0 <= merge_gap <= relative_gap and read_cost > 0")
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
    #: Plan-clock moments to read at without progress, from ``expected`` (computed once).
    read_points: list[float] = field(default_factory=list)

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
            first = expected.low if expected.progress else self._read_points(expected)[0]
            return self._sleep_until(first, elapsed)
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
            delay = self._expected_step(elapsed, self.expected)
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

    def _expected_step(self, elapsed: float, expected: DurationEstimate) -> float:
        """No progress, learned durations: the next learned read point, then geometric backoff.

        Once the first point has passed, every gap stays within [``merge_gap``,
        ``relative_gap``] of the time elapsed, so a job is read late by at most that fraction
        of its age.
        """
        schedule = self.schedule
        points = self._read_points(expected)
        if elapsed < points[0]:
            return points[0] - elapsed  # no job like it has ended yet
        shortest = schedule.merge_gap * elapsed
        longest = schedule.relative_gap * elapsed
        upcoming = next((p for p in points if p > elapsed), math.inf)
        return max(shortest, min(upcoming - elapsed, longest))

    def _read_points(self, expected: DurationEstimate) -> list[float]:
        """Plan-clock moments at which jobs like this one have ended, read just after each."""
        if not self.read_points:
            offset = (self.create_seconds or 0.0) + self.schedule.end_margin
            weighted = expected.distribution or ((expected.low, 0.5), (expected.high, 0.5))
            ends = plan_reads(weighted, read_cost=self.schedule.read_cost)
            self.read_points = [end + offset for end in (*ends, expected.high)]
        return self.read_points

    def _sleep_until(self, moment: float, elapsed: float) -> float:
        return min(max(0.0, moment - elapsed), self.schedule.max_delay)


ModelSize = tuple[str, int, int]


class DurationLearner:
    """Remembers how long recent jobs took on the server, per (model, width, height).

    Thread-safe (a batch feeds it from several threads) and pure otherwise: it is told the
    durations and never reads a clock. Of the last ``window`` durations, each one's weight
    halves every ``half_life`` newer jobs, so a drift in durations is followed within a few
    jobs while a steady mix is still described by all of them. The estimate spans the shortest
    to the longest, widened by ``tolerance`` (``single_tolerance`` with one sample), and
    carries the weighted durations.
    """

    def __init__(
        self,
        *,
        window: int = 16,
        tolerance: float = 0.05,
        single_tolerance: float = 0.15,
        half_life: float = 4.0,
    ) -> None:
        if window < 1 or not 0 <= tolerance < 1 or not 0 <= single_tolerance < 1:
            raise ValueError("need window >= 1 and tolerances in [0, 1)")
        if not half_life > 0:
            raise ValueError("need half_life > 0")
        self.window = window
        self.tolerance = tolerance
        self.single_tolerance = single_tolerance
        self.half_life = half_life
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
        newest = len(seen) - 1
        weights = [0.5 ** ((newest - i) / self.half_life) for i in range(len(seen))]
        total = math.fsum(weights)
        distribution = _merged((d, w / total) for d, w in zip(seen, weights, strict=True))
        return DurationEstimate(low, high, len(seen), progress, distribution)

    def __repr__(self) -> str:
        with self._lock:
            kinds = len(self._durations)
        return f"DurationLearner({kinds} kinds of job seen)"


#: The least spread :func:`plan_reads` assumes, as a fraction of the median duration.
_SPREAD_FLOOR = 0.05


def plan_reads(
    distribution: tuple[tuple[float, float], ...], *, read_cost: float
) -> tuple[float, ...]:
    """The durations at which to read a job, best for a weighted ``distribution`` of them.

    A job ending between two reads waits for the second; a read costs ``read_cost`` times the
    spread of the durations (their mean distance from the median), in seconds of waiting, and
    is paid by every job still running. Pricing reads by the spread makes the plan scale-free:
    a wide mix and a tight one get about as many reads, each late by a similar share of its
    spread. Among the durations, the reads that minimise expected waiting plus cost are found
    exactly by dynamic programming (the longest duration is always read): reads go where jobs
    bunch up, and similar jobs get a read or two at their end.
    """
    pairs = _merged(distribution)
    total = math.fsum(w for _, w in pairs)
    ends = [d for d, _ in pairs]
    weights = [w / total for _, w in pairs]
    cumulative = list(itertools.accumulate(weights, initial=0.0))
    median = ends[min(bisect.bisect_left(cumulative, 0.5), len(ends)) - 1]
    spread = math.fsum(w * abs(d - median) for d, w in zip(ends, weights, strict=True))
    # No job length is predictable to better than a few percent: a read is never nearly free,
    # even when almost every job took the same time.
    price = read_cost * max(spread, _SPREAD_FLOOR * median)
    # best[j]: least cost of covering the j shortest values with reads, the last at ends[j-1].
    best = [0.0] + [math.inf] * len(ends)
    previous = [0] * (len(ends) + 1)
    for j in range(1, len(ends) + 1):
        wait = 0.0  # waiting of values p..j-1 for a read at ends[j-1]
        for p in range(j - 1, -1, -1):
            wait += weights[p] * (ends[j - 1] - ends[p])
            cost = best[p] + price * (1.0 - cumulative[p]) + wait
            if cost < best[j]:
                best[j], previous[j] = cost, p
    chosen: list[float] = []
    j = len(ends)
    while j:
        chosen.append(ends[j - 1])
        j = previous[j]
    return tuple(reversed(chosen))


def _merged(pairs: Iterable[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """(duration, weight) pairs ascending by duration, the weights of equal durations added."""
    weights: dict[float, float] = {}
    for duration, weight in pairs:
        weights[duration] = weights.get(duration, 0.0) + weight
    return tuple(sorted(weights.items()))


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
