"""Shared pieces of the benchmarks: result rows, the emulator, clients and timing helpers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from miragic_nb._core.polling import PollSchedule
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator

API_KEY = "benchmark-key-0123456789"
CREATE_PATH = "/api/v1/image/generate"
STATUS_PATH = "/api/v1/image/jobs/"


@dataclass(frozen=True)
class Row:
    """One line of the results table: a measure, its baseline and ours, and the goal."""

    benchmark: str
    measure: str
    baseline: float
    ours: float
    unit: str
    #: Highest acceptable ours/baseline, or None when the row only informs.
    goal: float | None = None
    #: A goal that is not a ratio (e.g. "≤ 50 ms added"), with whether it was met.
    goal_text: str = ""
    passed: bool | None = None
    #: How the baseline was obtained, shown under the table.
    baseline_label: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.baseline == 0:
            return 0.0 if self.ours == 0 else float("inf")
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        if self.passed is not None:
            return self.passed
        return None if self.goal is None else self.ratio <= self.goal

    @property
    def goal_label(self) -> str:
        if self.goal_text:
            return self.goal_text
        return "—" if self.goal is None else f"≤ {self.goal:g}×"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


@dataclass(frozen=True)
class Settings:
    """How hard to measure: ``quick`` for CI (no thresholds, a few minutes), else full."""

    quick: bool

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


@contextmanager
def emulator(**options: Any) -> Iterator[Emulator]:
    options.setdefault("seed", 6)
    with Emulator(api_key=API_KEY, **options) as emu:
        yield emu


def client_for(emu: Emulator, **options: Any) -> Client:
    """A client of ``emu`` with the library's default poll schedule and no history on disk."""
    options.setdefault("history", False)
    return Client(api_key=emu.api_key, base_url=emu.url, timeout=120, **options)


#: Dense polling for load tests, where the point is the server's capacity, not the schedule.
TIGHT_POLLS = PollSchedule(
    initial_delay=0.0, growth=1.2, max_delay=0.1, min_delay=0.005, overdue_delay=0.005
)


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
