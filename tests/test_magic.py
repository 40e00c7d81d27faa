"""``%%miragic`` against the emulator in a real IPython shell: options, display, results."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb._core.images import GeneratedImage
from miragic_nb._magic.magic import Miragic
from miragic_nb._views.gallery import ImageGrid
from miragic_nb.emulator import Emulator

if TYPE_CHECKING:
    from .magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]  # the ip, magic, api and run fixtures


def only_job(emulator: Emulator) -> str:
    (job_id,) = emulator.jobs
    return job_id


def test_one_cell_one_image_shown_once_from_the_server_bytes(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    cell = run("%%miragic --model turbo -W 512 -H 384\nA lighthouse on a cliff at dusk")
    assert cell.error is None, cell.text
    job_id = only_job(api)
    image = ip.user_ns["_"]
    assert isinstance(image, GeneratedImage)
    assert ip.user_ns["Out"][cell.result.execution_count] is image
    shown = cell.image_outputs()
    assert len(shown) == 1  # exactly one image output ...
    assert set(shown[0]) == {"image/jpeg", "text/plain"}  # ... and no PNG re-encode
    assert shown[0]["image/jpeg"] == api.jobs[job_id].result == image.original_bytes
    caption = shown[0]["text/plain"]
    assert "turbo" in caption
    assert "512×384" in caption
    assert job_id in caption
    assert "emulator" not in caption  # a configured API is not the built-in emulator
    form = dict(api.jobs[job_id].form)
    seed = form.pop("seed")  # no --seed: the client chose one, and the caption shows it
    assert f"seed {seed} (random)" in caption
    assert form == {
        "prompt": "A lighthouse on a cliff at dusk",
        "model": "turbo",
        "width": "512",
        "height": "384",
    }
    assert f"job {job_id}" in cell.io.stdout  # the progress line names the job


def test_every_generation_option_reaches_the_api(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    first = run("%%miragic --size 256x256 -o t_source\nsource picture")
    assert first.error is None, first.text
    source_url = ip.user_ns["t_source"].metadata["result_url"]
    cell = run(
        f"%%miragic -m kontext --size 512x768 --image-url {source_url} --seed 42 "
        "--enhance --no-safe --private --nologo --timeout 30 --fresh\nrestyle it",
    )
    assert cell.error is None, cell.text
    form = api.jobs[ip.user_ns["_"].metadata["job_id"]].form
    assert form == {
        "prompt": "restyle it",
        "model": "kontext",
        "width": "512",
        "height": "768",
        "image_url": source_url,
        "seed": "42",
        "enhance": "true",
        "safe": "false",
        "private": "true",
        "nologo": "true",
    }


def test_flags_not_given_are_not_sent(run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    cell = run("%%miragic --width 256 --height 256 --no-enhance\nplain")
    assert cell.error is None, cell.text
    form = api.jobs[only_job(api)].form
    assert form["enhance"] == "false"
    assert not {"safe", "private", "nologo", "image_url"} & set(form)
    assert form["seed"].isdigit()  # always sent: chosen by the client when not given


def test_prompt_interpolation_from_the_user_namespace(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    ip.user_ns.update(t_style="film noir", t_cfg={"mood": "calm"})
    body = 'A harbour, {t_style}, {t_cfg[mood]}, {t_unknown} {"k": {"n": 1}} {{t_style}}'
    cell = run(f"%%miragic -W 256 -H 256\n  {body}  \n")
    assert cell.error is None, cell.text
    assert api.jobs[only_job(api)].prompt == (
        'A harbour, film noir, calm, {t_unknown} {"k": {"n": 1}} {t_style}'
    )


def test_ipython_builtins_in_the_namespace_are_not_interpolated(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    cell = run("%%miragic -W 256 -H 256\n{exit} {In} {get_ipython}")
    assert cell.error is None, cell.text
    assert api.jobs[only_job(api)].prompt == "{exit} {In} {get_ipython}"


def test_out_name_and_a_trailing_semicolon(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    cell = run("%%miragic -W 256 -H 256 -o t_img\nquiet please;")
    assert cell.error is None, cell.text
    assert isinstance(ip.user_ns["t_img"], GeneratedImage)
    assert cell.image_outputs() == []  # hidden, as with any `;`
    assert ip.user_ns["t_img"].metadata["prompt"] == "quiet please"


def test_n_jobs_run_concurrently_with_consecutive_seeds(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    api.job_seconds = 1.0
    cell = run("%%miragic --n 3 --seed 10 -W 256 -H 256 -o t_grid\nthree cats")
    assert cell.error is None, cell.text
    grid = ip.user_ns["t_grid"]
    assert isinstance(grid, ImageGrid)
    assert isinstance(grid, list)
    assert ip.user_ns["_"] is grid
    assert [image.metadata["seed"] for image in grid] == [10, 11, 12]
    jobs = list(api.jobs.values())
    assert sorted(job.seed for job in jobs) == [10, 11, 12]
    # Concurrent: every job was created before the first one was due to finish.
    first_due = min(job.created_mono + job.duration for job in jobs)
    assert all(job.created_mono < first_due for job in jobs)
    # The cell's value displays as one grid of the original bytes (what a kernel's displayhook
    # sends as execute_result), with no per-image PNG or JPEG re-encode.
    assert cell.image_outputs() == []
    data, _ = ip.display_formatter.format(grid)
    assert set(data) == {"text/html", "text/plain"}
    html = data["text/html"]
    assert html.count("<img ") == 3
    assert html.count("data:image/jpeg;base64,") == 3
    assert "seed 10" in html
    assert "seed 12" in html
    for job in jobs:
        assert job.id in cell.io.stdout  # a progress row each


def test_model_list_compares_side_by_side(run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    cell = run("%%miragic --model flux,turbo,gptimage --seed 3 -W 256 -H 256\na fox")
    assert cell.error is None, cell.text
    grid = ip.user_ns["_"]
    assert isinstance(grid, ImageGrid)
    assert [image.metadata["model"] for image in grid] == ["flux", "turbo", "gptimage"]
    assert grid.columns == 3
    assert grid.labels == ["flux", "turbo", "gptimage"]
    assert sorted(job.model for job in api.jobs.values()) == ["flux", "gptimage", "turbo"]
    assert {job.seed for job in api.jobs.values()} == {3}


def test_an_explicit_seed_reuses_a_saved_result_unless_fresh(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    source = "%%miragic --seed 7 -W 256 -H 256\nthe same request"
    assert run(source).error is None
    first = ip.user_ns["_"]
    again = run(source)
    assert again.error is None, again.text
    reused = ip.user_ns["_"]
    assert api.count("POST") == 1  # no second credit
    assert reused.metadata.get("reused") is True
    assert reused.metadata["job_id"] == first.metadata["job_id"]
    assert reused.tobytes() == first.tobytes()  # same pixels (the saved file adds metadata)
    assert "reused from history, no credit spent" in again.image_outputs()[0]["text/plain"]
    fresh = run("%%miragic --seed 7 -W 256 -H 256 --fresh\nthe same request")
    assert fresh.error is None, fresh.text
    assert api.count("POST") == 2
    assert not ip.user_ns["_"].metadata.get("reused")


def test_config_sets_the_defaults(
    run: Runner, ip: InteractiveShell, magic: Miragic, api: Emulator
) -> None:
    assert run('%config Miragic.model = "turbo"').error is None
    assert run("%config Miragic.width = 320").error is None
    assert run("%config Miragic.height = 256").error is None
    cell = run("%%miragic\nconfigured")
    assert cell.error is None, cell.text
    form = api.jobs[only_job(api)].form
    assert (form["model"], form["width"], form["height"]) == ("turbo", "320", "256")
    listing = run("%config Miragic")
    for trait in ("model", "width", "height", "timeout", "base_url", "offline_fallback"):
        assert f"Miragic.{trait}" in listing.io.stdout
    assert "key" not in magic.trait_names()  # the key is never a setting


def test_config_refuses_bad_defaults(
    run: Runner, ip: InteractiveShell, magic: Miragic, caplog: pytest.LogCaptureFixture
) -> None:
    run('%config Miragic.model = "dalle"')  # %config reports errors through logging
    assert "must be one of flux, turbo, gptimage, kontext" in caplog.text
    assert magic.model == "flux"
    run("%config Miragic.width = 99999")
    assert "from 256 to 2048" in caplog.text
    assert magic.width == 1024


def test_ipython_config_file_settings_apply(ip: InteractiveShell) -> None:
    from miragic_nb._magic.magic import load_ipython_extension

    ip.config.Miragic.width = 768  # what c.Miragic.width = 768 in ipython_config.py does
    load_ipython_extension(ip)
    assert ip.magics_manager.registry["Miragic"].width == 768


def test_load_twice_unload_and_reload(run: Runner, ip: InteractiveShell) -> None:
    from miragic_nb._magic.magic import load_ipython_extension, unload_ipython_extension

    def count() -> int:
        return sum(type(c).__name__ == "Miragic" for c in ip.configurables)

    load_ipython_extension(ip)
    assert count() == 1
    unload_ipython_extension(ip)
    assert count() == 0
    gone = run("%%miragic\nno magic")
    assert "Cell magic `%%miragic` not found" in gone.text
    assert run("%load_ext miragic_nb").error is None
    assert run("%reload_ext miragic_nb").error is None
    assert count() == 1
    assert ip.find_cell_magic("miragic") is not None
    assert ip.find_line_magic("miragic") is not None
    assert run("%unload_ext miragic_nb").error is None


def test_usage_help_comes_from_magic_arguments(run: Runner, ip: InteractiveShell) -> None:
    doc = ip.find_cell_magic("miragic").__doc__
    assert doc.startswith("::\n\n  %%miragic [-m MODEL]")  # a cell magic: its usage says so
    for option in ("--width", "--size WxH", "--image-url", "--[no-]enhance", "--n N", "--fresh"):
        assert option.replace("[no-]", "") in doc.replace("[no-]", "")
    cell = run("%%miragic?")
    assert "--image-url" in cell.io.stdout
    assert "%%miragic [-m MODEL]" in cell.io.stdout


def test_widget_progress_becomes_the_caption(
    run: Runner, ip: InteractiveShell, magic: Miragic, api: Emulator
) -> None:
    magic.progress = "widgets"
    cell = run("%%miragic -W 256 -H 256\nwidget view")
    assert cell.error is None, cell.text
    views = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(views) == 2  # the bar, then the same bar re-published with its final text
    final = views[-1].data["text/plain"]
    assert final.startswith("done · flux · 256×256")
    assert only_job(api) in final
    assert len(cell.image_outputs()) == 1


@pytest.mark.parametrize("progress", ["text", "widgets"])
def test_no_key_uses_the_builtin_emulator_and_says_so_once(
    run: Runner, ip: InteractiveShell, magic: Miragic, progress: str
) -> None:
    from miragic_nb import session as builtin

    magic.progress = progress
    builtin.builtin_emulator().job_seconds = 0.2  # started here only to make its jobs short
    first = run("%%miragic -W 256 -H 256\noffline one")
    second = run("%%miragic -W 256 -H 256\noffline two")
    assert first.error is None, first.text
    assert second.error is None, second.text
    notice = "no MIRAGIC_API_KEY: using the offline emulator, placeholder images"
    assert (first.text + second.text).count(notice) == 1
    image = ip.user_ns["_"]
    assert image.metadata["emulator"] is True
    assert "emulator (placeholder image)" in second.image_outputs()[0]["text/plain"]


def test_a_terminal_shell_gets_the_text_progress_by_default(
    run: Runner, magic: Miragic, api: Emulator
) -> None:
    magic.progress = "auto"  # the test shell is IPython's TerminalInteractiveShell
    cell = run("%%miragic -W 256 -H 256\nterminal")
    assert cell.error is None, cell.text
    assert not any("application/vnd.jupyter.widget-view+json" in o.data for o in cell.outputs)
    job_id = only_job(api)
    assert "done · 100% · " in cell.io.stdout
    assert f"job {job_id}" in cell.io.stdout
