"""``python -m miragic_nb app`` without a browser: its options, and what it says on start.

The page itself is driven in Chromium by ``tests/test_app_browser.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from miragic_nb.__main__ import main
from miragic_nb._cli import app


def test_the_start_message_names_the_url_who_pays_and_the_save_folder(tmp_path: Path) -> None:
    settings = app.AppSettings(save_dir=tmp_path, token="t0k")
    lines = app.start_message(settings, {"MIRAGIC_API_KEY": "sk-never-printed"})
    text = "\n".join(lines)
    assert lines[0] == "Miragic panel: http://127.0.0.1:8866/?token=t0k"
    assert "Whoever reaches this page spends the key's credits" in text
    assert "listens on 127.0.0.1 only" in text
    assert "the Miragic API at https://backend.miragic.ai" in text
    assert str(tmp_path) in text
    assert "sk-never-printed" not in text


def test_another_host_is_said_to_be_reachable_from_other_machines(tmp_path: Path) -> None:
    settings = app.AppSettings(host="0.0.0.0", port=9000, save_dir=tmp_path, token="t")
    text = "\n".join(app.start_message(settings, {}))
    assert "reachable from other machines" in text
    assert "built-in emulator" in text


def test_tokens_are_long_and_fresh() -> None:
    first, second = app.new_token(), app.new_token()
    assert first != second
    assert len(first) >= 32


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["app", "--port", "0"], "--port must be from 1 to 65535"),
        (["app", "--save-dir", "/nonexistent/miragic"], "is not a folder"),
    ],
)
def test_bad_options_are_refused_before_serving(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_the_app_notebook_is_one_panel_cell_saving_into_the_folder(tmp_path: Path) -> None:
    import nbformat

    path = app.write_app_notebook(tmp_path, tmp_path / "saves")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    (cell,) = notebook.cells
    assert f"os.chdir({str(tmp_path / 'saves')!r})" in cell.source
    assert f"Panel(save_dir={str(tmp_path / 'saves')!r})" in cell.source
    compile(cell.source, "app-cell", "exec")


def test_the_app_cell_saves_in_its_folder_whatever_the_page_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from PIL import Image

    from miragic_nb._core.images import GeneratedImage

    saves = tmp_path / "saves"
    saves.mkdir()
    monkeypatch.chdir(tmp_path)  # the cell moves to the save folder; this moves back after
    namespace: dict[str, object] = {}
    exec(compile(app.panel_source(saves), "app-cell", "exec"), namespace)
    panel = namespace["panel"]
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    try:
        panel._selected = GeneratedImage.from_bytes(buffer.getvalue(), {"job_id": "job-7"})  # type: ignore[attr-defined]
        # What a widget message from the browser does to the (disabled) field.
        panel.save_path.set_state({"value": str(tmp_path / "elsewhere.jpg")})  # type: ignore[attr-defined]
        panel.save_button.click()  # type: ignore[attr-defined]
    finally:
        panel.close()  # type: ignore[attr-defined]
    assert not (tmp_path / "elsewhere.jpg").exists()
    assert [p.name for p in saves.iterdir()] == ["miragic-job-7.jpg"]
