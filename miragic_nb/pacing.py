"""How fast a batch sends: how many jobs run at once, and how creates are spaced.

The **rate** (creates a second) is learned from what the service admits, never from a header:

- **Before the first 429** creates are spaced at ``START_RATE``, and the rate grows by
  ``SLOW_START`` with every create answered with a job (doubling every few creates), so a
  small bucket is not flooded and a large one is found quickly.
- **On a 429** (no job made) the rate backs off multiplicatively: to ``BACKOFF`` times the
  lower of the rate it was sent at and the rate the service has admitted since the first 429
  (creates answered with a job per second). A burst of 429s for creates already on the wire
  is one signal, not several.
- **Probing** is additive: each create answered with a job adds ``PROBE`` of the rate set at
  the last back-off, so the rate climbs back within a few dozen creates.
- **``Retry-After`` only pauses** every create until the moment it names (a precise
  ``X-RateLimit-Reset-After`` when the server sends one; one spacing when there is no header);
  it never sets the spacing. The tokens the service earns during a pause are used after it:
  up to ``CATCH_UP`` creates go at once, unless such a catch-up was itself answered 429.

**Concurrency** (jobs in flight) is only a cap: ``"auto"`` allows ``AUTO_CEILING`` jobs at
once and lets the rate do the pacing; a fixed number is a cap that never moves.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

#: The most jobs ``concurrency="auto"`` runs at once.
AUTO_CEILING = 32
#: Creates a second before anything is known, and the growth per create with a job until
#: the first 429.
START_RATE = 8.0
SLOW_START = 1.25
#: Back-off factor on a 429, and the additive probe per create with a job (a share of the
#: rate set at the last back-off).
BACKOFF = 0.8
PROBE = 0.005
#: Back-off when the first 429 ends the slow start (which may overshoot up to twice).
FIRST_BACKOFF = 0.65
#: Most creates sent at once after a pause (the service's bucket refilled meanwhile).
CATCH_UP = 4
#: Pause after a 429 with no advice, in spacings.
BARE_PAUSE_SPACINGS = 1.0
#: Slowest the rate ever gets (one create a minute): the batch's deadline ends it anyway.
MIN_RATE = 1 / 60
#: Longest pause honoured from one header: the batch's deadline bounds it too.
MAX_PAUSE_S = 60.0
#: Fewest creates with a job the admitted rate is measured over (one more or less is noise).
MEASURED = 4


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
    """The shared pace of one batch's workers (thread-safe; the clock can be injected)."""

    def __init__(self, fixed: int | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.fixed = fixed
        self.ceiling = fixed if fixed is not None else AUTO_CEILING
        self.limit = self.ceiling
        self.running = 0
        self.rate_limited = 0
        self._clock = clock
        self._condition = threading.Condition()
        #: Creates a second; grows by SLOW_START per create until the first 429.
        self.rate = START_RATE
        self._slow_start = True
        #: The rate set at the last back-off (the probe's step is a share of it).
        self._base = START_RATE
        #: When the next create may go, and how many may go at that moment at once.
        self._next = -math.inf
        self._credit = 1.0
        #: A pause after a 429: since when, until when (-inf: none).
        self._paused_since = -math.inf
        self._paused_until = -math.inf
        #: Creates sent before this moment were on the wire at the last back-off.
        self._backed_off_at = -math.inf
        #: The first create's turn; creates answered with a job; (moment, that count) at
        #: each back-off; the last turn's moment.
        self._started: float | None = None
        self._admitted = 0
        self._limits: list[tuple[float, int]] = []
        self._sent: list[float] = []
        #: The moments of the last catch-up's creates, and how many may go at once (1 after a
        #: catch-up was answered 429: the service's bucket is smaller than that).
        self._catch_up_sends: set[float] = set()
        self._catch_up = CATCH_UP

    def __repr__(self) -> str:
        return f"Pacing(rate={self.rate:.3g}/s, running={self.running}, 429s={self.rate_limited})"

    # -- job slots ---------------------------------------------------------------------------

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a free job slot; False when ``stop`` was set meanwhile."""
        with self._condition:
            while self.running >= self.limit:
                if stop is not None and stop.is_set():
                    return False
                self._condition.wait(0.1)
            self.running += 1
            return True

    def release(self) -> None:
        with self._condition:
            self.running -= 1
            self._condition.notify_all()

    # -- creates ---------------------------------------------------------------------------

    def before_create(
        self, stop: threading.Event | None = None, *, until: float = math.inf
    ) -> float | None:
        """Wait for this create's turn; the moment it may be sent (for ``throttled``), or None
        on ``stop`` or when its turn would come after ``until`` (monotonic)."""
        with self._condition:
            while True:
                wait = self.turn()
                if wait <= 0:
                    return self._sent[-1]
                if stop is not None and stop.is_set():
                    return None
                if self._clock() + wait > until:
                    return None
                self._condition.wait(min(wait, 0.1))

    def turn(self) -> float:
        """Take a create's turn if it has come (0.0; its moment is ``last_turn``), else the
        seconds until it may come."""
        with self._condition:
            now = self._clock()
            start = max(self._next, self._paused_until)
            if now < start:
                return start - now
            if self._started is None:
                self._started = now
            if self._paused_until > -math.inf:
                # First create after a pause: the service earned tokens meanwhile.
                paused = min(now - self._paused_since, MAX_PAUSE_S)
                self._credit = min(float(self._catch_up), max(1.0, paused * self.rate))
                self._catch_up_sends = set()
                self._paused_until = -math.inf
            if self._credit > 1 or now in self._catch_up_sends:
                self._catch_up_sends.add(now)
            self._credit -= 1
            if self._credit >= 1:
                self._next = now  # more of the catch-up may go at once
            else:
                self._credit = 1.0
                self._next = now + 1 / self.rate
            self._sent.append(now)
            del self._sent[:-1]
            return 0.0

    @property
    def last_turn(self) -> float:
        """The moment of the last create's turn."""
        return self._sent[-1] if self._sent else -math.inf

    def created(self) -> None:
        """A create was answered with a job: the service keeps up; probe a little faster."""
        with self._condition:
            self._admitted += 1
            if self._slow_start:
                self.rate *= SLOW_START
            else:
                self.rate += PROBE * self._base
            self._condition.notify_all()

    def throttled(self, retry_after: float | None, *, sent_at: float) -> None:
        """A create sent at ``sent_at`` was answered 429 (no job made): back off once per
        burst, and pause every create for the wait the server advised."""
        with self._condition:
            self.rate_limited += 1
            now = self._clock()
            if sent_at in self._catch_up_sends:
                self._catch_up = 1  # the service's bucket holds less than our catch-up
            if sent_at < self._backed_off_at:
                return  # on the wire before the last back-off: the same signal
            self._base = self.rate
            backoff = FIRST_BACKOFF if self._slow_start else BACKOFF
            self.rate = max(MIN_RATE, min(backoff * self.rate, self._admitted_rate(now)))
            self._slow_start = False
            self._backed_off_at = now
            pause = BARE_PAUSE_SPACINGS / self.rate if retry_after is None else retry_after
            if self._paused_until == -math.inf:
                self._paused_since = now
            self._paused_until = max(self._paused_until, now + min(pause, MAX_PAUSE_S))
            self._limits.append((now, self._admitted))
            self._credit = 1.0
            self._condition.notify_all()

    def _admitted_rate(self, now: float) -> float:
        """Creates answered with a job per second. Between two 429s the service's bucket was
        empty at both ends, so what it admitted in between is its rate (less what it could
        not hold while the batch paused): measured since the latest 429 with ``MEASURED``
        creates after it, else since the first create (which also counts the service's
        initial burst: an upper bound)."""
        since, admitted = (now if self._started is None else self._started), 0
        for moment, count in reversed(self._limits):
            if self._admitted - count >= MEASURED:
                since, admitted = moment, count
                break
        elapsed = now - since
        return (self._admitted - admitted) / elapsed if elapsed > 0 else math.inf
