"""miragic-nb: the Miragic image-generation API in Jupyter.

``%load_ext miragic_nb`` gives the ``%%miragic`` magic; ``miragic_nb.Client`` and
``miragic_nb.generate`` are the plain Python API. Importing this package is cheap: requests,
Pillow and ipywidgets load only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from miragic_nb._core.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BudgetExceededError,
    DownloadError,
    HistoryCorruptError,
    HistoryError,
    HistoryTooNewError,
    InvalidRequestError,
    JobFailedError,
    JobTimeoutError,
    MiragicError,
    MissingAPIKeyError,
    RateLimitError,
    UncertainJobError,
)

# Bound eagerly: once the submodule is imported anywhere, Python would otherwise set the package
# attribute ``history`` to the module, and ``miragic_nb.history()`` would stop being callable.
from miragic_nb._store.history import History, history

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from miragic_nb._core.images import GeneratedImage
    from miragic_nb._core.jobs import Job
    from miragic_nb._core.request import GenerationRequest
    from miragic_nb._core.states import JobState
    from miragic_nb._engine.batch import BatchCounts, BatchResult, Plan
    from miragic_nb._engine.image_inputs import set_uploader
    from miragic_nb._panel.panel import Panel
    from miragic_nb.client import Client

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "BatchCounts",
    "BatchResult",
    "BudgetExceededError",
    "Client",
    "DownloadError",
    "GeneratedImage",
    "GenerationRequest",
    "History",
    "HistoryCorruptError",
    "HistoryError",
    "HistoryTooNewError",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "JobState",
    "JobTimeoutError",
    "MiragicError",
    "MissingAPIKeyError",
    "Panel",
    "Plan",
    "RateLimitError",
    "UncertainJobError",
    "default_client",
    "generate",
    "history",
    "set_uploader",
]

# Public names that live in modules with heavy imports, loaded on first attribute access.
_LAZY = {
    "Client": "client",
    "GeneratedImage": "_core.images",
    "Job": "_core.jobs",
    "GenerationRequest": "_core.request",
    "Panel": "_panel.panel",
    "set_uploader": "_engine.image_inputs",
    "JobState": "_core.states",
    "BatchResult": "_engine.batch",
    "BatchCounts": "_engine.batch",
    "Plan": "_engine.batch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'miragic_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def default_client() -> Client:
    """The client ``generate`` uses: the session's, from the loaded extension's settings or the
    environment (the built-in emulator when no key and no base URL are set)."""
    from miragic_nb.session import default_client as session_client

    return session_client()


def generate(prompt: str, **options: Any) -> GeneratedImage:
    """Generate one image with the default client; see ``Client.generate`` for the options."""
    return default_client().generate(prompt, **options)


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext miragic_nb``: register ``%%miragic`` and ``%miragic``."""
    from miragic_nb._magic.magic import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    from miragic_nb._magic.magic import unload_ipython_extension as unload

    unload(ipython)
