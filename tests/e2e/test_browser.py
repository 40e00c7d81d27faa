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

    # Three single jobs, a grid of 4, a comparison of 3, kontext, resume: each cell's progress
    # collapsed to one line when it ended, and none says "failed".
    wait_for(
        page,
        "() => document.querySelectorAll('.miragic-progress-summary').length >= 7",
        timeout_ms=JOB_MS,
    )
    summaries = page.locator(".miragic-progress-summary").all_inner_texts()
    assert all("completed" in line and "failed" not in line for line in summaries), summaries
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
    assert field("Image").input_value().startswith(browser_emulator.url)

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
            summary = notebook.locator(".miragic-progress-summary")
            summary.wait_for(timeout=JOB_MS)
            assert summary.inner_text().startswith("completed · ")
            wait_for(
                notebook,
                """() => [...document.querySelectorAll('.jp-OutputArea-output img')]
                         .some(i => i.complete && i.naturalWidth === 512)""",
                timeout_ms=JOB_MS,
            )
            assert notebook.locator(".progress-bar-danger").count() == 0
        finally:
            context.close()


# -- nothing clipped at 1024×768 with the file browser open ----------------------------------------

NARROW = {"width": 1024, "height": 768}
#: Every text the magic and the panel draw that a person must read whole.
READABLE = ", ".join(
    [
        ".miragic-progress .widget-html-content",
        ".miragic-progress-text",
        ".miragic-progress-summary",
        ".miragic-caption",
        ".jp-OutputArea-output .widget-button",
    ]
)
#: In the page: every visible element of ``selector`` whose content is cut (scrolled out of its
#: own box, or reaching past the box of an ancestor that hides overflow), and any progress row
#: whose texts overlap its bar.
CLIPPED_JS = """selector => {
    const cut = [];
    const visible = e => e.offsetParent !== null && e.getClientRects().length > 0;
    for (const element of document.querySelectorAll(selector)) {
        if (!visible(element)) continue;
        const text = element.textContent.trim();
        if (element.scrollWidth > element.clientWidth + 1
                || element.scrollHeight > element.clientHeight + 1) {
            cut.push(`${text} (${element.scrollWidth}x${element.scrollHeight} in `
                     + `${element.clientWidth}x${element.clientHeight})`);
            continue;
        }
        const box = element.getBoundingClientRect();
        for (let up = element.parentElement; up; up = up.parentElement) {
            if (getComputedStyle(up).overflowX === 'visible') continue;
            const outer = up.getBoundingClientRect();
            if (box.right > outer.right + 1 || box.left < outer.left - 1) {
                cut.push(`${text} (past ${up.className})`);
                break;
            }
        }
    }
    for (const row of document.querySelectorAll('.miragic-progress')) {
        if (!visible(row)) continue;
        const [head, bar, detail] = [...row.children].map(c => c.getBoundingClientRect());
        for (const text of [head, detail]) {
            const sameLine = text.top < bar.bottom && bar.top < text.bottom;
            if (sameLine && text.left < bar.right && bar.left < text.right) {
                cut.push(`${row.textContent.trim()} (text over the bar)`);
            }
        }
    }
    return cut;
}"""


def assert_nothing_clipped(page: Any) -> int:
    """No readable text is cut; returns how many were checked (so a test sees it looked)."""
    assert page.evaluate(CLIPPED_JS, READABLE) == []
    checked: int = page.locator(READABLE).evaluate_all(
        "elements => elements.filter(e => e.offsetParent !== null).length"
    )
    return checked


def open_with_file_browser(page: Any, server: JupyterServer, notebook: str) -> None:
    workspace = notebook.removesuffix(".ipynb")
    page.goto(server.page_url(f"lab/workspaces/{workspace}/tree/{notebook}"))
    wait_for_idle_kernel(page)
    file_browser = page.locator(".jp-FileBrowser")
    if not file_browser.is_visible():
        page.keyboard.press("Control+b")
    file_browser.wait_for(state="visible", timeout=KERNEL_READY_MS)


def test_nothing_is_clipped_at_1024_with_the_file_browser_open(
    lab: JupyterServer, browser: Any, browser_emulator: Emulator, workspace: Path
) -> None:
    write_notebook(
        lab.root / "narrow-magic.ipynb",
        [
            "%load_ext miragic_nb",
            "%%miragic --n 3 --size 512x384\nA lighthouse on a cliff at dusk, in a storm",
        ],
    )
    write_notebook(lab.root / "narrow-panel.ipynb", ["from miragic_nb import Panel\n\nPanel()"])
    context = browser.new_context(viewport=NARROW)
    # Jobs long enough to look at their progress rows while they run.
    browser_emulator.job_seconds = 6.0
    try:
        page = context.new_page()
        open_with_file_browser(page, lab, "narrow-magic.ipynb")
        run_all_cells(page)
        page.wait_for_selector(".miragic-progress", timeout=JOB_MS)
        wait_for(
            page,
            "() => document.querySelectorAll('.miragic-progress').length === 3"
            " && document.body.innerText.includes('pending')",
            timeout_ms=JOB_MS,
        )
        assert assert_nothing_clipped(page) >= 6  # three rows of a head and a detail
        wait_until_every_cell_ran(page, 2)
        page.wait_for_selector(".miragic-progress-summary", timeout=JOB_MS)
        assert assert_nothing_clipped(page) >= 4  # the summary and three captions in the grid
        summary = page.locator(".miragic-progress-summary").inner_text()
        assert summary.startswith("3 jobs · 3 completed")
        assert page.locator(".jp-FileBrowser").is_visible()
        save_screenshot(page, "screenshot-magic-1024.png", workspace / "shots")

        panel = context.new_page()
        open_with_file_browser(panel, lab, "narrow-panel.ipynb")
        run_all_cells(panel)
        prompt = panel.locator(".widget-textarea textarea")
        prompt.wait_for(timeout=KERNEL_READY_MS)
        prompt.fill("A lighthouse on a cliff at dusk, in a storm with huge waves")
        panel.click(".widget-button:has-text('Generate')")
        wait_for(
            panel,
            "() => [...document.querySelectorAll('.miragic-progress')]"
            ".some(r => r.textContent.includes('pending'))",
            timeout_ms=JOB_MS,
        )
        cancel = panel.locator("button[title='Stop polling this job']")
        assert cancel.inner_text() == "Cancel"
        assert assert_nothing_clipped(panel) >= 3  # the row's texts and its Cancel button
        assert panel.locator(".jp-FileBrowser").is_visible()
        save_screenshot(panel, "screenshot-panel-1024.png", workspace / "shots")
        panel.wait_for_selector(".progress-bar-success", timeout=JOB_MS)
        assert assert_nothing_clipped(panel) >= 2
    finally:
        browser_emulator.job_seconds = 0.6
        context.close()
