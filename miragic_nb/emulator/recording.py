"""A thread-safe record of every request an emulator origin received."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Headers", "RecordedRequest", "RequestLog"]


class Headers(dict[str, str]):
    """A plain ``dict`` of request headers whose lookups ignore case.

    Keys keep the spelling Werkzeug gives them (``X-Api-Key``); ``"X-API-Key" in headers``
    and ``headers["x-api-key"]`` work too, so an assertion about absence cannot pass
    because of spelling.
    """

    def _key(self, name: object) -> object:
        if isinstance(name, str):
            lowered = name.lower()
            for key in dict.keys(self):
                if key.lower() == lowered:
                    return key
        return name

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, self._key(name))

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, str(self._key(name)))

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, str(self._key(name)), default)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as an origin saw it, with the status it answered."""

    origin: str
    """``"main"`` (the API) or ``"second"`` (the second origin serving result files)."""
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    form: dict[str, str]
    status: int
    """The HTTP status sent (for ``reset``/``truncated`` faults, the one in the cut response)."""
    timestamp: float
    """``time.time()`` when the request arrived."""
    job_id: str | None = None
    fault: str | None = None
    """The kind of injected fault that shaped the answer, if any."""
    client_port: int = 0
    """The client's TCP port: equal ports on consecutive requests mean a reused connection."""
    kind: str | None = None
    """The rate-limit kind of the request: ``"create"``, ``"status"``, ``"download"`` or None."""
    throttled: bool = False
    """Whether the emulator's own rate limit answered it with 429 (injected 429s are faults)."""


class RequestLog:
    """An append-only, lock-protected list of :class:`RecordedRequest`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def append(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self, origin: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            items = list(self._items)
        return [r for r in items if origin is None or r.origin == origin]

    def clear(self, origin: str | None = None) -> None:
        with self._lock:
            self._items = [r for r in self._items if origin is not None and r.origin != origin]

    def count(
        self,
        method: str | None = None,
        path_prefix: str = "",
        *,
        job_id: str | None = None,
        origin: str | None = None,
        status: int | None = None,
        kind: str | None = None,
        throttled: bool | None = None,
    ) -> int:
        """How many recorded requests match every given criterion."""
        return sum(
            1
            for r in self.snapshot(origin)
            if (method is None or r.method == method.upper())
            and r.path.startswith(path_prefix)
            and (job_id is None or r.job_id == job_id)
            and (status is None or r.status == status)
            and (kind is None or r.kind == kind)
            and (throttled is None or r.throttled == throttled)
        )
