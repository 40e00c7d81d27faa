"""A local emulator of the Miragic image API, for notebooks, tests and demos without a key.

It serves the reference's wire format on real loopback sockets::

    from miragic_nb.emulator import Emulator, Fault, RateLimit

    with Emulator(api_key="test-key", job_seconds=0.5) as emu:
        ...  # point a client at emu.url with key emu.api_key
        emu.faults.push("status", Fault.http(503), times=2)  # two proxy error pages
        emu.count("GET", "/api/v1/image/jobs/")              # status polls received
        emu.limits.create = RateLimit(per_second=4, burst=4)  # 429 beyond 4 creates/s
        emu.workers = 2                                       # two jobs in service at once

``python -m miragic_nb.emulator --port 8787`` runs it from a shell. Fault injection,
rate limits and the queue model are documented in :mod:`miragic_nb.emulator.faults`,
:mod:`~miragic_nb.emulator.limits`, :mod:`~miragic_nb.emulator.queueing` and
``docs/emulator.md``.
"""

from __future__ import annotations

from .faults import Fault, Faults
from .jobs import EmulatedJob
from .limits import RateLimit, RateLimits
from .recording import RecordedRequest
from .render import render_image
from .server import Emulator, SecondOrigin

__all__ = [
    "EmulatedJob",
    "Emulator",
    "Fault",
    "Faults",
    "RateLimit",
    "RateLimits",
    "RecordedRequest",
    "SecondOrigin",
    "render_image",
]
