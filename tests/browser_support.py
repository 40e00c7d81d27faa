"""Helpers for the browser tests: a Jupyter server on loopback and headless Chromium.

Facts these rely on, checked on the CI machines: a browser downloaded by a test tool cannot run
there, so Playwright drives Debian's Chromium (``/usr/bin/chromium``). With no network, Chromium
needs ``--disable-background-networking --disable-component-update --disable-sync`` to stay
quiet, and as root ``--no-sandbox``; ``jupyter lab`` as root needs ``--allow-root``. The server is
ready when ``/api/status?token=...`` answers (poll it rather than sleeping), and a notebook opens
without a kernel dialog only when it names its kernelspec.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("MIRAGIC_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
#: JupyterLab settings for a quiet, deterministic page: every cell attached to the DOM (no
#: windowing), and no "fetch Jupyter news?" toast over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


@dataclass(frozen=True)
class JupyterServer:
    """A running ``jupyter lab`` or ``jupyter notebook`` server."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def page_url(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_notebook(path: Path, cells: list[str]) -> Path:
    """A small notebook of code cells, with the kernelspec (else Lab asks for a kernel)."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = dict(KERNELSPEC)
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, path)
    return path


def jupyter_environment(base: Mapping[str, str], home: Path) -> dict[str, str]:
    """``base`` plus private Jupyter config/settings/runtime dirs under ``home``.

    The developer's own Jupyter settings, workspaces and server config must not change what
    the page looks like, and the settings above must apply.
    """
    settings = home / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        target = settings / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values), encoding="utf-8")
    env = dict(base)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    return env


@contextmanager
def jupyter_server(
    app: str, root: Path, env: Mapping[str, str], log_dir: Path, *, ready_within: float = 90.0
) -> Iterator[JupyterServer]:
    """Start ``jupyter <app>`` on loopback and stop it (by pid) when done, whatever happens."""
    port, token = free_port(), secrets.token_hex(16)
    log = log_dir / f"jupyter-{app}.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab" if app == "lab" else "notebook",
        "--allow-root",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its kernels go in its process group
        )
    server = JupyterServer(f"http://127.0.0.1:{port}", token, root, process, log)
    try:
        _wait_until_ready(server, ready_within)
        yield server
    finally:
        _stop(process)


def _wait_until_ready(server: JupyterServer, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"jupyter exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.page_url("api/status"), timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"jupyter did not answer /api/status within {limit:g}s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (the server and its kernels), then SIGKILL."""
    if process.poll() is not None:
        return
    group = os.getpgid(process.pid)
    os.killpg(group, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        process.wait(timeout=5)


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless; a browser that cannot start fails the test, clearly."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium); "
            "the browser tests cannot use a downloaded browser here"
        )
    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    except Exception as exc:  # Playwright raises its own Error with the browser's output
        pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}")


def image_count(scope: Any, selector: str = ".jp-OutputArea-output img") -> int:
    """How many images under ``scope`` (a page or locator) have loaded with a non-zero size."""
    count: int = scope.locator(selector).evaluate_all(
        "images => images.filter(i => i.complete && i.naturalWidth > 0).length"
    )
    return count


def wait_for(page: Any, script: str, *, timeout_ms: float, arg: Any = None) -> None:
    """Wait until the JavaScript expression ``script`` is truthy in the page."""
    page.wait_for_function(script, arg=arg, timeout=timeout_ms)
