"""The panel's job flow with real widgets against the emulator: generate, progress, cancel,
concurrency, refused input and server errors.

Widgets outside a kernel have a no-op comm, so these are the real controls. Each scenario runs
inside ``asyncio.run``, as the kernel's loop would run the panel's tasks.
"""

from __future__ import annotations

import asyncio
import html
import re
import threading

import ipywidgets as widgets
import pytest

from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.polling import PollSchedule
from miragic_nb._panel.panel import Panel
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator, Fault
from tests.panel_fixtures import CREATE, STATUS, html_values, panel, until

__all__ = ["panel"]  # the fixture, used by name


def test_generate_returns_at_once_then_shows_image_progress_status(
    panel: Panel, emulator: Emulator
) -> None:
    panel.prompt.value = "A lighthouse on a cliff at dusk"
    panel.model.value = "turbo"
    panel.size_preset.value = next(o for o in panel.size_preset.options if "4:3" in o)
    panel.seed.value = "7"
    threads: set[int] = set()
    statuses: list[str] = []

    def on_status(change: dict[str, object]) -> None:
        threads.add(threading.get_ident())
        statuses.append(str(change["new"]))

    panel.status.observe(on_status, names="value")

    async def scenario() -> None:
        panel.generate_button.click()
        job = panel.history[0]
        # The click only started a task: nothing has come back yet.
        assert job.is_active
        assert panel.image is None
        assert panel.cancel_button.disabled is False
        await panel.wait()

    asyncio.run(scenario())

    image = panel.image
    assert isinstance(image, GeneratedImage)
    assert image.size == (1152, 864)
    assert (image.metadata["model"], image.metadata["seed"]) == ("turbo", 7)
    job = panel.history[0]
    assert job.state == "completed"
    assert job.image is image
    assert panel.images == [image]
    server_job = emulator.jobs[job.job_id or ""]
    assert server_job.form["prompt"] == "A lighthouse on a cliff at dusk"
    assert (server_job.form["width"], server_job.form["height"]) == ("1152", "864")
    assert server_job.form["seed"] == "7"
    # Progress: the row is finished green; status went through percentages to "Done".
    assert panel.progress is job.progress
    assert panel.progress.state == "succeeded"
    bar = next(w for w in panel.progress.widget.children if isinstance(w, widgets.FloatProgress))
    assert (bar.bar_style, bar.value) == ("success", 100.0)
    assert any(re.search(r"\d+% · \d+\.\d+s", s) for s in statuses), statuses
    assert "Done" in panel.status.value
    # Every status update happened on the loop's thread, never in the worker thread.
    assert threads == {threading.get_ident()}
    # The result area shows the server's own bytes; the gallery a small JPEG thumbnail.
    assert panel.result_image.value == image.original_bytes
    assert panel.result_image.format == "jpeg"
    (card,) = panel.cards
    assert card.thumbnail.value[:3] == b"\xff\xd8\xff"
    assert len(card.thumbnail.value) < len(image.original_bytes)
    assert panel.cancel_button.disabled is True


def test_without_a_running_loop_generate_runs_to_the_end(panel: Panel, emulator: Emulator) -> None:
    panel.prompt.value = "a plain script"
    assert panel.seed.value == ""  # blank: random
    job = panel.generate()
    assert job is not None
    assert job.state == "completed"
    assert panel.image is job.image
    # A blank seed: the client chose one, sent it, and the result says which.
    sent = emulator.jobs[job.job_id or ""].form["seed"]
    assert job.image is not None
    assert job.image.info["miragic"]["seed"] == int(sent)
    assert job.image.info["miragic"]["seed_chosen"] is True


def test_elapsed_seconds_move_between_status_reads(emulator: Emulator) -> None:
    emulator.job_seconds = 60
    rare_polls = PollSchedule(initial_delay=60, max_delay=60)
    with Client(api_key=emulator.api_key, base_url=emulator.url, poll_schedule=rare_polls) as c:
        panel = Panel(c)
        panel.prompt.value = "watch the clock"

        async def scenario() -> None:
            panel.generate_button.click()
            job = panel.history[0]
            await until(lambda: job.state == "pending")
            detail = job.progress.widget.children[2]
            shown = detail.value
            polls = emulator.count("GET", STATUS)
            await until(lambda: detail.value != shown)
            assert emulator.count("GET", STATUS) == polls  # the clock moved by itself
            panel.cancel()
            await panel.wait()

        asyncio.run(scenario())
        panel.close()


