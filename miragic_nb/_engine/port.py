"""The engine's port to the API: what it needs of whatever speaks to Miragic.

``miragic_nb._api.MiragicAPI`` implements it over HTTP; tests of the engine may pass anything
with these members. The engine never imports the API layer, only this description of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from miragic_nb._core.jobs import Job
from miragic_nb._core.request import GenerationRequest


class APIPort(Protocol):
    """Create, read, wait for and download one job."""

    @property
    def base_url(self) -> str:
        """The API's origin: part of how results are recorded and reused."""
        ...

    @property
    def timeout(self) -> float:
        """Default seconds a whole job may take."""
        ...

    @property
    def max_pixels(self) -> int:
        """Largest decoded image accepted."""
        ...

    def create(self, request: GenerationRequest) -> Job:
        """Send the request once; the new job (it costs a credit)."""
        ...

    def get_job(self, job_id: str) -> Job:
        """One status read."""
        ...

    def wait(
        self,
        job_or_id: Job | str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Job:
        """Poll until the job is completed (raises when it failed or the wait ended)."""
        ...

    def download(self, job: Job, *, cancel: threading.Event | None = None) -> tuple[bytes, Job]:
        """The completed job's image bytes, with the job they came from."""
        ...

    def result_url_refused(self, url: str) -> bool:
        """True when a result URL has expired or is gone."""
        ...
