"""Shared fixtures: an emulator on loopback, a client pointed at it, and a clean environment.

Before anything else, the whole session is moved into a private home (see ``_sandbox``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

#: Where a run keeps every per-user folder; xdist workers inherit it and take a subfolder.
SANDBOX_VARIABLE = "MIRAGIC_TEST_SANDBOX"

#: Every per-user folder a test or what it starts (kernels, ``jupyter lab``/``notebook``,
#: Voilà, Chromium, npm) would otherwise write in the developer's home, and where it goes.
#: IPython's history (IPYTHONDIR), Jupyter's notebook trust database, secret and "migrated"
#: mark (JUPYTER_*), Chromium's profile (XDG_CONFIG_HOME), dconf's cache (XDG_RUNTIME_DIR,
#: else XDG_CACHE_HOME), npm's cache and logs (npm_config_cache); HOME catches the rest.
#: Whatever JUPYTER_PLATFORM_DIRS says, Jupyter's folders are the JUPYTER_* or XDG ones here.
SANDBOXED = {
    "HOME": "home",
    "IPYTHONDIR": "ipython",
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "XDG_CONFIG_HOME": "xdg/config",
    "XDG_DATA_HOME": "xdg/data",
    "XDG_CACHE_HOME": "xdg/cache",
    "XDG_STATE_HOME": "xdg/state",
    "XDG_RUNTIME_DIR": "xdg/runtime",
    "npm_config_cache": "npm/cache",
    "npm_config_logs_dir": "npm/logs",
    "MPLCONFIGDIR": "matplotlib",
}


def _sandbox() -> Path:
    """Point every per-user folder of this process (and all it starts) into a temporary one.

    Runs at import of this conftest: before any test module imports IPython or Jupyter, and,
    in the xdist controller, before the workers are spawned (they inherit the variables and
    each takes its own subfolder). The controller removes the whole tree when it exits.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = os.environ.get(SANDBOX_VARIABLE)
    if worker and shared:
        root = Path(shared) / worker
    else:
        root = Path(tempfile.mkdtemp(prefix="miragic-tests-"))
        os.environ[SANDBOX_VARIABLE] = str(root)
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    for variable, folder in SANDBOXED.items():
        path = root / folder
        path.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(path)
    (root / "xdg/runtime").chmod(0o700)  # the XDG spec: owned by the user, mode 0700
    return root


SANDBOX = _sandbox()

import signal  # noqa: E402 (the sandbox is in place first)
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import requests  # noqa: E402

from miragic_nb._core.polling import PollSchedule  # noqa: E402
from miragic_nb.client import Client  # noqa: E402
from miragic_nb.emulator import Emulator  # noqa: E402
from tests import guarantee_breaks  # noqa: E402

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
def clean_environment(monkeypatch: pytest.MonkeyPatch, miragic_home: Path) -> None:
    """No test sees the developer's key, base URL or history (the history is the one the
    package's pytest plugin gives its client: ``miragic_home``, inside ``tmp_path``)."""
    for name in ("MIRAGIC_API_KEY", "MIRAGIC_BASE_URL", "MIRAGIC_OFFLINE_FALLBACK"):
        monkeypatch.delenv(name, raising=False)
    # Loopback traffic must never go through a proxy from the environment.
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("MIRAGIC_HOME", str(miragic_home))


# The suite uses the fixtures the package ships to its users (miragic_nb.pytest_plugin) under
# the short names its tests were written with: what users get is what the suite exercises.
@pytest.fixture
def emulator(miragic_emulator: Emulator) -> Emulator:
    """The plugin's emulator, its jobs a little longer: long enough to be seen running."""
    miragic_emulator.job_seconds = 0.3
    return miragic_emulator


@pytest.fixture
def client(miragic_client: Client) -> Client:
    """The plugin's client: bound to ``emulator``, polling densely, history in ``miragic_home``."""
    return miragic_client


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


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (it does so in this hook too)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests run one after another on one xdist worker (``--dist loadgroup``).

    Each starts a Jupyter server, a kernel and Chromium: two at once on a small machine starve
    each other into timeouts, while the other workers run the rest of the suite.
    """
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.xdist_group("browser"))
