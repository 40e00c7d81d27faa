"""The poll schedule and Retry-After parsing: pure functions, no clock."""

from __future__ import annotations

import email.utils

import pytest

from miragic_nb.polling import PollSchedule, parse_retry_after


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
