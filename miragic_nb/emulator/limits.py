"""Rate limits for the emulator: one token bucket per endpoint kind, off by default.

A bucket holds at most ``burst`` tokens and gains ``per_second`` tokens a second. Each request
of its kind takes one; a request that finds less than one token is refused (the emulator
answers 429) and takes nothing, so refused requests do not push the next token further away.
The bucket is pure arithmetic over a clock it is given (``time.monotonic`` by default), so it
can be tested with a fake clock::

    emu.limits.create = RateLimit(per_second=4, burst=4)   # 4 creates at once, then 4/s
    emu.limits.clear()                                     # no limits again

Kinds: ``"create"`` (``POST /api/v1/image/generate``), ``"status"``
(``GET /api/v1/image/jobs/<id>``) and ``"download"`` (every request for a result file, on
either origin, redirect hops included).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["LIMIT_KINDS", "RateLimit", "RateLimits", "TokenBucket"]

LIMIT_KINDS: tuple[str, ...] = ("create", "status", "download")

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimit:
    """``per_second`` tokens a second, at most ``burst`` at once."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        rate = self.per_second
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
            raise ValueError(f"per_second must be a positive finite number, not {rate!r}")
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 1:
            raise ValueError(f"burst must be a positive int, not {self.burst!r}")


class TokenBucket:
    """A token bucket over an injected monotonic clock; thread-safe. It starts full."""

    def __init__(self, limit: RateLimit, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(limit.burst)
        self._updated = clock()

    def take(self) -> float:
        """Take one token: 0.0 if taken, else the seconds until one will be there (none taken)."""
        with self._lock:
            now = self._clock()
            # max(): a clock that stepped back must not drain the bucket.
            earned = max(0.0, now - self._updated) * self.limit.per_second
            self._tokens = min(float(self.limit.burst), self._tokens + earned)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.limit.per_second

    @property
    def tokens(self) -> float:
        """Tokens in the bucket right now (fractional)."""
        with self._lock:
            earned = max(0.0, self._clock() - self._updated) * self.limit.per_second
            return min(float(self.limit.burst), self._tokens + earned)


class RateLimits:
    """The emulator's limits per kind: ``create``, ``status``, ``download`` (``None``: unlimited).

    Assigning a :class:`RateLimit` to a kind starts a new, full bucket for it; assigning
    ``None`` (or calling :meth:`clear`) lifts the limit. Changes apply to the next request,
    from any thread.
    """

    __slots__ = ("_buckets", "_clock", "_lock")

    create: RateLimit | None
    status: RateLimit | None
    download: RateLimit | None
    _buckets: dict[str, TokenBucket]
    _clock: Clock
    _lock: threading.Lock

    def __init__(
        self, limits: Mapping[str, RateLimit] | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        object.__setattr__(self, "_clock", clock)
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_buckets", {})
        self.configure(**(limits or {}))

    def __getattr__(self, name: str) -> RateLimit | None:
        if name not in LIMIT_KINDS:
            raise AttributeError(f"RateLimits has no kind {name!r}; kinds: {LIMIT_KINDS!r}")
        with self._lock:
            bucket = self._buckets.get(name)
        return None if bucket is None else bucket.limit

    def __setattr__(self, name: str, value: object) -> None:
        if name not in LIMIT_KINDS:
            raise AttributeError(f"RateLimits has no kind {name!r}; kinds: {LIMIT_KINDS!r}")
        if value is not None and not isinstance(value, RateLimit):
            raise TypeError(f"{name} must be a RateLimit or None, not {value!r}")
        with self._lock:
            if value is None:
                self._buckets.pop(name, None)
            else:
                self._buckets[name] = TokenBucket(value, self._clock)

    def configure(self, **limits: RateLimit | None) -> None:
        """Set several kinds at once, e.g. ``configure(create=RateLimit(4), status=None)``."""
        for name, value in limits.items():
            setattr(self, name, value)

    def clear(self) -> None:
        """Lift every limit."""
        with self._lock:
            self._buckets.clear()

    def take(self, kind: str) -> float:
        """A token for a request of ``kind``: 0.0 if admitted, else seconds until one is there."""
        with self._lock:
            bucket = self._buckets.get(kind)
        return 0.0 if bucket is None else bucket.take()

    def settings(self) -> dict[str, RateLimit]:
        """The limited kinds and their limits (a snapshot)."""
        with self._lock:
            return {name: bucket.limit for name, bucket in self._buckets.items()}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"RateLimits({inner})"
