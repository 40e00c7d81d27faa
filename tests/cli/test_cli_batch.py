"""``python -m miragic_nb batch``: files of prompts to a folder of images and a manifest,
against an emulator on loopback; bad lines refused before any request; a ``kill -9`` and a
rerun that pays for nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from miragic_nb.__main__ import main
from miragic_nb._cli.batch import slug
from miragic_nb.emulator import Emulator

CREATE = "/api/v1/image/generate"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(api_key="test-key-0123456789", job_seconds=0.2) as emulator:
        monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
        monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
        yield emulator


def _manifest(folder: Path) -> list[dict[str, object]]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_txt_file_becomes_images_and_a_manifest(
    keyed: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "prompts.txt"
    source.write_text("A red fox!\n\na blue owl\n")
    out = tmp_path / "out"
    assert main(["batch", str(source), "--out", str(out), "--size", "256x320"]) == 0
    entries = _manifest(out)
    assert [e["index"] for e in entries] == [0, 1]
    assert [e["file"] for e in entries] == ["0000-a-red-fox.jpg", "0001-a-blue-owl.jpg"]
    assert all(e["status"] == "completed" and e["job_id"] for e in entries)
    assert entries[0]["options"]["width"] == 256  # type: ignore[index]
    assert (out / "0000-a-red-fox.jpg").stat().st_size > 0
    assert "2/2" in capsys.readouterr().err  # the progress line is on stderr
    # The same arguments again: everything from the store, nothing sent.
    keyed.clear_requests()
    assert main(["batch", str(source), "--out", str(out), "--size", "256x320"]) == 0
    assert keyed.count("POST", CREATE) == 0


def test_csv_and_jsonl_items_with_their_own_options(keyed: Emulator, tmp_path: Path) -> None:
    table = tmp_path / "items.csv"
    table.write_text("prompt,width,height,seed\na cat,256,256,3\na dog,,,\n")
    lines = tmp_path / "items.jsonl"
    lines.write_text('{"prompt": "a cow", "width": 320, "height": 256}\n')
    assert main(["batch", str(table), "--out", str(tmp_path / "a"), "--size", "288x288"]) == 0
    assert main(["batch", str(lines), "--out", str(tmp_path / "b")]) == 0
    first = _manifest(tmp_path / "a")
    assert [(e["options"]["width"], e["options"]["seed"]) for e in first] == [  # type: ignore[index]
        (256, 3),
        (288, None),
    ]
    assert _manifest(tmp_path / "b")[0]["options"]["width"] == 320  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "prompt,colour\nx,red\n", "a.csv line 1: unknown column 'colour'"),
        ("b.csv", "model,width\nflux,256\n", "b.csv line 1: the header has no 'prompt' column"),
        ("c.csv", "prompt,width\n" + "ok,256\n" * 35 + "bad,12\n", "c.csv line 37: width"),
        ("d.jsonl", '{"prompt": "x"}\n[1]\n', "d.jsonl line 2: an item must be a JSON object"),
        ("e.txt", "fine\n\n", None),
    ],
)
def test_bad_input_is_refused_by_line_before_anything_is_sent(
    keyed: Emulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
    message: str | None,
) -> None:
    source = tmp_path / name
    source.write_text(text)
    arguments = ["batch", str(source), "--out", str(tmp_path / "out")]
    if message is None:  # a good file with a bad flag
        arguments += ["--size", "256by256"]
        message = "--size must be WIDTHxHEIGHT"
    assert main(arguments) == 2
    assert message in capsys.readouterr().err
    assert keyed.requests == []
    assert not (tmp_path / "out").exists()


def test_dry_run_and_max_credits_send_nothing(
    keyed: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "p.txt"
    source.write_text("one\ntwo\nthree\n")
    out = str(tmp_path / "out")
    assert main(["batch", str(source), "--out", out, "--dry-run"]) == 0
    assert "3 to create (3 credits)" in capsys.readouterr().out
    assert main(["batch", str(source), "--out", out, "--max-credits", "2"]) == 2
    assert "max_credits is 2" in capsys.readouterr().err
    assert keyed.requests == []


def test_a_failed_item_makes_the_exit_status_non_zero(keyed: Emulator, tmp_path: Path) -> None:
    keyed.faults.configure(force_failure=True, failure_match="doomed")
    source = tmp_path / "p.txt"
    source.write_text("fine\ndoomed\n")
    assert main(["batch", str(source), "--out", str(tmp_path / "out"), "--size", "256x256"]) == 1
    entries = _manifest(tmp_path / "out")
    assert [e["status"] for e in entries] == ["completed", "failed"]
    assert "failed" in str(entries[1]["error"])


def test_kill_9_then_a_rerun_pays_for_nothing_twice(tmp_path: Path) -> None:
    source = tmp_path / "p.txt"
    count = 12
    source.write_text("".join(f"kill test {n}\n" for n in range(count)))
    out = tmp_path / "out"
    with Emulator(api_key="test-key-0123456789", job_seconds=1.5) as emulator:
        environment = {
            **os.environ,
            "MIRAGIC_API_KEY": emulator.api_key,
            "MIRAGIC_BASE_URL": emulator.url,
        }
        command = [sys.executable, "-m", "miragic_nb", "batch", str(source), "--out", str(out)]
        command += ["--size", "256x256", "--concurrency", "3"]
        process = subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(emulator.jobs) < 4 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        assert 0 < len(emulator.jobs) < count  # killed part-way
        rerun = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=120, check=False
        )
        prompts = Counter(job.prompt for job in emulator.jobs.values())
    assert set(prompts.values()) == {1}  # no item was paid for twice
    entries = _manifest(out)
    assert [e["index"] for e in entries] == list(range(count))
    statuses = Counter(str(e["status"]) for e in entries)
    assert set(statuses) <= {"completed", "uncertain"}
    assert statuses["uncertain"] <= 3  # at most the concurrency had a create in flight
    assert rerun.returncode == (1 if statuses["uncertain"] else 0)
    completed = [e for e in entries if e["status"] == "completed"]
    assert len({e["job_id"] for e in completed}) == len(completed)
    for entry in entries:
        if entry["status"] == "completed":
            assert (out / str(entry["file"])).stat().st_size > 0


def test_slug() -> None:
    assert slug("A red fox, at dawn!") == "a-red-fox-at-dawn"
    assert slug("Café über") == "cafe-uber"
    assert slug("!!!") == "image"


def test_ctrl_c_writes_what_it_knows_exits_130_and_says_to_rerun(tmp_path: Path) -> None:
    """A real SIGINT to a real process: no traceback, no crash, the manifest says how each
    item ended, and the same command again resumes without paying twice."""
    source = tmp_path / "p.txt"
    source.write_text("".join(f"stopped item {n}\n" for n in range(6)))
    out = tmp_path / "out"
    with Emulator(api_key="test-key-0123456789", job_seconds=120.0) as emulator:
        environment = {
            **os.environ,
            "MIRAGIC_API_KEY": emulator.api_key,
            "MIRAGIC_BASE_URL": emulator.url,
        }
        command = [sys.executable, "-m", "miragic_nb", "batch", str(source), "--out", str(out)]
        command += ["--size", "256x256", "--concurrency", "2"]
        process = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            # Both jobs the concurrency allows exist (the rest wait for a slot).
            while len(emulator.jobs) < 2 and process.poll() is None:
                assert time.monotonic() < deadline, "the batch never created its jobs"
                time.sleep(0.02)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert "closed database" not in stderr
        assert "Rerun the same command to resume" in stderr
        created = set(emulator.jobs)
        assert len(created) == 2
        entries = _manifest(out)
        assert [e["index"] for e in entries] == list(range(6))
        by_status = Counter(str(e["status"]) for e in entries)
        assert by_status == {"interrupted": 2, "never sent": 4}
        assert {e["job_id"] for e in entries if e["status"] == "interrupted"} == created
        assert not any("client." in str(e["error"]) for e in entries)  # no Python advice
        # The same command again: the two jobs are picked up, four are created, none twice.
        for job in emulator.jobs.values():
            job.duration = 0.0
        emulator.job_seconds = 0.2
        rerun = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=120, check=False
        )
        assert rerun.returncode == 0, rerun.stderr
        prompts = Counter(job.prompt for job in emulator.jobs.values())
    assert len(prompts) == 6
    assert set(prompts.values()) == {1}
    assert {str(e["status"]) for e in _manifest(out)} == {"completed"}


@pytest.fixture
def no_key() -> Iterator[None]:
    from miragic_nb import session

    session.reset()
    yield
    session.reset()


def test_without_a_key_the_cli_runs_on_the_built_in_emulator(
    no_key: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "p.txt"
    source.write_text("an offline fox\n")
    out = tmp_path / "out"
    assert main(["batch", str(source), "--out", str(out), "--size", "256x256"]) == 0
    err = capsys.readouterr().err
    assert "built-in emulator" in err
    assert "MIRAGIC_API_KEY" in err
    assert "%miragic" not in err
    assert [e["status"] for e in _manifest(out)] == ["completed"]


@pytest.mark.parametrize("refusal", ["env", "flag"])
def test_the_emulator_can_be_refused_in_command_line_words(
    refusal: str,
    no_key: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "p.txt"
    source.write_text("a fox\n")
    command = ["batch", str(source), "--out", str(tmp_path / "out")]
    if refusal == "env":
        monkeypatch.setenv("MIRAGIC_OFFLINE_FALLBACK", "0")
    else:
        command.append("--no-offline-fallback")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "MIRAGIC_API_KEY environment variable" in err
    assert "%miragic" not in err
    assert "notebook" not in err
    from miragic_nb import session

    assert session.builtin_emulator_running() is None


def test_unseeded_prompts_into_a_new_folder_make_new_pictures_and_seeded_ones_are_reused(
    keyed: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "prompts.txt"
    source.write_text("a red fox\n")
    seeded = tmp_path / "seeded.jsonl"
    seeded.write_text(json.dumps({"prompt": "a grey wolf", "seed": 7}) + "\n")
    small = ["--size", "256x256"]
    assert main(["batch", str(source), "--out", str(tmp_path / "first"), *small]) == 0
    assert main(["batch", str(seeded), "--out", str(tmp_path / "first-seeded"), *small]) == 0
    assert keyed.count("POST", CREATE) == 2
    # The same files into new folders: one rule with the magic's, whatever the folder.
    assert main(["batch", str(source), "--out", str(tmp_path / "second"), *small]) == 0
    assert keyed.count("POST", CREATE) == 3  # unseeded: a new picture
    assert main(["batch", str(seeded), "--out", str(tmp_path / "second-seeded"), *small]) == 0
    assert keyed.count("POST", CREATE) == 3  # seeded: the saved result, no new credit
    first, second = _manifest(tmp_path / "first"), _manifest(tmp_path / "second")
    assert first[0]["job_id"] != second[0]["job_id"]
    # The same file into the same folder again resumes the batch: nothing sent.
    assert main(["batch", str(source), "--out", str(tmp_path / "second"), *small]) == 0
    assert keyed.count("POST", CREATE) == 3


def test_links_planted_in_the_out_folder_are_never_written_through(
    keyed: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "p.txt"
    source.write_text("A red fox\n")
    out = tmp_path / "out"
    out.mkdir()
    victims = {
        name: tmp_path / f"victim-{n}"
        for n, name in enumerate(
            ["0000-a-red-fox.jpg.partial", "0000-a-red-fox.jpg", "manifest.jsonl.partial"]
        )
    }
    for name, victim in victims.items():
        victim.write_text("keep me")
        (out / name).symlink_to(victim)
    assert main(["batch", str(source), "--out", str(out), "--size", "256x256"]) == 0
    for victim in victims.values():
        assert victim.read_text() == "keep me"
    image = out / "0000-a-red-fox.jpg"
    assert not image.is_symlink()
    assert image.read_bytes()[:2] == b"\xff\xd8"
    assert [e["status"] for e in _manifest(out)] == ["completed"]
    assert not list(out.glob(".*.partial"))


def test_a_manifest_that_is_a_link_is_refused_before_anything_is_sent(
    keyed: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "p.txt"
    source.write_text("A red fox\n")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (out / "manifest.jsonl").symlink_to(victim)
    assert main(["batch", str(source), "--out", str(out)]) == 2
    assert "manifest.jsonl is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "keep me"
    assert keyed.count("POST", CREATE) == 0


def test_the_manifest_is_never_appended_through_a_link(tmp_path: Path) -> None:
    from miragic_nb._cli.batch import _append_no_follow

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "manifest.jsonl").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        _append_no_follow(tmp_path / "manifest.jsonl")
    assert victim.read_text() == "keep me"
