"""How fast a batch sends: how many jobs run at once, and how creates are spaced.

``Pacing`` is additive-increase / multiplicative-decrease, like TCP's congestion window:

- **concurrency** (jobs in flight): grows by one per "window" of jobs the service created
  without a 429, and halves on a 429 (``concurrency="auto"``); a fixed number is a cap that
  never moves;
- **spacing** between creates: a 429 pauses all creates for the wait the server advised
  (``X-RateLimit-Reset-After`` to the millisecond, else ``Retry-After``) and widens the
  spacing by ``SLOWDOWN`` (``STEEP_SLOWDOWN`` when no create got through since the last
  429), and to at least the service's measured rate: once a 429 has shown the limit is
  reached, the creates it admits over time *are* its rate. Each create answered with a job
  shortens the spacing a little (``SPEEDUP``), probing for more. Creates already on the wire
  when the spacing was widened widen it no further: one burst of 429s is one signal.

So a batch settles just under the service's rate, with a 429 every few dozen creates.
"""

from __future__ import annotations

import math
import threading
import time

#: Where ``concurrency="auto"`` starts, and the most it grows to.
AUTO_START = 4
AUTO_CEILING = 32
#: Pause after a 429 with no advice.
DEFAULT_BACKOFF_S = 1.0
#: Spacing factors: per create answered with a job, per 429, per 429 with none in between.
SPEEDUP = 0.9995
SLOWDOWN = 1.1
STEEP_SLOWDOWN = 1.5
#: Spacing kept above the measured rate's, so the service's bucket is never quite empty.
MARGIN = 1.02
#: Below this spacing creates are simply not spaced.
MIN_SPACING_S = 0.001


def check_concurrency(concurrency: object) -> int | None:
    """``"auto"`` (None: adaptive) or a positive whole number of jobs at once."""
    from miragic_nb._core.errors import InvalidRequestError

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
        self._widened_at = -math.inf
        self._created_since_widened = 0
        #: Since the first 429: when it came, and creates answered with a job since.
        self._limited_since: float | None = None
        self._created_since_limited = 0
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

    def before_create(self, stop: threading.Event | None = None) -> float | None:
        """Wait for this create's turn (after any 429 pause, spaced); the moment it may be
        sent (for ``throttled``), or None on ``stop``."""
        with self._condition:
            while True:
                wait = self._next_create - time.monotonic()
                if wait <= 0:
                    break
                if stop is not None and stop.is_set():
                    return None
                self._condition.wait(min(wait, 0.1))
            now = time.monotonic()
            if self._spacing >= MIN_SPACING_S:
                self._next_create = now + self._spacing
            return now

    def created(self) -> None:
        """A create was answered with a job: the service keeps up."""
        with self._condition:
            self._spacing *= SPEEDUP
            self._created_since_widened += 1
            self._created_since_limited += 1
            if self.fixed is None and self.limit < self.ceiling:
                self.limit = min(self.ceiling, self.limit + 1 / self.limit)
            self._condition.notify_all()

    def throttled(self, retry_after: float | None, *, sent_at: float) -> None:
        """A create sent at ``sent_at`` was answered 429 (no job made): pause all creates and
        slow down (once per burst: not for creates sent before the last slowdown)."""
        wait = DEFAULT_BACKOFF_S if retry_after is None else retry_after
        with self._condition:
            self.rate_limited += 1
            now = time.monotonic()
            self._next_create = max(self._next_create, now + wait)
            if sent_at >= self._widened_at:
                if self._spacing < MIN_SPACING_S:
                    self._spacing = max(wait, MIN_SPACING_S)
                elif self._created_since_widened:
                    self._spacing *= SLOWDOWN
                else:
                    self._spacing *= STEEP_SLOWDOWN
                if self._limited_since is None:
                    self._limited_since, self._created_since_limited = now, 0
                elif self._created_since_limited:
                    measured = (now - self._limited_since) / self._created_since_limited
                    self._spacing = max(self._spacing, measured * MARGIN)
                self._widened_at = now
                self._created_since_widened = 0
                if self.fixed is None:
                    self.limit = max(1.0, self.limit / 2)
            self._condition.notify_all()
