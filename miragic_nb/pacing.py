"""How fast a batch sends: how many jobs run at once, and how creates are spaced.

``Pacing`` is additive-increase / multiplicative-decrease, like TCP's congestion window:

- **concurrency** (jobs in flight): grows by one per "window" of jobs the service created
  without a 429, and halves on a 429 (``concurrency="auto"``); a fixed number is a cap that
  never moves;
- **spacing** between creates: a 429 sets it to at least the wait the server advised
  (``X-RateLimit-Reset-After`` to the millisecond, else ``Retry-After``) and all creates
  pause until then; each create answered without a 429 shortens it a little.

So a batch settles just under the service's rate without a storm of 429s after every pause.
"""

from __future__ import annotations

import threading
import time

#: Where ``concurrency="auto"`` starts, and the most it grows to.
AUTO_START = 4
AUTO_CEILING = 32
#: Spacing after a 429 with no advice, and the factor a good create shortens it by.
DEFAULT_BACKOFF_S = 1.0
SPEEDUP = 0.97
#: Below this spacing creates are simply not spaced.
MIN_SPACING_S = 0.001


def check_concurrency(concurrency: object) -> int | None:
    """``"auto"`` (None: adaptive) or a positive whole number of jobs at once."""
    from .errors import InvalidRequestError

    if concurrency == "auto":
        return None
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequestError(
            f'concurrency must be "auto" or a positive whole number, got {concurrency!r}',
            field="concurrency",
        )
    return concurrency


class Pacing:
    """The shared pace of one batch's workers (thread-safe)."""

    def __init__(self, fixed: int | None = None) -> None:
        self.fixed = fixed
        self.limit = float(fixed if fixed is not None else AUTO_START)
        self.ceiling = fixed if fixed is not None else AUTO_CEILING
        self.running = 0
        self.rate_limited = 0
        self._spacing = 0.0
        self._next_create = 0.0
        self._condition = threading.Condition()

    def __repr__(self) -> str:
        return f"Pacing(limit={int(self.limit)}, running={self.running}, 429s={self.rate_limited})"

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a free job slot; False when ``stop`` was set meanwhile."""
        with self._condition:
            while self.running >= int(self.limit):
                if stop is not None and stop.is_set():
                    return False
                self._condition.wait(0.1)
            self.running += 1
            return True

    def release(self) -> None:
        with self._condition:
            self.running -= 1
            self._condition.notify_all()

    def before_create(self, stop: threading.Event | None = None) -> bool:
        """Wait for this create's turn (after any 429 pause, spaced); False on ``stop``."""
        with self._condition:
            while True:
                wait = self._next_create - time.monotonic()
                if wait <= 0:
                    break
                if stop is not None and stop.is_set():
                    return False
                self._condition.wait(min(wait, 0.1))
            if self._spacing >= MIN_SPACING_S:
                self._next_create = time.monotonic() + self._spacing
            return True

    def created(self) -> None:
        """A create was answered with a job: the service keeps up."""
        with self._condition:
            self._spacing *= SPEEDUP
            if self.fixed is None and self.limit < self.ceiling:
                self.limit = min(self.ceiling, self.limit + 1 / self.limit)
            self._condition.notify_all()

    def throttled(self, retry_after: float | None) -> None:
        """A create was answered 429 (no job made): slow down and pause all creates."""
        wait = DEFAULT_BACKOFF_S if retry_after is None else retry_after
        with self._condition:
            self.rate_limited += 1
            self._spacing = max(self._spacing, wait, MIN_SPACING_S)
            self._next_create = max(self._next_create, time.monotonic() + wait)
            if self.fixed is None:
                self.limit = max(1.0, self.limit / 2)
            self._condition.notify_all()
