"""The emulator's queue model: a fixed number of service workers, first come first served.

With ``workers=None`` (the default) every job starts service the moment it is created. With
``workers=N`` a job waits until one of N workers is free. The schedule is decided once, at
creation, from a heap of the times at which each worker becomes free, so a job's status stays
a pure function of the clock (see :mod:`miragic_nb.emulator.jobs`). The clock is passed in.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable

__all__ = ["ServiceQueue", "check_workers"]


def check_workers(workers: int | None) -> int | None:
    """``workers`` if it is ``None`` or a positive int; else a ``ValueError`` saying so."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int or None (unlimited), not {workers!r}")
    return workers


class ServiceQueue:
    """When each new job starts service, given ``workers`` servers (``None``: unlimited)."""

    def __init__(self, workers: int | None = None) -> None:
        self._lock = threading.Lock()
        self._workers = check_workers(workers)
        self._free_at: list[float] = []  # a min-heap, one entry per worker once all are used

    @property
    def workers(self) -> int | None:
        return self._workers

    def resize(self, workers: int | None, busy_until: Iterable[float], now: float) -> None:
        """Change the number of workers; ``busy_until`` are the service ends of existing jobs.

        Jobs already scheduled keep their schedule. The next job may start once fewer than
        ``workers`` jobs are still in service, so the heap keeps the latest ``workers`` ends.
        """
        workers = check_workers(workers)
        with self._lock:
            self._workers = workers
            if workers is None:
                self._free_at = []
                return
            running = sorted(end for end in busy_until if end > now)
            self._free_at = running[-workers:] if running else []
            heapq.heapify(self._free_at)

    def admit(self, now: float, duration: float) -> float:
        """Schedule a job created at ``now`` taking ``duration`` s; returns its service start."""
        with self._lock:
            if self._workers is None:
                return now
            if len(self._free_at) < self._workers:
                start = now
                heapq.heappush(self._free_at, start + duration)
            else:
                start = max(now, self._free_at[0])
                heapq.heapreplace(self._free_at, start + duration)
            return start
