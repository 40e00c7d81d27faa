"""``python -m miragic_nb app`` in headless Chromium: the panel as a page served by Voilà.

The command runs as a user would start it (a subprocess, in its own process group), with no
``MIRAGIC_API_KEY`` (the built-in emulator) or with a key for an emulator started here. The
page is driven like a person would: type a prompt, Generate, see the image, Save.

The screenshot goes to the test's temporary directory; with ``MIRAGIC_UPDATE_SCREENSHOTS=1``
it also replaces ``docs/screenshot-app.png``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from miragic_nb._store.history import read_embedded_metadata
from miragic_nb.emulator import Emulator
from tests.browser_support import _stop, free_port, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
SECRET_KEY = "sk-app-test-0d9e4c2b7a1f5e83"
#: Seconds for the command to print its URL and for Voilà to answer.
START_S = 60.0
#: Milliseconds for the page (kernel start, the panel) and for one job.
PAGE_MS = 90_000
JOB_MS = 60_000


@dataclass(frozen=True)
class RunningApp:
    url: str
    printed: str
    save_dir: Path
    #: The server's process (``python -m miragic_nb app``); Voilà's kernels are its children.
    process: subprocess.Popen[bytes]


@contextmanager
def running_app(env: Mapping[str, str], work: Path) -> Iterator[RunningApp]:
    """``python -m miragic_nb app`` on a free port; stopped (by process group) afterwards."""
    save_dir = work / "saves"
    save_dir.mkdir()
    log = work / "app.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "miragic_nb", "app", "--port", str(free_port())],
            cwd=save_dir,
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Voilà's kernels go in its process group
        )
    try:
        yield _wait_until_served(process, log, save_dir)
    finally:
        _stop(process)


def _wait_until_served(process: subprocess.Popen[bytes], log: Path, save_dir: Path) -> RunningApp:
    deadline = time.monotonic() + START_S
    with requests.Session() as http:
        http.trust_env = False  # loopback, never through a proxy
        while time.monotonic() < deadline:
            printed = log.read_text(encoding="utf-8", errors="replace")
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{printed[-3000:]}")
            found = re.search(r"Miragic panel: (\S+)", printed)
            if found:
                # Any answer will do; the page itself would start a kernel per request.
                try:
                    http.get(found.group(1).split("?")[0], timeout=2, allow_redirects=False)
                except requests.ConnectionError:
                    pass
                else:
                    return RunningApp(found.group(1), printed, save_dir, process)
            time.sleep(0.3)
    pytest.fail(f"the app did not serve within {START_S:g}s:\n{log.read_text()[-3000:]}")


def app_environment(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAGIC_")}
    env.update(
        MIRAGIC_HOME=str(home),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        **extra,
    )
    return env


def generate_and_save(browser: Any, app: RunningApp, prompt: str, shot: Path) -> str:
    """Drive the page; returns its HTML after the Save."""
    context = browser.new_context(viewport={"width": 1000, "height": 1000})
    try:
        page = context.new_page()
        page.goto(app.url)
        page.locator(".widget-textarea textarea").wait_for(timeout=PAGE_MS)
        for label, value in (("Width", "512"), ("Height", "384")):
            row = page.locator(".widget-inline-hbox").filter(
                has=page.locator("label.widget-label", has_text=label)
            )
            row.locator("input").fill(value)
        page.locator(".widget-textarea textarea").fill(prompt)
        page.click(".widget-button:has-text('Generate')")
        wait_for(page, "() => document.querySelector('.progress-bar-success')", timeout_ms=JOB_MS)
        # The result shown large and its thumbnail, both decoded by the browser.
        wait_for(
            page,
            """() => [...document.querySelectorAll('img.widget-image')]
                     .filter(i => i.complete && i.naturalWidth > 0).length >= 2""",
            timeout_ms=JOB_MS,
        )
        assert page.locator(".progress-bar-danger").count() == 0
        # A visitor cannot choose where files go: the "Save to" field is switched off.
        save_to = page.locator(".widget-inline-hbox").filter(
            has=page.locator("label.widget-label", has_text="Save to")
        )
        assert save_to.locator("input").is_disabled()
        page.click(".widget-button:has-text('Save')")
        page.locator(".widget-html", has_text="Saved ").first.wait_for(timeout=JOB_MS)
        page.screenshot(path=str(shot))
        html: str = page.content()
        return html
    finally:
        context.close()


def saved_file(save_dir: Path) -> Path:
    deadline = time.monotonic() + 10
    while not (files := sorted(save_dir.glob("miragic-*.jpg"))):
        assert time.monotonic() < deadline, f"nothing saved in {save_dir}"
        time.sleep(0.1)
    (file,) = files
    return file


def test_the_app_works_on_the_builtin_emulator_with_no_key(browser: Any, tmp_path: Path) -> None:
    with running_app(app_environment(tmp_path / "home"), tmp_path) as app:
        assert app.url.startswith("http://127.0.0.1:")
        assert "?token=" in app.url
        assert "Whoever reaches this page spends the key's credits" in app.printed
        assert "built-in emulator" in app.printed
        # Without the token the page is not served.
        tokenless = app.url.split("?")[0]
        answer = requests.get(tokenless, timeout=10, allow_redirects=False)
        assert answer.status_code in (302, 401, 403)

        shot = tmp_path / "screenshot-app.png"
        html = generate_and_save(browser, app, "A lighthouse on a cliff at dusk", shot)

        saved = saved_file(app.save_dir)
        with Image.open(saved) as image:
            assert image.size == (512, 384)
        meta = read_embedded_metadata(saved.read_bytes())
        assert meta is not None
        assert meta["prompt"] == "A lighthouse on a cliff at dusk"
        # The built-in emulator's key (random, "builtin-...") never reaches the page.
        assert re.search(r"builtin-[A-Za-z0-9_-]{20}", html) is None
        # The panel says the images are placeholders, and what to do instead (not a magic).
        assert "start the app with MIRAGIC_API_KEY set to use Miragic" in html
        assert "%miragic login" not in html

    with Image.open(shot) as screenshot:
        assert screenshot.size == (1000, 1000)
    if os.environ.get("MIRAGIC_UPDATE_SCREENSHOTS") == "1":
        # A palette PNG: a fraction of the size, and the page has few colours.
        with Image.open(shot) as screenshot:
            screenshot.convert("RGB").quantize(colors=128).save(
                REPO / "docs" / "screenshot-app.png", optimize=True
            )


def test_the_app_spends_the_configured_key_and_never_shows_it(browser: Any, tmp_path: Path) -> None:
    with Emulator(api_key=SECRET_KEY, job_seconds=0.5) as emulator:
        env = app_environment(
            tmp_path / "home", MIRAGIC_API_KEY=SECRET_KEY, MIRAGIC_BASE_URL=emulator.url
        )
        with running_app(env, tmp_path) as app:
            assert f"the Miragic API at {emulator.url}" in app.printed
            assert SECRET_KEY not in app.printed
            html = generate_and_save(browser, app, "A red bicycle", tmp_path / "shot.png")
            assert SECRET_KEY not in html
            saved = saved_file(app.save_dir)
            assert SECRET_KEY.encode() not in saved.read_bytes()
        assert emulator.count("POST", "/api/v1/image/generate") == 1
