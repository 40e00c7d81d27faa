"""Shared fixtures: an emulator on loopback, a client pointed at it, and a clean environment."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from miragic_nb._core.polling import PollSchedule
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator
from tests import guarantee_breaks

# A suite started in the background by a non-interactive shell (`cmd &`, as some CI runners do)
# inherits SIGINT ignored, and so would every Python it starts. The interrupt tests need Ctrl-C
# to behave as in a terminal: give this process Python's own handler, which exec resets to the
# default for the children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    guarantee_breaks.apply_from_environment()  # MIRAGIC_BREAK: see tests/prove_guarantees.py


#: A poll schedule for tests: dense polling, so short jobs finish fast.
FAST_POLLS = PollSchedule(initial_delay=0.02, growth=1.3, max_delay=0.2, min_delay=0.01)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's key, base URL or history."""
    for name in ("MIRAGIC_API_KEY", "MIRAGIC_BASE_URL", "MIRAGIC_OFFLINE_FALLBACK"):
        monkeypatch.delenv(name, raising=False)
    # Loopback traffic must never go through a proxy from the environment.
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("MIRAGIC_HOME", str(tmp_path / "miragic-home"))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(api_key="test-key-0123456789", job_seconds=0.3) as emu:
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> Iterator[Client]:
    with Client(
        api_key=emulator.api_key, base_url=emulator.url, poll_schedule=FAST_POLLS, timeout=20
    ) as c:
        yield c


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A plain requests session, for speaking to the emulator without the client."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def eventually(condition: Callable[[], bool], limit: float = 5.0) -> bool:
    """Poll a condition the server reaches asynchronously (not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium, one per test module (the browser tests only)."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
