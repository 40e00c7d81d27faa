"""JupyterLab and Notebook 7 in headless Chromium, driven like a person would.

A Jupyter server runs on loopback with ``MIRAGIC_API_KEY``/``MIRAGIC_BASE_URL`` pointing at an
emulator started here; Playwright opens notebooks in Debian's Chromium, runs them and checks the
page: progress bars turned green, images decoded, the panel's buttons doing their job.

Screenshots go to the test's temporary directory; with ``MIRAGIC_UPDATE_SCREENSHOTS=1`` they
also replace ``docs/screenshot-magic.png`` and ``docs/screenshot-panel.png`` (the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from miragic_nb.emulator import Emulator
from tests.browser_support import (
    VIEWPORT,
    JupyterServer,
    image_count,
    jupyter_environment,
    jupyter_server,
    wait_for,
    write_notebook,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SECRET_KEY = "sk-browser-test-52c1e8d0a9f34b7e"
CREATE = "/api/v1/image/generate"
#: Milliseconds to wait for the kernel, a run of the whole quickstart, one panel job.
KERNEL_READY_MS = 90_000
RUN_ALL_MS = 180_000
JOB_MS = 60_000


def save_screenshot(target: Any, name: str, directory: Path) -> Path:
    """A screenshot of a page's viewport or of one element, in ``directory`` (and in ``docs/``
    when asked to update)."""
    path = directory / name
    target.screenshot(path=str(path))
    if os.environ.get("MIRAGIC_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / name)
    return path


@pytest.fixture(scope="module")
def browser_emulator() -> Iterator[Emulator]:
    with Emulator(api_key=SECRET_KEY, job_seconds=0.6) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``root/`` (what Jupyter serves), ``home/`` and ``logs/``."""
    base = tmp_path_factory.mktemp("browser")
    root = base / "root"
    root.mkdir()
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root)
    write_notebook(root / "panel-by-hand.ipynb", ["from miragic_nb import Panel\n\nPanel()"])
    write_notebook(
        root / "smoke.ipynb",
        ["%load_ext miragic_nb", "%%miragic --size 512x384\nA lighthouse on a cliff at dusk"],
    )
    (base / "logs").mkdir()
    (base / "shots").mkdir()
    return base


