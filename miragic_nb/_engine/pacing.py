"""How fast a batch sends: how many jobs run at once, and how creates are spaced.

The **rate** (creates a second) is learned from what the service admits, never from a header
(see ``docs/servers.md``):

- **Before the first 429** creates are spaced at ``START_RATE``, and the rate grows by
  ``SLOW_START`` with every create answered with a job, so a small bucket is not flooded and
  a large one is found within a few creates.
- **On a 429** (no job made) the rate backs off multiplicatively, to ``BACKOFF`` times the
  rate it was at, and never above the rate the service admitted since an earlier 429:
  between two 429s its bucket was empty at both ends, so the creates it answered with a job
  in between, per second, *are* its rate. 429s for creates already on the wire when the rate
  was cut are the same signal, not new ones.
- **Probing** is additive: each create answered with a job adds ``PROBE`` of the rate set
  before the last back-off, so the rate climbs back, and finds a limit that was raised.
- **``Retry-After`` only pauses** every create until the moment it names (a precise
  ``X-RateLimit-Reset-After`` when the server sends one; one spacing when there is no
  header); it never sets the spacing. The tokens the service earned meanwhile are used when
  the pause ends: up to ``CATCH_UP`` creates, each sent as soon as the one before was
  answered (so a smaller bucket costs one 429, after which no catch-up is tried again).

**Concurrency** (jobs in flight) is only a cap: ``"auto"`` allows ``AUTO_CEILING`` jobs at
once and lets the rate do the pacing; a fixed number is a cap that never moves.

The clock is injected, so the whole controller can be driven by a simulated one.
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
SLOW_START = 1.15
#: The back-off factor on a 429, and the probe per create with a job (a share of the rate
#: before the last back-off).
BACKOFF = 0.8
PROBE = 0.005
#: Fewest creates with a job the admitted rate is measured over (one more or less is noise).
MEASURED = 3
#: Most creates sent after a pause, one after the other, for the tokens earned meanwhile.
CATCH_UP = 4
#: Longest wait for the answer to one create of a catch-up before the next goes anyway.
CATCH_UP_WAIT_S = 1.0
#: The pause after a 429 with no advice, in spacings.
BARE_PAUSE_SPACINGS = 1.0
#: Slowest the rate ever gets (one create a minute): the batch's deadline ends it anyway.
MIN_RATE = 1 / 60
#: Longest pause honoured from one header: the batch's deadline bounds it too.
MAX_PAUSE_S = 60.0


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

    def __init__(
        self, fixed: int | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fixed = fixed
        self.limit = fixed if fixed is not None else AUTO_CEILING
        self.ceiling = self.limit
        self.running = 0
        self.rate_limited = 0
        #: Creates a second (before the first 429: the slow start's).
        self.rate = START_RATE
        self._clock = clock
        self._condition = threading.Condition()
        self._slow_start = True
        #: The rate before the last back-off: the probe's step is a share of it.
        self._base = START_RATE
        #: The earliest moment of the next create, and the last create's moment.
        self._next = -math.inf
        self._last_turn = -math.inf
        #: A pause after a 429: since and until when (until -inf: none).
        self._paused_since = -math.inf
        self._paused_until = -math.inf
        #: Creates sent before this moment were on the wire when the rate was last cut.
        self._backed_off_at = -math.inf
        #: Creates answered with a job, and (moment, that count) at each back-off.
        self._admitted = 0
        self._back_offs: list[tuple[float, int]] = []
        #: The catch-up after a pause: creates it may still send, the moments of those it
        #: sent, whether one is waiting for its answer, and how many creates a catch-up may
        #: have (1 once one was answered 429: the service's bucket is smaller than that).
        self._catching_up = 0
        self._catch_up_sends: set[float] = set()
        self._awaiting = False
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

    # -- creates -----------------------------------------------------------------------------

    def before_create(
        self, stop: threading.Event | None = None, *, until: float = math.inf
    ) -> float | None:
        """Wait for this create's turn; the moment it may be sent (for ``throttled``), or None
        on ``stop`` or when its turn would come only after ``until`` (monotonic)."""
        with self._condition:
            while True:
                wait = self.turn()
                if wait <= 0:
                    return self._last_turn
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
            if self._awaiting and now < self._next + CATCH_UP_WAIT_S:
                return min(0.01, self._next + CATCH_UP_WAIT_S - now)
            self._awaiting = False
            if self._paused_until > -math.inf:
                # The first create after a pause: the service earned tokens meanwhile.
                paused = min(now - self._paused_since, MAX_PAUSE_S)
                self._catching_up = min(self._catch_up, max(1, int(paused * self.rate)))
                self._catch_up_sends = set()
                self._paused_until = -math.inf
            if self._catching_up > 0:
                self._catching_up -= 1
                self._catch_up_sends.add(now)
            if self._catching_up > 0:
                # The next one goes when this one is answered: a 429 then stops the catch-up
                # after one refusal, not after all of it.
                self._awaiting = True
                self._next = now
            else:
                self._next = now + 1 / self.rate
            self._last_turn = now
            return 0.0

    @property
    def last_turn(self) -> float:
        """The moment of the last create's turn."""
        return self._last_turn

    def created(self) -> None:
        """A create was answered with a job: the service keeps up; probe a little faster."""
        with self._condition:
            self._admitted += 1
            self._awaiting = False
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
            self._awaiting = False
            now = self._clock()
            if sent_at in self._catch_up_sends:
                self._catch_up = 1  # the service's bucket holds less than a catch-up
                self._catching_up = 0
            if sent_at < self._backed_off_at:
                return  # on the wire before the rate was cut: the same signal
            self._base = self.rate
            self.rate = max(MIN_RATE, min(BACKOFF * self.rate, self._admitted_rate(now)))
            self._slow_start = False
            self._backed_off_at = now
            self._back_offs.append((now, self._admitted))
            pause = BARE_PAUSE_SPACINGS / self.rate if retry_after is None else retry_after
            if self._paused_until == -math.inf:
                self._paused_since = now
            self._paused_until = max(self._paused_until, now + min(pause, MAX_PAUSE_S))
            self._condition.notify_all()

    def _admitted_rate(self, now: float) -> float:
        """Creates answered with a job per second since the latest 429 with ``MEASURED`` of
        them after it (infinite before there is one): between two 429s the service's bucket
        was empty at both ends, so that is its rate (less what its bucket could not hold
        while the batch paused or went slower)."""
        for moment, count in reversed(self._back_offs):
            if self._admitted - count >= MEASURED:
                return (self._admitted - count) / max(now - moment, 1e-3)
        return math.inf
