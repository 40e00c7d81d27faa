"""A local emulator of the Miragic image API, for notebooks, tests and demos without a key.

It serves the reference's wire format on real loopback sockets::

    from miragic_nb.emulator import Emulator, Fault

    with Emulator(api_key="test-key", job_seconds=0.5) as emu:
        ...  # point a client at emu.url with key emu.api_key
        emu.faults.push("status", Fault.http(503), times=2)  # two proxy error pages
        emu.count("GET", "/api/v1/image/jobs/")              # status polls received

``python -m miragic_nb.emulator --port 8787`` runs it from a shell. The fault-injection API is
documented in :mod:`miragic_nb.emulator.faults` and ``docs/emulator.md``.
"""

from __future__ import annotations

from .faults import Fault, Faults
from .jobs import EmulatedJob
from .recording import RecordedRequest
from .render import render_image
from .server import Emulator, SecondOrigin

__all__ = [
    "EmulatedJob",
    "Emulator",
    "Fault",
    "Faults",
    "RecordedRequest",
    "SecondOrigin",
    "render_image",
]
