"""The poll schedule, the duration learner and Retry-After parsing: pure, no clock."""

from __future__ import annotations

import email.utils
import itertools
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragic_nb._core.polling import (
    DurationEstimate,
    DurationLearner,
    PollSchedule,
    parse_retry_after,
    plan_reads,
)


def test_backoff_grows_to_the_cap_without_progress() -> None:
    schedule = PollSchedule(initial_delay=0.25, growth=2.0, max_delay=2.0)
    delays = [schedule.next_delay(elapsed=1.0, polls=n, progress=None) for n in range(1, 7)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_progress_shortens_the_wait_near_the_end() -> None:
    schedule = PollSchedule(initial_delay=1.0, growth=2.0, max_delay=8.0, remaining_fraction=0.5)
    # 90% after 9 s: about 1 s left, so sleep about half of it rather than the 8 s backoff.
    assert schedule.next_delay(elapsed=9.0, polls=5, progress=90.0) == pytest.approx(0.5)
    # Early on, progress does not make the schedule poll more often than its backoff.
    assert schedule.next_delay(elapsed=0.5, polls=1, progress=1.0) == 1.0


def test_delay_never_below_the_floor() -> None:
    schedule = PollSchedule(min_delay=0.05)
    assert schedule.next_delay(elapsed=10.0, polls=3, progress=99.9) == 0.05


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (" 0 ", 0.0), ("1.5", 1.5), ("-2", 0.0), (None, None), ("", None), ("soon", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(7.0)
    past = email.utils.formatdate(now - 60, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


# -- PollPlan: one wait, fed with simulated reads (no clock, no sockets) -------------------


def simulate(
    duration: float,
    schedule: PollSchedule,
    *,
    expected: DurationEstimate | None = None,
    progress: bool = True,
    create_seconds: float = 0.004,
    read_seconds: float = 0.002,
) -> tuple[float, int]:
    """Run a plan against a job that reports floor(100 * age / duration) percent.

    Returns (how late the read that saw the job done came after its end, status reads made).
    """
    started = create_seconds * 0.6  # the job began during the create request
    plan = schedule.plan(create_seconds=create_seconds, expected=expected)
    now = create_seconds
    now += plan.first_delay(elapsed=now)
    reads = 0
    while True:
        now += read_seconds
        reads += 1
        age = now - started
        if age >= duration:
            return now - (started + duration), reads
        percent = min(99, int(100 * age / duration)) if progress else None
        now += plan.next_delay(elapsed=now, progress=percent)


def test_fresh_job_is_first_read_after_the_initial_delay_a_resumed_one_at_once() -> None:
    schedule = PollSchedule(initial_delay=0.3)
    assert schedule.plan(create_seconds=0.01).first_delay(elapsed=0.01) == pytest.approx(0.29)
    assert schedule.plan(create_seconds=None).first_delay(elapsed=0.0) == 0.0


def test_linear_progress_sleeps_to_the_predicted_end() -> None:
    schedule = PollSchedule(precision=0.2, end_margin=0.02)
    plan = schedule.plan(create_seconds=0.01)
    # 50% after 1 s: the job ends between ~1.95 s and 2.0 s, so read again just after 2.0 s.
    assert plan.next_delay(elapsed=1.0, progress=50) == pytest.approx(1.02)
    assert plan.due == pytest.approx(2.0)


def test_a_vague_estimate_is_sharpened_by_a_read_well_before_the_end() -> None:
    schedule = PollSchedule(precision=0.2, max_delay=60.0, refine_fraction=0.75)
    plan = schedule.plan(create_seconds=0.01)
    # 4% after 0.25 s: anywhere from ~5 s to 6.25 s; read again at 3/4 of the way to ~5 s.
    low, high = 0.25 + 95 * 0.24 / 5, 0.25 + 96 * 0.25 / 4
    delay = plan.next_delay(elapsed=0.25, progress=4)
    assert plan.end_window() == pytest.approx((low, high))
    assert delay == pytest.approx(0.75 * (low - 0.25))
    assert plan.due is None


@pytest.mark.parametrize("duration", [0.5, 0.8, 1.3, 2.0, 2.7, 3.5, 4.4, 5.2, 6.0])
def test_progress_lands_just_after_the_end_with_few_reads(duration: float) -> None:
    schedule = PollSchedule(initial_delay=0.25, precision=0.2, end_margin=0.02)
    late, reads = simulate(duration, schedule)
    baseline_reads = math.floor(duration / 2) + 2  # read at once, then every 2 s
    assert late <= schedule.precision + schedule.end_margin + 0.01
    assert reads <= min(3, baseline_reads)


def test_queued_job_is_timed_from_when_its_progress_started() -> None:
    schedule = PollSchedule(max_delay=60.0)
    plan = schedule.plan(create_seconds=0.01)
    plan.next_delay(elapsed=1.0, progress=0)  # queued
    plan.next_delay(elapsed=2.0, progress=0)  # still queued
    plan.next_delay(elapsed=3.0, progress=10)
    window = plan.end_window()
    assert window is not None
    # Started between 2 s and 3 s: 10% in at most 1 s means at most ~10 s more, not ~27 s.
    assert window[1] <= 3.0 + 90 * 1.0 / 9 + 1e-9
    assert window[0] >= 3.0


def test_inconsistent_progress_falls_back_to_the_newest_reading() -> None:
    schedule = PollSchedule(max_delay=60.0)
    plan = schedule.plan(create_seconds=0.01)
    plan.next_delay(elapsed=1.0, progress=10)
    plan.next_delay(elapsed=10.0, progress=20)  # slowed down sharply: lines disagree
    window = plan.end_window()
    assert window is not None
    low, high = window
    assert 10.0 <= low <= high


def test_a_job_stuck_at_99_is_read_less_and_less_often() -> None:
    schedule = PollSchedule(min_delay=0.01, overdue_delay=0.05, growth=1.5, max_delay=2.0)
    plan = schedule.plan(create_seconds=0.01)
    now = 1.0
    delays = []
    for _ in range(12):
        delay = plan.next_delay(elapsed=now, progress=99)
        delays.append(delay)
        now += delay
    tail = delays[1:]
    assert all(later >= earlier for earlier, later in itertools.pairwise(tail))
    assert min(tail) >= schedule.overdue_delay
    assert delays[-1] == schedule.max_delay


def test_no_sleep_is_longer_than_max_delay() -> None:
    schedule = PollSchedule(max_delay=1.5)
    plan = schedule.plan(create_seconds=0.01, expected=DurationEstimate(20.0, 22.0))
    assert plan.first_delay(elapsed=0.01) == 1.5
    assert plan.next_delay(elapsed=0.2, progress=1) <= 1.5
    assert schedule.plan().next_delay(elapsed=30.0, progress=None) <= 1.5


def test_without_progress_the_job_is_read_at_the_learned_ends_then_less_and_less_often() -> None:
    schedule = PollSchedule(min_delay=0.01, max_delay=5.0, end_margin=0.02, relative_gap=0.25)
    learner = DurationLearner()
    for seconds in (1.0, 1.0, 1.0, 3.0, 3.0, 3.0):  # two kinds of prompt: quick and slow
        learner.observe("flux", 512, 512, seconds)
    expected = learner.estimate("flux", 512, 512)
    plan = schedule.plan(create_seconds=0.01, expected=expected)
    # Read just after the quick ones end, then just after the slow ones, not in between.
    assert plan.first_delay(elapsed=0.01) == pytest.approx(1.02)
    assert plan.next_delay(elapsed=1.03, progress=None) == pytest.approx(0.25 * 1.03)
    moments = [1.03 + 0.25 * 1.03]
    while moments[-1] < 3.0:
        moments.append(moments[-1] + plan.next_delay(elapsed=moments[-1], progress=None))
    assert moments[-1] == pytest.approx(3.03)
    # Past the longest duration seen (3.15 with its margin), each gap is a quarter of the age.
    now = 3.2
    for _ in range(4):
        delay = plan.next_delay(elapsed=now, progress=None)
        assert delay == pytest.approx(min(0.25 * now, 5.0))
        now += delay


def test_learned_ends_close_together_are_not_read_in_a_flurry() -> None:
    schedule = PollSchedule(min_delay=0.01, merge_gap=0.05, read_cost=0.001, end_margin=0.0)
    ends = (3.0, 3.02, 3.04, 3.06)
    expected = DurationEstimate(3.0, 3.06, 4, False, tuple((d, 0.25) for d in ends))
    plan = schedule.plan(create_seconds=0.0, expected=expected)
    assert plan.first_delay(elapsed=0.0) == pytest.approx(3.0)
    assert plan.read_points[:4] == pytest.approx(ends)  # cheap reads: every end is planned
    assert plan.next_delay(elapsed=3.0, progress=None) == pytest.approx(0.05 * 3.0)


@pytest.mark.parametrize(
    ("durations", "read_cost", "reads"),
    [
        ([3.0] * 6, 0.25, [3.0]),  # similar jobs: one read, at their end
        ([1.0] * 5 + [4.0] * 5, 0.25, [1.0, 4.0]),  # two clusters: one read each
        ([1.0, 2.0, 3.0, 4.0], 0.01, [1.0, 2.0, 3.0, 4.0]),  # reads are cheap: every end
        ([1.0, 2.0, 3.0, 4.0], 100.0, [4.0]),  # reads are dear: only the longest
    ],
)
def test_reads_are_planned_where_they_pay_off(
    durations: list[float], read_cost: float, reads: list[float]
) -> None:
    distribution = tuple((d, 1.0 / len(durations)) for d in durations)
    assert list(plan_reads(distribution, read_cost=read_cost)) == reads


@given(
    duration=st.floats(min_value=0.05, max_value=30.0), jobs=st.integers(min_value=1, max_value=8)
)
def test_a_job_of_exactly_the_learned_duration_is_read_just_after_its_end(
    duration: float, jobs: int
) -> None:
    schedule = PollSchedule(end_margin=0.02, max_delay=5.0)
    learner = DurationLearner()
    for _ in range(jobs):
        learner.observe("flux", 512, 512, duration)
    expected = learner.estimate("flux", 512, 512)
    late, reads = simulate(duration, schedule, expected=expected, progress=False)
    slack = schedule.end_margin + 0.004 + 0.002  # margin + create time + read time
    if reads > 1:  # the last sleep may be stretched to min_delay
        slack += schedule.min_delay
    assert late <= slack
    # One read, or more only because no sleep is longer than max_delay.
    assert reads <= math.ceil((duration + 0.03) / schedule.max_delay)


finite = st.floats(min_value=0.05, max_value=30.0, allow_nan=False)


@given(
    durations=st.lists(finite, min_size=1, max_size=16),
    job=finite,
    create_seconds=st.floats(min_value=0.0, max_value=0.5),
)
def test_without_progress_every_wait_is_bounded(
    durations: list[float], job: float, create_seconds: float
) -> None:
    """Delays stay in [min_delay, max_delay]; a job ending after the first learned end is read
    at most ``relative_gap`` of its age late (or ``max_delay``); reads are bounded by the
    learned ends plus a geometric tail."""
    schedule = PollSchedule()
    learner = DurationLearner()
    for seconds in durations:
        learner.observe("flux", 512, 512, seconds)
    expected = learner.estimate("flux", 512, 512)
    assert expected is not None
    plan = schedule.plan(create_seconds=create_seconds, expected=expected)
    now = create_seconds + plan.first_delay(elapsed=create_seconds)
    first_read = now
    first_end = plan.read_points[0]  # where the shortest job seen would have ended
    end = create_seconds + job  # the latest the job can end, on the plan's clock
    reads = 1
    previous = now
    while now < end:
        delay = plan.next_delay(elapsed=now, progress=None)
        assert schedule.min_delay <= delay <= schedule.max_delay
        previous, now = now, now + delay
        reads += 1
    if end >= first_end:
        allowed = max(schedule.min_delay, min(schedule.relative_gap * previous, schedule.max_delay))
        assert now - end <= allowed + 1e-9
    growth = math.log1p(schedule.relative_gap)
    tail = math.ceil(math.log(max(end, first_read) / first_read) / growth)
    assert reads <= 1 + len(set(durations)) + 1 + tail + math.ceil(end / schedule.max_delay)


def test_learned_duration_beats_a_2s_loop_without_progress() -> None:
    schedule = PollSchedule(initial_delay=0.25, min_delay=0.05)
    learner = DurationLearner()
    rng = random.Random(6)
    late_total = reads_total = baseline_reads = 0.0
    for _ in range(10):
        duration = 3.0 * rng.uniform(0.9, 1.1)
        expected = learner.estimate("flux", 1024, 1024)
        late, reads = simulate(duration, schedule, expected=expected, progress=False)
        learner.observe("flux", 1024, 1024, duration)
        late_total += late
        reads_total += reads
        baseline_reads += math.floor(duration / 2) + 2
    assert late_total / 10 < 0.3  # a 2 s loop is ~1 s late on average
    assert reads_total <= 1.5 * baseline_reads


def _lognormal_mix(rng: random.Random, n: int) -> float:
    return min(5.0, max(0.7, math.exp(rng.gauss(math.log(2.0), 0.5))))


@pytest.mark.parametrize(
    "draw",
    [
        _lognormal_mix,  # prompts of different weight under one model and size
        lambda rng, n: rng.uniform(0.7, 5.0),  # a wider, flat mix
        lambda rng, n: 2.0 * 1.1**n * rng.uniform(0.9, 1.1),  # a server slowing down
        lambda rng, n: 3.0 * rng.uniform(0.9, 1.1),  # similar jobs
    ],
    ids=["log-normal mix", "flat mix", "drift", "similar"],
)
def test_no_progress_schedule_halves_a_2s_loops_lateness_in_every_scenario(
    draw: Callable[[random.Random, int], float],
) -> None:
    """Simulated (no clock): 20 jobs, the first with nothing learned, against the reference
    loop's reads at 0, 2, 4 ... s. The same default schedule serves every scenario."""
    schedule = PollSchedule()
    learner = DurationLearner()
    rng = random.Random(6)
    late_total = reads_total = baseline_late = baseline_reads = 0.0
    for n in range(20):
        duration = draw(rng, n)
        late, reads = simulate(duration, schedule, expected=learner.estimate("flux", 1, 1))
        learner.observe("flux", 1, 1, duration)
        late_total += late
        reads_total += reads
        baseline_late += 2 * math.ceil(duration / 2) - duration
        baseline_reads += math.ceil(duration / 2) + 1
    assert late_total <= 0.55 * baseline_late
    assert reads_total <= 1.6 * baseline_reads


# -- DurationLearner -------------------------------------------------------------------------


def test_learner_knows_nothing_before_a_job_of_that_kind() -> None:
    learner = DurationLearner()
    learner.observe("flux", 1024, 1024, 3.0)
    assert learner.estimate("turbo", 1024, 1024) is None
    assert learner.estimate("flux", 512, 512) is None


def test_learner_spans_recent_durations_with_a_margin() -> None:
    learner = DurationLearner(window=3, tolerance=0.05, single_tolerance=0.15)
    learner.observe("Flux", 1024, 768, 4.0)
    assert learner.estimate("flux", 1024, 768) == DurationEstimate(3.4, 4.6, 1, False, ((4.0, 1),))
    for seconds in (5.0, 4.5, 4.2):  # the 4.0 s job falls out of the window of three
        learner.observe("flux", 1024, 768, seconds)
    estimate = learner.estimate("flux", 1024, 768)
    assert estimate is not None
    assert (estimate.low, estimate.high, estimate.samples) == pytest.approx((3.99, 5.25, 3))


def test_learner_weighs_recent_jobs_more_so_it_follows_a_drift() -> None:
    durations = [2.0] * 8 + [4.0] * 4  # the server got slower
    slow, fast = DurationLearner(half_life=2.0), DurationLearner(half_life=0.5)
    for seconds in durations:
        slow.observe("flux", 512, 512, seconds)
        fast.observe("flux", 512, 512, seconds)
    estimate = slow.estimate("flux", 512, 512)
    assert estimate is not None
    weights = dict(estimate.distribution)
    assert math.fsum(weights.values()) == pytest.approx(1.0)
    # The four newest weigh 1, 1/sqrt2, 1/2, 1/(2 sqrt2); the eight older ones a quarter.
    assert weights[4.0] == pytest.approx(2.56 / 3.36, abs=0.01)
    assert estimate.low == pytest.approx(2.0 * 0.95)  # the span still covers the old ones
    # That quarter still earns the old duration a read; forgetting faster drops it.
    assert plan_reads(estimate.distribution, read_cost=0.25) == (2.0, 4.0)
    forgetful = fast.estimate("flux", 512, 512)
    assert forgetful is not None
    assert plan_reads(forgetful.distribution, read_cost=0.25) == (4.0,)


def test_learner_ignores_nonsense_durations() -> None:
    learner = DurationLearner()
    for bad in (-1.0, math.nan, math.inf):
        learner.observe("flux", 1024, 1024, bad)
    assert learner.estimate("flux", 1024, 1024) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_delay": 0.0},
        {"min_delay": 2.0, "max_delay": 1.0},
        {"growth": 0.5},
        {"merge_gap": 0.3, "relative_gap": 0.2},
        {"read_cost": 0.0},
    ],
)
def test_schedule_refuses_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        PollSchedule(**kwargs)  # type: ignore[arg-type]


def test_with_progress_a_wide_learned_window_does_not_delay_the_first_read() -> None:
    schedule = PollSchedule(initial_delay=0.25, narrow_spread=1.5)
    mixed = DurationEstimate(0.5, 6.0, 5, progress=True)  # jobs of mixed length
    similar = DurationEstimate(2.7, 3.3, 5, progress=True)
    silent = DurationEstimate(0.5, 6.0, 5, progress=False)  # no progress: the window is all
    one_job = DurationEstimate(2.7, 3.3, 1, progress=True)  # one job says nothing of spread
    assert schedule.plan(create_seconds=0.0, expected=mixed).first_delay(elapsed=0.0) == 0.25
    assert schedule.plan(create_seconds=0.0, expected=one_job).first_delay(elapsed=0.0) == 0.25
    assert schedule.plan(create_seconds=0.0, expected=similar).first_delay(elapsed=0.0) == 2.7
    silent_plan = schedule.plan(create_seconds=0.0, expected=silent)
    assert silent_plan.first_delay(elapsed=0.0) == 0.5 + schedule.end_margin


def test_learner_remembers_whether_the_kind_reports_progress() -> None:
    learner = DurationLearner()
    learner.observe("turbo", 512, 512, 1.0, progress=True)
    estimate = learner.estimate("turbo", 512, 512)
    assert estimate is not None
    assert estimate.progress
    learner.observe("turbo", 512, 512, 1.1, progress=False)
    estimate = learner.estimate("turbo", 512, 512)
    assert estimate is not None
    assert not estimate.progress
