"""The panel's results: gallery and selection, "Use as input" chains, Save, and where the key is
(nowhere in a widget), plus the built-in emulator fallback when no key is configured."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import ipywidgets as widgets
import pytest
from PIL import Image

from miragic_nb import session as builtin
from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.images import GeneratedImage
from miragic_nb._panel.panel import Panel
from miragic_nb._store.history import read_embedded_metadata
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator
from tests.panel_fixtures import CREATE, panel, trait_text, until, widget_tree

__all__ = ["panel"]  # the fixture, used by name


def generate(panel: Panel, prompt: str) -> None:
    panel.prompt.value = prompt

    async def scenario() -> None:
        panel.generate_button.click()
        await panel.wait()

    asyncio.run(scenario())
    assert panel.history[0].state == "completed", panel.status.value


def test_gallery_is_newest_first_and_a_thumbnail_selects_its_result(panel: Panel) -> None:
    generate(panel, "first")
    generate(panel, "second")
    first, second = panel.images[1], panel.images[0]
    assert [c.result for c in panel.cards] == [second, first]
    assert panel.image is second  # a new result is shown at once

    panel.cards[1].select_button.click()
    assert panel.image is first
    assert panel.result_image.value == first.original_bytes
    assert "first" in panel.result_caption.value
    assert "solid" in panel.cards[1].layout.border
    assert "transparent" in panel.cards[0].layout.border
    # Thumbnails are small JPEGs, made once per result.
    thumb = Image.open(io.BytesIO(panel.cards[1].thumbnail.value))
    assert thumb.format == "JPEG"
    assert max(thumb.size) == 160


def test_use_as_input_chains_an_image_to_image_kontext_job(
    panel: Panel, emulator: Emulator
) -> None:
    generate(panel, "a red bicycle")
    source = panel.image
    assert source is not None
    source_url = source.metadata["result_url"]

    panel.cards[0].use_button.click()
    assert panel.model.value == "kontext"
    assert panel.image_url.value == source_url
    assert panel.image_url.disabled is False

    generate(panel, "make it blue")
    edited = panel.image
    assert edited is not None
    assert edited is not source
    assert edited.metadata["model"] == "kontext"
    assert edited.metadata["image_url"] == source_url
    server_job = emulator.jobs[str(edited.metadata["job_id"])]
    assert server_job.form["image_url"] == source_url
    assert server_job.form["model"] == "kontext"
    assert emulator.count("POST", CREATE) == 2


def test_the_same_seeded_request_again_reuses_the_saved_result(
    panel: Panel, emulator: Emulator
) -> None:
    panel.seed.value = "3"
    generate(panel, "a seeded picture")
    generate(panel, "a seeded picture")
    assert emulator.count("POST", CREATE) == 1  # one credit for two presses
    again, first = panel.images
    assert again.metadata.get("reused") is True
    assert again.metadata["job_id"] == first.metadata["job_id"]
    assert "reused from history" in panel.status.value


def test_use_as_input_button_acts_on_the_selected_result(panel: Panel) -> None:
    assert panel.use_as_input_button.disabled is True
    generate(panel, "one")
    generate(panel, "two")
    panel.cards[1].select_button.click()
    panel.use_as_input_button.click()
    assert panel.image_url.value == panel.images[1].metadata["result_url"]


def test_save_writes_the_original_bytes_with_prompt_and_parameters(
    panel: Panel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel.seed.value = "11"
    generate(panel, "a saved picture")
    image = panel.image
    assert image is not None

    panel.save_path.value = str(tmp_path / "keep")
    panel.save_button.click()
    saved = tmp_path / "keep.jpg"
    assert saved.is_file()
    assert str(saved) in panel.save_message.value
    data = saved.read_bytes()
    meta = read_embedded_metadata(data)
    assert meta is not None
    assert (meta["prompt"], meta["seed"], meta["model"]) == ("a saved picture", 11, "flux")
    assert meta["job_id"] == image.metadata["job_id"]
    # The server's bytes plus a comment segment: same pixels, no re-encode.
    assert len(data) > len(image.original_bytes)
    assert Image.open(saved).tobytes() == Image.open(io.BytesIO(image.original_bytes)).tobytes()

    # A card's Save with a blank path writes miragic-<job>.jpg in the current directory.
    monkeypatch.chdir(tmp_path)
    panel.save_path.value = ""
    panel.cards[0].save_button.click()
    assert (tmp_path / f"miragic-{image.metadata['job_id']}.jpg").is_file()

    # A folder gets the default name inside it.
    folder = tmp_path / "folder"
    folder.mkdir()
    assert panel.save(path=folder) == folder / f"miragic-{image.metadata['job_id']}.jpg"


def test_save_into_a_missing_place_says_why_beside_save(panel: Panel, tmp_path: Path) -> None:
    generate(panel, "nowhere to go")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    panel.save_path.value = str(blocker / "inside.jpg")
    panel.save_button.click()
    assert "✗" in panel.save_message.value
    assert not (blocker / "inside.jpg").exists()


def test_save_to_a_path_ending_in_a_slash_saves_inside_a_new_folder_and_says_so_beside_save(
    panel: Panel, tmp_path: Path
) -> None:
    generate(panel, "a picture for a new folder")
    image = panel.image
    assert image is not None
    status = panel.status.value
    folder = tmp_path / "some" / "folder"
    panel.save_path.value = f"{folder}/"
    panel.save_button.click()

    saved = folder / f"miragic-{image.metadata['job_id']}.jpg"
    assert saved.is_file()
    assert not (tmp_path / "some" / "folder.jpg").exists()
    meta = read_embedded_metadata(saved.read_bytes())
    assert meta is not None
    assert meta["job_id"] == image.metadata["job_id"]
    # Said beside the button that was pressed, naming the file and the folder it made.
    said = panel.save_message.value
    assert f"Saved {saved}, in the new folder {folder}" in said
    (row,) = [w for w in widget_tree(panel) if panel.save_button in getattr(w, "children", ())]
    assert panel.save_message in row.children
    assert panel.status.value == status  # the status line far above stays as it was

    # Saved again into the folder, now there: the same place, and no "new folder".
    panel.save_button.click()
    assert "new folder" not in panel.save_message.value
    assert sorted(p.name for p in folder.iterdir()) == [saved.name]


def test_a_cards_save_speaks_under_that_card(
    panel: Panel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(panel, "older")
    generate(panel, "newer")
    monkeypatch.chdir(tmp_path)
    panel.save_path.value = "cards/"
    older = panel.cards[1]
    older.save_button.click()
    saved = tmp_path / "cards" / f"miragic-{older.result.metadata['job_id']}.jpg"
    assert saved.is_file()
    assert "Saved cards/" in older.save_message.value
    assert panel.cards[0].save_message.value == ""
    assert panel.save_message.value == ""  # that Save is the shown result's, not this one's


def test_no_widget_trait_holds_the_api_key(emulator: Emulator) -> None:
    secret = "sk-panel-secret-5b0c2f7e91"
    with (
        Emulator(api_key=secret, job_seconds=0.2) as keyed,
        Client(api_key=secret, base_url=keyed.url) as client,
    ):
        panel = Panel(client)
        generate(panel, "key hunt")
        everything = trait_text(panel)
        # The walk reaches the result image bytes and the gallery, so it could see a key ...
        assert panel.image is not None
        assert any(isinstance(w, widgets.Image) and w.value for w in widget_tree(panel))
        assert str(panel.image.metadata["job_id"]) in everything
        assert secret not in everything
        assert secret not in repr(panel)
        # ... and it does see one typed into a field.
        panel.seed.value = secret
        assert secret in trait_text(panel)
        panel.close()


@pytest.fixture
def builtin_fallback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    builtin.reset()
    yield
    builtin.reset()


def test_without_a_key_the_panel_uses_the_builtin_emulator_and_says_so(
    builtin_fallback: None,
) -> None:
    panel = Panel()
    assert panel.is_emulator
    assert "offline emulator" in panel.header.value
    assert "%miragic login" in panel.header.value
    assert builtin.builtin_emulator_running() is None  # making a panel starts nothing
    builtin.builtin_emulator().job_seconds = 0.2  # started here only to make its jobs short
    generate(panel, "offline")
    assert panel.image is not None
    assert panel.image.metadata.get("emulator") is True
    assert "emulator" in panel.result_caption.value
    panel.close()


def test_with_a_key_in_the_environment_there_is_no_emulator_notice(
    builtin_fallback: None, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    panel = Panel()
    assert not panel.is_emulator
    assert "emulator" not in panel.header.value
    panel.prompt.value = "configured"
    job = panel.generate()  # no running loop: runs to the end
    assert job is not None
    assert job.job_id in emulator.jobs
    assert builtin.builtin_emulator_running() is None
    panel.close()


def test_without_a_key_and_without_the_fallback_generate_says_how_to_get_one(
    builtin_fallback: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_OFFLINE_FALLBACK", "0")
    panel = Panel()
    assert "MIRAGIC_API_KEY" in panel.status.value
    panel.prompt.value = "no key"
    assert panel.generate() is None
    assert "%miragic login" in panel.status.value
    assert panel.history == []
    panel.close()


def test_close_cancels_running_jobs_and_closes_every_widget(
    panel: Panel, emulator: Emulator
) -> None:
    emulator.job_seconds = 60
    panel.prompt.value = "closed mid-job"

    async def scenario() -> None:
        panel.generate_button.click()
        await until(lambda: panel.history[0].job_id is not None)
        tree = widget_tree(panel)
        panel.close()
        await panel.wait()
        assert [w for w in tree if w.comm is not None] == []

    asyncio.run(scenario())
    assert panel.history[0].state == "cancelled"


def test_a_client_without_a_key_is_refused_before_anything_is_sent(emulator: Emulator) -> None:
    with Client(base_url=emulator.url) as keyless:
        panel = Panel(keyless)
        panel.prompt.value = "no key"
        assert panel.generate() is None
        assert "no API key" in panel.status.value
        assert panel.history == []
        assert emulator.requests == []
        panel.close()


@pytest.mark.parametrize("job_id", ["/../../escape", "../../escape", "..", "a/b/../../../c"])
def test_a_blank_save_path_never_leaves_the_current_folder(
    panel: Panel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_id: str
) -> None:
    # The default file name is made from the job id, which the server chose.
    work = tmp_path / "outer" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "JPEG")
    image = GeneratedImage.from_bytes(buffer.getvalue(), {"job_id": job_id, "prompt": "p"})

    saved = panel.save(image, path="")
    assert saved.parent == work
    assert saved.name.startswith("miragic-")
    assert saved.is_file()
    assert read_embedded_metadata(saved.read_bytes())["job_id"] == job_id  # type: ignore[index]
    # Nothing was written or created anywhere else.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path("outer"),
        Path("outer/work"),
        saved.relative_to(tmp_path),
    ]


def test_a_blank_save_path_shows_the_file_name_not_the_servers_folders(
    panel: Panel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The app serves the panel to people who must not learn the server's folders.
    work = tmp_path / "private-folder-name"
    work.mkdir()
    monkeypatch.chdir(work)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "JPEG")
    image = GeneratedImage.from_bytes(buffer.getvalue(), {"job_id": "job-1", "prompt": "p"})

    saved = panel.save(image, path="")
    assert saved.parent == work
    assert f"Saved {saved.name} in the current folder" in panel.save_message.value
    assert "private-folder-name" not in panel.save_message.value

    assert f"Saved {saved.name} in the current folder" in panel.save_message.value
    assert "private-folder-name" not in panel.save_message.value


def _jpeg_result(job_id: str = "job-1") -> GeneratedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "JPEG")
    return GeneratedImage.from_bytes(buffer.getvalue(), {"job_id": job_id, "prompt": "p"})


@pytest.mark.parametrize("sent", ["/tmp/elsewhere/x.jpg", "../outside.jpg", "sub/../../out.jpg"])
def test_a_confined_save_ignores_the_value_the_browser_sent(
    client: Client, tmp_path: Path, sent: str
) -> None:
    # The app's panel: its "Save to" is off in the page, but the kernel takes whatever value
    # the front end sends, exactly as this update from a comm message does.
    saves = tmp_path / "outer" / "saves"
    saves.mkdir(parents=True)
    panel = Panel(client, save_dir=saves)
    try:
        assert panel.save_path.disabled
        panel.save_path.set_state({"value": str(tmp_path / "outer" / sent.lstrip("/"))})
        panel._selected = _jpeg_result()
        panel.save_button.click()
        assert "✗" not in panel.save_message.value, panel.save_message.value
        assert [p.name for p in (tmp_path / "outer").rglob("*")] == ["saves", "miragic-job-1.jpg"]
        assert "Saved miragic-job-1.jpg in the save folder" in panel.save_message.value
        assert str(saves) not in panel.save_message.value
    finally:
        panel.close()


@pytest.mark.parametrize("given", ["/etc/x.jpg", "../out.jpg", "link/out.jpg"])
def test_a_confined_save_refuses_a_path_that_leaves_the_folder(
    client: Client, tmp_path: Path, given: str
) -> None:
    saves = tmp_path / "saves"
    saves.mkdir()
    (saves / "link").symlink_to(tmp_path)  # a folder link leading out
    panel = Panel(client, save_dir=saves)
    try:
        with pytest.raises(InvalidRequestError, match="must be inside the save folder"):
            panel.save(_jpeg_result(), path=given)
        assert sorted(p.name for p in tmp_path.rglob("*.jpg")) == []
        assert panel.save(_jpeg_result(), path="sub/kept") == saves.resolve() / "sub" / "kept.jpg"
    finally:
        panel.close()


def test_save_replaces_a_planted_link_instead_of_writing_through_it(
    panel: Panel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (work / "miragic-job-1.jpg").symlink_to(victim)
    monkeypatch.chdir(work)
    saved = panel.save(_jpeg_result(), path="")
    assert victim.read_text() == "keep me"
    assert not saved.is_symlink()
    assert saved.read_bytes()[:2] == b"\xff\xd8"