def test_cancel_stops_polling_and_keeps_the_job_id(panel: Panel, emulator: Emulator) -> None:
    emulator.job_seconds = 60
    panel.prompt.value = "a job that takes a minute"

    async def scenario() -> None:
        panel.generate_button.click()
        job = panel.history[0]
        await until(lambda: job.job_id is not None and emulator.count("GET", STATUS) >= 3)
        panel.cancel_button.click()
        assert job.state == "cancelled"  # at once, not after the next status read
        await panel.wait()  # the worker thread has ended too
        polls = emulator.count("GET", STATUS)
        await asyncio.sleep(1.0)  # five times FAST_POLLS' longest pause
        assert emulator.count("GET", STATUS) == polls

    asyncio.run(scenario())

    job = panel.history[0]
    assert job.job_id in emulator.jobs
    assert job.job_id in panel.status.value
    assert f"%miragic resume {job.job_id}" in panel.status.value
    assert "credit" in panel.status.value
    assert job.progress.state == "failed"
    assert panel.cancel_button.disabled is True
    assert panel.image is None

    # Ready for the next prompt.
    emulator.job_seconds = 0.3
    panel.prompt.value = "the next one"
    asyncio.run(_generate_and_wait(panel))
    assert panel.history[0].state == "completed"
    assert [j.state for j in panel.history] == ["completed", "cancelled"]


def test_a_job_cancelled_while_queued_is_never_sent(panel: Panel, emulator: Emulator) -> None:
    emulator.job_seconds = 60
    panel.prompt.value = "fill every worker"

    async def scenario() -> None:
        started = [panel.generate() for _ in range(5)]  # one more than MAX_CONCURRENT_JOBS
        await until(lambda: emulator.count("POST", CREATE) == 4)
        queued = started[-1]
        assert queued is not None
        assert queued.job_id is None
        panel.cancel(queued)
        assert "no credit used" in panel.status.value
        panel.cancel()
        await panel.wait()

    asyncio.run(scenario())
    assert emulator.count("POST", CREATE) == 4
    assert [j.state for j in panel.history] == ["cancelled"] * 5


def test_two_generations_run_alongside_and_both_complete(panel: Panel, emulator: Emulator) -> None:
    async def scenario() -> None:
        panel.prompt.value = "first"
        panel.generate_button.click()
        panel.prompt.value = "second"
        panel.generate_button.click()
        assert len(panel.running) == 2
        assert len(panel.progress_area.children) == 2  # a progress row each
        await panel.wait()

    asyncio.run(scenario())
    assert [j.state for j in panel.history] == ["completed", "completed"]
    assert sorted(str(i.metadata["prompt"]) for i in panel.images) == ["first", "second"]
    assert emulator.count("POST", CREATE) == 2
    assert len(panel.cards) == 2


@pytest.mark.parametrize(
    ("fields", "error_field", "says"),
    [
        ({"prompt": "   "}, "prompt", "prompt must be a non-empty string"),
        (
            {"model": "flux", "image_url": "http://127.0.0.1/in.jpg"},
            "image_url",
            "works only with model 'kontext'",
        ),
        ({"model": "kontext", "image_url": "file:///etc/passwd"}, "image_url", "http(s) URL"),
        ({"seed": "-3"}, "seed", "non-negative integer"),
        ({"seed": "<b>seven</b>"}, "seed", "non-negative integer, got '<b>seven</b>'"),
    ],
)
def test_invalid_input_is_shown_beside_the_field_and_nothing_is_sent(
    panel: Panel, emulator: Emulator, fields: dict[str, str], error_field: str, says: str
) -> None:
    panel.prompt.value = "a valid prompt"
    for name, value in fields.items():
        getattr(panel, name).value = value
    assert panel.generate() is None
    shown = panel.errors[error_field].value
    assert says in html.unescape(shown)
    assert "<b>" not in shown  # the user's text is escaped, not rendered
    assert all(box.value == "" for name, box in panel.errors.items() if name != error_field)
    assert "Nothing was sent" in panel.status.value
    assert panel.history == []
    assert emulator.requests == []


