"""``%miragic`` subcommands: models, config, login, resume, panel, emulator, history, help."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb import session as builtin
from miragic_nb._core.request import MODELS
from miragic_nb._magic.commands import SUBCOMMANDS
from miragic_nb._magic.magic import Miragic
from miragic_nb._store.history import History
from miragic_nb.emulator import Emulator

if TYPE_CHECKING:
    from .magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]


def test_models_lists_all_four_and_which_take_an_input_image(run: Runner, magic: Miragic) -> None:
    out = run("%miragic models").io.stdout
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(MODELS)
    (kontext,) = [line for line in lines if line.startswith("kontext")]
    assert "[accepts --image-url]" in kontext
    assert sum("--image-url" in line for line in lines) == 1
    assert "(default)" in lines[0]  # flux


def test_config_shows_settings_and_sources_but_never_the_key(
    run: Runner, magic: Miragic, api: Emulator
) -> None:
    run('%config Miragic.model = "turbo"')
    out = run("%miragic config").io.stdout
    assert api.api_key not in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("Miragic.")}
    assert "'turbo'" in rows["Miragic.model"]
    assert "(%config / ipython_config)" in rows["Miragic.model"]
    assert "(default)" in rows["Miragic.width"]
    (key_row,) = [line for line in out.splitlines() if line.startswith("API key")]
    assert "set" in key_row
    assert "MIRAGIC_API_KEY" in key_row
    (url_row,) = [line for line in out.splitlines() if line.startswith("base URL")]
    assert api.url in url_row
    assert "Miragic.base_url" in url_row


def test_config_without_a_key_says_not_set(run: Runner, magic: Miragic) -> None:
    out = run("%miragic config").io.stdout
    (key_row,) = [line for line in out.splitlines() if line.startswith("API key")]
    assert "not set" in key_row
    (fallback_row,) = [line for line in out.splitlines() if line.startswith("offline fallback")]
    assert fallback_row.split()[2:] == ["on", "(default)"]
    assert builtin.builtin_emulator_running() is None  # looking does not start it


def test_login_keeps_the_key_for_the_session_only(
    run: Runner, magic: Miragic, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    magic.base_url = emulator.url
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": emulator.api_key)
    login = run("%miragic login")
    assert login.error is None, login.text
    assert emulator.api_key not in login.text
    cell = run("%%miragic -W 256 -H 256\nafter login")
    assert cell.error is None, cell.text
    assert len(emulator.jobs) == 1
    assert emulator.requests[0].headers["X-API-Key"] == emulator.api_key
    assert "%miragic login" in run("%miragic config").io.stdout
    run("%miragic logout")
    assert builtin.key_source() != "%miragic login (this session)"


def test_login_with_nothing_typed_changes_nothing(
    run: Runner, magic: Miragic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "  ")
    cell = run("%miragic login")
    assert isinstance(cell.error, UsageError)
    assert builtin.key_source() != "%miragic login (this session)"


def test_resume_needs_a_job_id(run: Runner, api: Emulator) -> None:
    cell = run("%miragic resume")
    assert isinstance(cell.error, UsageError)
    assert "%miragic resume JOB_ID" in cell.text
    assert api.requests == []


def test_resume_of_an_unknown_job_is_one_short_line(run: Runner, api: Emulator) -> None:
    cell = run("%miragic resume no-such-job")
    assert cell.error is not None
    assert "Traceback" not in cell.text
    assert api.count("POST") == 0


def test_resume_of_a_finished_job_returns_its_image_without_a_new_job(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    first = run("%%miragic --model turbo -W 256 -H 384 --seed 9\nto resume")
    assert first.error is None
    job_id = ip.user_ns["_"].metadata["job_id"]
    cell = run(f"%miragic resume {job_id}")
    assert cell.error is None, cell.text
    image = ip.user_ns["_"]
    assert image.metadata["job_id"] == job_id
    assert (image.metadata["model"], image.size) == ("turbo", (256, 384))
    assert image.original_bytes == api.jobs[job_id].result
    assert api.count("POST") == 1


def test_emulator_start_status_stop(run: Runner, magic: Miragic, api: Emulator) -> None:
    assert "not running" in run("%miragic emulator status").io.stdout
    started = run("%miragic emulator start").io.stdout
    emulator = builtin.builtin_emulator_running()
    assert emulator is not None
    assert emulator.url in started
    assert emulator.url in run("%miragic emulator").io.stdout  # status is the default
    emulator.job_seconds = 0.2
    cell = run("%%miragic -W 256 -H 256\nexplicitly offline")
    assert cell.error is None, cell.text
    assert api.jobs == {}  # the configured API was not used while the emulator was chosen
    assert "Built-in emulator stopped." in run("%miragic emulator stop").io.stdout
    assert builtin.builtin_emulator_running() is None
    assert run("%miragic emulator reboot").error is not None


def test_history_lists_jobs_with_thumbnails_and_escapes_prompts(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    assert "No jobs recorded yet." in run("%miragic history").io.stdout
    prompt = "<script>alert('x')</script> & a lighthouse"
    assert run(f"%%miragic -W 256 -H 256\n{prompt}").error is None
    job_id = ip.user_ns["_"].metadata["job_id"]
    cell = run("%miragic history 5")
    (table,) = [o.data for o in cell.outputs if "text/html" in o.data]
    html = table["text/html"]
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; a lighthouse" in html
    assert job_id in html
    assert html.count('<img src="data:image/jpeg;base64,') == 1
    assert job_id in table["text/plain"]
    assert "image/png" not in table
    assert run("%miragic history lots").error is not None


@pytest.mark.parametrize("how", ["%miragic panel", "Panel()"])
def test_the_panel_uses_the_settings_given_with_config(
    run: Runner,
    ip: InteractiveShell,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    home = tmp_path / "configured-home"
    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    for line in (
        f"%config Miragic.base_url = {emulator.url!r}",
        f"%config Miragic.home = {str(home)!r}",
        "%config Miragic.timeout = 42.5",
        "%config Miragic.poll_interval = 0.03",
        "%config Miragic.max_poll_interval = 0.3",
    ):
        assert run(line).error is None
    made = run(f"from miragic_nb._panel.panel import Panel\nt_panel = {how}")
    assert made.error is None, made.text
    panel = ip.user_ns.pop("t_panel")
    panel.prompt.value = "configured"
    panel.width.value = panel.height.value = 256
    job = panel.generate()  # no running loop here: runs to the end
    assert job is not None
    assert job.state == "completed", panel.status.value
    assert job.job_id in emulator.jobs  # Miragic.base_url reached the panel's job
    client = panel._client()
    assert client.timeout == 42.5
    assert (client.api.poll_schedule.initial_delay, client.api.poll_schedule.max_delay) == (
        0.03,
        0.3,
    )
    record = History(home).get(job.job_id)  # Miragic.home: the job is recorded there
    assert record is not None
    assert record.status == "COMPLETED"
    panel.close()


def test_the_panel_starts_no_emulator_until_generate(run: Runner, ip: InteractiveShell) -> None:
    builtin.reset()
    made = run("t_panel = %miragic panel")
    assert made.error is None, made.text
    panel = ip.user_ns.pop("t_panel")
    assert panel.is_emulator
    assert builtin.builtin_emulator_running() is None
    panel.close()
    assert run("%config Miragic.offline_fallback = False").error is None
    made = run("t_panel = %miragic panel")
    panel = ip.user_ns.pop("t_panel")
    assert "MIRAGIC_API_KEY" in panel.status.value  # the fallback setting reached the panel
    panel.prompt.value = "no key, no fallback"
    assert panel.generate() is None
    assert builtin.builtin_emulator_running() is None
    panel.close()


def test_panel_is_the_value_of_the_line(run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    from miragic_nb._panel.panel import Panel

    cell = run("t_panel = %miragic panel")
    assert cell.error is None, cell.text
    panel = ip.user_ns.pop("t_panel")
    assert isinstance(panel, Panel)
    assert "application/vnd.jupyter.widget-view+json" in ip.display_formatter.format(panel)[0]
    panel.close()


def test_help_and_unknown_subcommands(run: Runner, magic: Miragic) -> None:
    text = run("%miragic help").io.stdout
    assert "%%miragic [options]" in text
    assert run("%miragic").io.stdout == text  # no subcommand: the overview
    for command in SUBCOMMANDS:
        assert command in text
    cell = run("%miragic draw a cat")
    assert isinstance(cell.error, UsageError)
    assert "unknown subcommand 'draw'" in cell.text
    assert "prompts go in a %%miragic cell" in cell.text
