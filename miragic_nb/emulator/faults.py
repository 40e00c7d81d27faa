"""Fault injection for the emulator: one object, two kinds of knobs.

**Settings** are plain attributes of :class:`Faults`, read on every request or job creation,
changeable at any time from a test (``emu.faults.failure_rate = 0.5``). Unknown attribute names
raise ``AttributeError``, so a typo cannot silently do nothing. Job-level settings are read
when a job is *created*; response-shaping settings when a status or result is *served*.

=====================  =====================================================================
``failure_rate``       probability (0-1) that a new job ends ``FAILED``
``force_failure``      every new job ends ``FAILED``
``failure_match``      if set, the two above apply only to prompts containing this substring
                       (case-insensitive)
``failure_message``    the job's ``errorMessage`` when it fails
``never_finish``       new jobs stay ``PENDING`` forever (progress stops at 99)
``pending_status``     the status string reported while a job runs (``"PROCESSING"`` to test
                       unknown values)
``lowercase_status``   report statuses lowercased (``"completed"``)
``progress``           ``"int"`` (default), ``"float"`` (``42.5``), ``"string"`` (``"42"``) or
                       ``"missing"`` (no ``progress`` key, like the reference's own example)
``result_url``         where the record points: ``"absolute"`` (default, the main origin),
                       ``"relative"`` (a path without host), ``"second_origin"`` (the
                       emulator's second server) or ``"link_only"`` (``imageUrl`` and
                       ``processedImageUrl`` null, only ``metadata.apiResponse.link`` set,
                       on the second origin)
``result_redirects``   number of redirects (0 = none) between the record's URL and the bytes;
                       the first hop of a main-origin URL goes to the second origin
``redirect_status``    301, 302 (default), 303, 307 or 308
``url_ttl``            seconds; if set, result URLs are signed with an expiry
                       (``?expires=<ms>&signature=<hex>``) and an expired or unsigned URL
                       answers 403; each status read mints a fresh URL
=====================  =====================================================================

**One-shot faults** are :class:`Fault` values queued per route with :meth:`Faults.push`; each
matching request consumes one (``times=None`` keeps it forever, until :meth:`Faults.clear`).
Routes: ``"create"`` (``POST /api/v1/image/generate``), ``"status"``
(``GET /api/v1/image/jobs/<id>``), ``"download"`` (the response that carries a result file's
bytes, on either origin; redirect hops are never faulted) and ``"*"`` (any of them; a
route's own queue is tried first)::

    emu.faults.push("create", Fault.rate_limited(2), times=3)         # 429 burst, Retry-After: 2
    emu.faults.push("status", Fault.rate_limited(2, http_date=True))  # Retry-After as HTTP-date
    emu.faults.push("*", Fault.http(503), times=2)                    # proxy HTML error page
    emu.faults.push("status", Fault.slow(5.0))                        # answer after 5 s
    emu.faults.push("download", Fault.reset())                        # RST mid-body
    emu.faults.push("status", Fault.malformed_json())                 # 200, broken JSON
    emu.faults.push("create", Fault.unsuccessful("Insufficient credits"))  # 200 success:false
    emu.faults.push("download", Fault.truncated())                    # short body
    emu.faults.push("download", Fault.not_image())                    # 200 text/html
    emu.faults.push("download", Fault.wrong_size())                   # other size than asked
    emu.faults.push("download", Fault.bomb())                         # 40000x40000 PNG header

What happens to the request behind a fault: ``http``, ``rate_limited``, ``malformed_json``,
``unsuccessful`` and ``not_image`` answer *instead of* the application (a faulted create makes
no job). ``slow``, ``reset`` and ``truncated`` wrap the normal answer, so a faulted create
*does* make a job -- the case where a client must not retry the POST.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ROUTES", "TOO_MANY_REQUESTS", "Fault", "FaultKind", "Faults"]

#: The ``message`` of a 429 answer, injected or from the emulator's own rate limits.
TOO_MANY_REQUESTS = "Too many requests, please try again later."

FaultKind = Literal[
    "http",
    "slow",
    "reset",
    "truncated",
    "malformed_json",
    "unsuccessful",
    "not_image",
    "wrong_size",
    "bomb",
]
Route = Literal["create", "status", "download", "*"]
ROUTES: tuple[str, ...] = ("create", "status", "download", "*")

_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def proxy_error_page(status: int) -> bytes:
    """An nginx-style HTML error page, padded like nginx pads its own."""
    title = f"{status} {_REASONS.get(status, 'Error')}"
    padding = "<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        f"</body>\r\n</html>\r\n{padding}"
    ).encode()


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour. Build it with a class method, e.g. ``Fault.http(503)``."""

    kind: FaultKind
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    #: For ``reset``/``truncated``: the fraction of the body sent before the cut.
    fraction: float = 0.5
    #: For ``wrong_size``/``bomb``: the size of the image served (``None``: derived).
    width: int | None = None
    height: int | None = None
    image_format: str = "png"
    #: For ``rate_limited``: ``Retry-After`` is computed when served (HTTP-date form needs now).
    retry_after: float | None = None
    retry_after_http_date: bool = False

    @classmethod
    def http(
        cls,
        status: int,
        *,
        html: bool = True,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Answer ``status`` with a proxy's HTML error page (or ``body``, or a JSON error)."""
        if body is not None:
            data = body.encode() if isinstance(body, str) else body
            ctype = "text/html" if html else "application/json; charset=utf-8"
        elif html:
            data, ctype = proxy_error_page(status), "text/html"
        else:
            message = _REASONS.get(status, "Error")
            data = json.dumps({"success": False, "message": message}).encode()
            ctype = "application/json; charset=utf-8"
        return cls("http", status, data, ctype, tuple((headers or {}).items()))

    @classmethod
    def rate_limited(
        cls, retry_after: float | None = 1, *, http_date: bool = False, status: int = 429
    ) -> Fault:
        """429 with ``Retry-After`` in seconds, or as an HTTP-date that many seconds ahead."""
        body = json.dumps({"success": False, "message": TOO_MANY_REQUESTS}).encode()
        return cls(
            "http",
            status,
            body,
            retry_after=retry_after,
            retry_after_http_date=http_date,
        )

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before answering normally (provokes client read timeouts)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def reset(cls, fraction: float = 0.5) -> Fault:
        """Send the headers and ``fraction`` of the normal body, then abort with a TCP RST."""
        return cls("reset", fraction=fraction)

    @classmethod
    def truncated(cls, fraction: float = 0.5) -> Fault:
        """Declare the full ``Content-Length``, send ``fraction`` of the body, then close."""
        return cls("truncated", fraction=fraction)

    @classmethod
    def malformed_json(cls, status: int = 200) -> Fault:
        """A JSON content type with a body that is not valid JSON."""
        return cls("malformed_json", status, b'{"success":true,"data":{"jobId":"')

    @classmethod
    def unsuccessful(cls, message: str = "Internal processing error", status: int = 200) -> Fault:
        """A well-formed ``{"success": false, "message": ...}`` body, by default with 200."""
        body = json.dumps({"success": False, "message": message}).encode()
        return cls("unsuccessful", status, body)

    @classmethod
    def not_image(cls, status: int = 200) -> Fault:
        """An HTML page where an image was expected (e.g. a login or interstitial page)."""
        body = (
            b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
            b"<body><h1>Please sign in to continue</h1></body></html>"
        )
        return cls("not_image", status, body, "text/html; charset=utf-8")

    @classmethod
    def wrong_size(cls, width: int | None = None, height: int | None = None) -> Fault:
        """A valid JPEG of another size (default: half the requested size, at least 64 px)."""
        return cls("wrong_size", width=width, height=height)

    @classmethod
    def bomb(cls, width: int = 40_000, height: int = 40_000, fmt: str = "png") -> Fault:
        """A tiny ``fmt`` (``"png"``/``"jpeg"``) file declaring ``width`` x ``height`` pixels."""
        return cls("bomb", width=width, height=height, image_format=fmt)

    def response_headers(self, now: float | None = None) -> list[tuple[str, str]]:
        """The extra headers to send (``Retry-After`` is computed here, at serving time)."""
        extra = list(self.headers)
        if self.retry_after is not None:
            if self.retry_after_http_date:
                when = (time.time() if now is None else now) + self.retry_after
                extra.append(("Retry-After", email.utils.formatdate(when, usegmt=True)))
            else:
                extra.append(("Retry-After", f"{self.retry_after:g}"))
        return extra


@dataclass
class _Queued:
    fault: Fault
    remaining: int | None  # None: forever


_DEFAULTS: dict[str, Any] = {
    "failure_rate": 0.0,
    "force_failure": False,
    "failure_match": None,
    "failure_message": "Image generation failed: the model returned an error",
    "never_finish": False,
    "pending_status": "PENDING",
    "lowercase_status": False,
    "progress": "int",
    "result_url": "absolute",
    "result_redirects": 0,
    "redirect_status": 302,
    "url_ttl": None,
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "progress": ("int", "float", "string", "missing"),
    "result_url": ("absolute", "relative", "second_origin", "link_only"),
    "redirect_status": (301, 302, 303, 307, 308),
}


@dataclass
class _Queues:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_route: dict[str, list[_Queued]] = field(default_factory=dict)


class Faults:
    """The emulator's fault configuration; see the module docstring for every knob.

    ``Faults(failure_rate=0.2, progress="string")`` sets settings at construction; they can be
    changed later by plain assignment or several at once with :meth:`configure`.
    """

    __slots__ = ("_queues", *_DEFAULTS)

    failure_rate: float
    force_failure: bool
    failure_match: str | None
    failure_message: str
    never_finish: bool
    pending_status: str
    lowercase_status: bool
    progress: Literal["int", "float", "string", "missing"]
    result_url: Literal["absolute", "relative", "second_origin", "link_only"]
    result_redirects: int
    redirect_status: int
    url_ttl: float | None

    def __init__(self, **settings: Any) -> None:
        self._queues = _Queues()
        for name, value in _DEFAULTS.items():
            object.__setattr__(self, name, value)
        self.configure(**settings)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {_CHOICES[name]!r}, not {value!r}")
        if name == "failure_rate" and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, not {value!r}")
        if name == "result_redirects" and (not isinstance(value, int) or value < 0):
            raise ValueError(f"result_redirects must be a non-negative int, not {value!r}")
        object.__setattr__(self, name, value)

    def configure(self, **settings: Any) -> None:
        """Set several settings at once (each validated as by plain assignment)."""
        for name, value in settings.items():
            if name not in _DEFAULTS:
                raise AttributeError(f"Faults has no setting {name!r}")
            setattr(self, name, value)

    def push(self, route: Route | str, fault: Fault, *, times: int | None = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests to ``route`` (``None``: forever)."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES!r}, not {route!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for a permanent fault")
        with self._queues.lock:
            self._queues.by_route.setdefault(route, []).append(_Queued(fault, times))

    def take(self, route: str) -> Fault | None:
        """Consume and return the next fault for ``route`` (its own queue first, then ``*``)."""
        with self._queues.lock:
            for name in (route, "*"):
                queue = self._queues.by_route.get(name)
                if not queue:
                    continue
                entry = queue[0]
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        queue.pop(0)
                return entry.fault
        return None

    def pending(self, route: str | None = None) -> int:
        """How many one-shot faults are still queued (for ``route``, or all); -1 if permanent."""
        with self._queues.lock:
            entries = [
                e
                for name, queue in self._queues.by_route.items()
                if route is None or name == route
                for e in queue
            ]
        if any(e.remaining is None for e in entries):
            return -1
        return sum(e.remaining or 0 for e in entries)

    def clear(self, route: str | None = None) -> None:
        """Drop queued faults for ``route`` (or for every route)."""
        with self._queues.lock:
            if route is None:
                self._queues.by_route.clear()
            else:
                self._queues.by_route.pop(route, None)

    def reset(self) -> None:
        """Restore every setting to its default and drop all queued faults."""
        self.clear()
        for name, value in _DEFAULTS.items():
            object.__setattr__(self, name, value)

    def settings(self) -> dict[str, Any]:
        """The current settings as a dict (a snapshot)."""
        return {name: getattr(self, name) for name in _DEFAULTS}

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.settings().items() if v != _DEFAULTS[k]}
        inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"Faults({inner})"