def test_every_problem_is_shown_at_once(panel: Panel, emulator: Emulator) -> None:
    panel.prompt.value = ""
    panel.seed.value = "x"
    panel.model.value = "turbo"
    panel.image_url.value = "https://example.com/a.jpg"
    panel.generate_button.click()
    assert {name for name, box in panel.errors.items() if box.value} == {
        "prompt",
        "seed",
        "image_url",
    }
    assert "fields marked" in panel.status.value
    assert emulator.requests == []
    # Editing a field clears its message.
    panel.seed.value = "12"
    assert panel.errors["seed"].value == ""


def test_sizes_are_limited_to_the_api_range(panel: Panel, emulator: Emulator) -> None:
    panel.width.value = 4096
    panel.height.value = 100
    assert (panel.width.value, panel.height.value) == (2048, 256)
    assert (panel.width.min, panel.width.max) == (256, 2048)


def test_size_presets_fill_width_and_height(panel: Panel) -> None:
    portrait = next(o for o in panel.size_preset.options if o.startswith("portrait"))
    panel.size_preset.value = portrait
    assert (panel.width.value, panel.height.value) == (864, 1152)
    panel.width.value = 900
    assert panel.size_preset.value == "custom"
    panel.width.value = 864
    assert panel.size_preset.value == portrait


def test_image_url_is_only_usable_with_kontext(panel: Panel) -> None:
    panel.model.value = "flux"
    assert panel.image_url.disabled is True
    assert "only for kontext" in panel.image_url_hint.value
    panel.model.value = "kontext"
    assert panel.image_url.disabled is False
    panel.image_url.value = "https://example.com/in.jpg"
    panel.model.value = "turbo"
    # A URL left over stays editable, so it can be cleared, and is flagged.
    assert panel.image_url.disabled is False
    assert "only kontext takes an input image" in panel.image_url_hint.value


def test_a_failed_job_shows_the_server_message_escaped(panel: Panel, emulator: Emulator) -> None:
    emulator.faults.force_failure = True
    emulator.faults.failure_message = "<script>alert(1)</script> the model <b>broke</b>"
    panel.prompt.value = "doomed"
    asyncio.run(_generate_and_wait(panel))
    job = panel.history[0]
    assert job.state == "failed"
    assert job.job_id in emulator.jobs
    assert "&lt;script&gt;alert(1)&lt;/script&gt; the model &lt;b&gt;broke&lt;/b&gt;" in (
        panel.status.value
    )
    assert all("<script" not in value for value in html_values(panel))
    bar = next(w for w in job.progress.widget.children if isinstance(w, widgets.FloatProgress))
    assert bar.bar_style == "danger"
    assert panel.image is None


def test_a_proxy_error_page_becomes_one_short_status_line(panel: Panel, emulator: Emulator) -> None:
    emulator.faults.push("create", Fault.http(503))
    panel.prompt.value = "behind a flaky proxy"
    asyncio.run(_generate_and_wait(panel))
    assert panel.history[0].state == "failed"
    status = panel.status.value
    assert "503" in status
    assert "\n" not in status
    assert "<html" not in status
    assert "&lt;html" not in status
    assert len(status) < 400


def test_a_prompt_with_markup_is_shown_as_text(panel: Panel) -> None:
    prompt = "<img src=x onerror=alert(1)>"
    panel.prompt.value = prompt
    asyncio.run(_generate_and_wait(panel))
    assert panel.image is not None
    shown = html_values(panel)
    assert all("<img" not in value for value in shown)
    assert any("&lt;img src=x onerror=alert(1)&gt;" in value for value in shown)
    assert "&lt;img" in panel.result_caption.value
    assert "&lt;img" in panel.cards[0].caption.value


async def _generate_and_wait(panel: Panel) -> None:
    panel.generate_button.click()
    await panel.wait()