@pytest.fixture(scope="module")
def server_env(workspace: Path, browser_emulator: Emulator) -> dict[str, str]:
    """The server's environment; the kernels it starts inherit it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAGIC_")}
    env.update(
        MIRAGIC_API_KEY=browser_emulator.api_key,
        MIRAGIC_BASE_URL=browser_emulator.url,
        MIRAGIC_HOME=str(workspace / "home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    return jupyter_environment(env, workspace / "jupyter")


@pytest.fixture(scope="module")
def lab(workspace: Path, server_env: dict[str, str]) -> Iterator[JupyterServer]:
    with jupyter_server("lab", workspace / "root", server_env, workspace / "logs") as server:
        yield server


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield context.new_page()
    finally:
        context.close()


def open_in_lab(page: Any, server: JupyterServer, notebook: str) -> None:
    # A workspace per notebook: JupyterLab would otherwise reopen the previous test's tabs.
    workspace = notebook.removesuffix(".ipynb")
    page.goto(server.page_url(f"lab/workspaces/{workspace}/tree/{notebook}"))
    wait_for_idle_kernel(page)
    page.keyboard.press("Control+b")  # hide the file browser: more room for the notebook


def wait_for_idle_kernel(page: Any) -> None:
    """The notebook's kernel is connected and idle.

    The execution indicator already says "idle" while the page still has "No Kernel", so the
    toolbar's kernel name is checked too.
    """
    wait_for(
        page,
        """() => {
            const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
            const name = document.querySelector('.jp-Toolbar-kernelName');
            return indicator && indicator.dataset.status === 'idle'
                && name && name.textContent.trim() !== '' && name.textContent !== 'No Kernel';
        }""",
        timeout_ms=KERNEL_READY_MS,
    )


def run_all_cells(page: Any) -> None:
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


def wait_until_every_cell_ran(page: Any, code_cells: int) -> None:
    """Every code cell shows an execution count (``[12]:``, not ``[*]:`` or ``[ ]:``)."""
    wait_for(
        page,
        """count => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return prompts.length === count
                && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""",
        arg=code_cells,
        timeout_ms=RUN_ALL_MS,
    )
    wait_for_idle_kernel(page)


def scroll_to_top_of(page: Any, locator: Any) -> None:
    locator.evaluate("element => element.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)  # let the scroll settle before a screenshot


def test_jupyterlab_runs_the_quickstart(
    lab: JupyterServer, page: Any, browser_emulator: Emulator, workspace: Path
) -> None:
    notebook = nbformat.read(lab.root / "quickstart.ipynb", as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    jobs_before = browser_emulator.count("POST", CREATE)

    open_in_lab(page, lab, "quickstart.ipynb")
    run_all_cells(page)
    wait_until_every_cell_ran(page, len(code_cells))

    # 1 + 1 + 1 single jobs, a grid of 4, a comparison of 3, kontext, resume: all green.
    wait_for(
        page,
        "() => document.querySelectorAll('.progress-bar-success').length >= 12",
        timeout_ms=JOB_MS,
    )
    assert page.locator(".progress-bar-danger").count() == 0
    # Results, thumbnails/crops/blends, the grid, the comparison, history: decoded images.
    wait_for(
        page,
        """() => [...document.querySelectorAll('.jp-OutputArea-output img')]
                 .filter(i => i.complete && i.naturalWidth > 0).length >= 15""",
        timeout_ms=JOB_MS,
    )
    assert browser_emulator.count("POST", CREATE) - jobs_before >= 11
    # The failing-on-purpose cell showed its one-line message and Run All went on past it.
    failing = page.locator(".jp-CodeCell", has_text="--image-url https://example.com/photo.jpg")
    assert "works only with model 'kontext'" in failing.inner_text()
    assert SECRET_KEY not in page.content()

    grid_cell = page.locator(".jp-CodeCell", has_text="--n 4 --seed 7")
    assert image_count(grid_cell, ".jp-OutputArea-output img") == 4
    scroll_to_top_of(page, grid_cell)
    save_screenshot(page, "screenshot-magic.png", workspace / "shots")


def test_jupyterlab_panel_by_hand(
    lab: JupyterServer, browser: Any, browser_emulator: Emulator, workspace: Path
) -> None:
    # Tall enough for the whole panel, form to gallery, in the screenshot.
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    try:
        check_panel_by_hand(context.new_page(), lab, browser_emulator, workspace)
    finally:
        context.close()


def check_panel_by_hand(
    page: Any, lab: JupyterServer, browser_emulator: Emulator, workspace: Path
) -> None:
    open_in_lab(page, lab, "panel-by-hand.ipynb")
    run_all_cells(page)
    prompt = page.locator(".widget-textarea textarea")
    prompt.wait_for(timeout=KERNEL_READY_MS)

    def field(label: str) -> Any:
        row = page.locator(".widget-inline-hbox").filter(
            has=page.locator("label.widget-label", has_text=label)
        )
        return row.locator("input")

    def generate(text: str, finished: int) -> None:
        prompt.fill(text)
        page.click(".widget-button:has-text('Generate')")
        wait_for(
            page,
            "n => document.querySelectorAll('.progress-bar-success').length >= n",
            arg=finished,
            timeout_ms=JOB_MS,
        )

    field("Width").fill("768")
    field("Height").fill("512")
    generate("A lighthouse on a cliff at dusk", 1)
    generate("A lighthouse in a storm, huge waves", 2)
    # The result shown large, and one thumbnail per result in the gallery.
    wait_for(
        page,
        """() => [...document.querySelectorAll('img.widget-image')]
                 .filter(i => i.complete && i.naturalWidth > 0).length >= 3""",
        timeout_ms=JOB_MS,
    )
    assert page.locator(".progress-bar-danger").count() == 0

    # Choose the first result from the gallery: it becomes the one shown large.
    first_card = (
        page.locator(".widget-vbox")
        .filter(has=page.locator("img.widget-image"))
        .filter(has=page.locator("[title='A lighthouse on a cliff at dusk']"))
        .last
    )
    first_card.locator("button[title='Show this result above']").click()
    shown = page.locator(".widget-html b", has_text="A lighthouse on a cliff at dusk")
    shown.first.wait_for(timeout=JOB_MS)

    page.click(".widget-button:has-text('Use as input')")
    model = page.locator(".widget-dropdown select").first
    wait_for(
        page,
        "() => document.querySelector('.widget-dropdown select').value.startsWith('kontext')",
        timeout_ms=JOB_MS,
    )
    assert model.input_value().startswith("kontext")
    assert field("Image URL").input_value().startswith(browser_emulator.url)

    generate("The same lighthouse in deep winter snow", 3)
    assert page.locator(".progress-bar-danger").count() == 0
    assert SECRET_KEY not in page.content()
    assert browser_emulator.requests  # the jobs went to the emulator named by the env

    panel = page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-textarea"))
    save_screenshot(panel, "screenshot-panel.png", workspace / "shots")


def test_notebook7_runs_a_magic_cell(
    workspace: Path, server_env: dict[str, str], browser: Any
) -> None:
    with jupyter_server("notebook", workspace / "root", server_env, workspace / "logs") as server:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            tree = context.new_page()
            tree.goto(server.page_url("tree"))
            with context.expect_page() as opened:
                tree.dblclick(".jp-DirListing-item:has-text('smoke.ipynb')")
            notebook = opened.value
            notebook.wait_for_load_state()
            assert "/notebooks/smoke.ipynb" in notebook.url
            wait_for_idle_kernel(notebook)

            run_all_cells(notebook)

            wait_until_every_cell_ran(notebook, 2)
            notebook.wait_for_selector(".progress-bar-success", timeout=JOB_MS)
            wait_for(
                notebook,
                """() => [...document.querySelectorAll('.jp-OutputArea-output img')]
                         .some(i => i.complete && i.naturalWidth === 512)""",
                timeout_ms=JOB_MS,
            )
            assert notebook.locator(".progress-bar-danger").count() == 0
        finally:
            context.close()
