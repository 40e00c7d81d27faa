"""Progress in a real terminal and in a log: terminal IPython and the batch CLI run as
subprocesses, once on a pseudo-terminal (``pty``) and once with their output piped.

On a terminal the jobs of a cell are one line each, redrawn in place, their elapsed time moving
while they wait; in a log each job prints a line per change of state. The terminal's bytes are
replayed on a small screen model (the ANSI moves the views use) to see what a person would see.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from miragic_nb.emulator import Emulator

REPO = Path(__file__).resolve().parents[2]
ROWS, COLUMNS = 40, 100
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")  # a window title: nothing drawn
_ELAPSED = re.compile(r"(\d+\.\d)s")


@pytest.fixture
def slow_emulator() -> Iterator[Emulator]:
    # Long enough for several redraws while each job waits.
    with Emulator(api_key="sk-terminal-test-4d2a", job_seconds=1.5) as emulator:
        yield emulator


def environment(emulator: Emulator, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAGIC_")}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env.update(
        MIRAGIC_API_KEY=emulator.api_key,
        MIRAGIC_BASE_URL=emulator.url,
        MIRAGIC_HOME=str(home),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        TERM="xterm",
    )
    return env


def run_on_terminal(command: list[str], env: dict[str, str], *, limit: float = 120.0) -> str:
    """``command`` with stdin, stdout and stderr on a new pseudo-terminal of ROWS × COLUMNS;
    everything it wrote to the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        else:
            pytest.fail(f"{command} ran longer than {limit:g}s")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        os.close(master)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def run_piped(command: list[str], env: dict[str, str]) -> str:
    finished = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    return finished.stdout + finished.stderr


def screen(output: str) -> list[str]:
    """The rows a terminal shows after ``output``: text, \\r, \\n, cursor up/down, erase."""
    rows: list[list[str]] = [[]]
    row = column = 0
    position = 0
    while position < len(output):
        title = _OSC.match(output, position)
        if title:
            position = title.end()
            continue
        match = _CSI.match(output, position)
        if match:
            count = int(match.group(1) or "1") if match.group(1).isdigit() else 1
            code = match.group(2)
            if code == "A":
                row = max(row - count, 0)
            elif code == "B":
                row += count
            elif code == "K":
                del rows[row][column:]
            position = match.end()
            while len(rows) <= row:
                rows.append([])
            continue
        char = output[position]
        position += 1
        if char == "\r":
            column = 0
        elif char == "\n":
            row += 1
            column = 0
            while len(rows) <= row:
                rows.append([])
        elif char == "\x1b":
            continue  # another escape (a title, a mode): nothing drawn
        else:
            line = rows[row]
            line.extend(" " * (column - len(line)))
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
    return ["".join(line).rstrip() for line in rows]


def magic_script(tmp_path: Path, line: str, prompt: str) -> Path:
    script = tmp_path / "cell.ipy"
    script.write_text(
        "%load_ext miragic_nb\n"
        f"get_ipython().run_cell_magic('miragic', {line!r}, {prompt!r})\n"
        "print('cell finished')\n"
    )
    return script


def ipython(script: Path) -> list[str]:
    # term_title off: older IPython releases set the terminal's title even on a pipe.
    return [
        sys.executable,
        "-m",
        "IPython",
        "--no-banner",
        "--colors=NoColor",
        "--TerminalInteractiveShell.term_title=False",
        str(script),
    ]


def test_terminal_ipython_redraws_several_jobs_in_place(
    slow_emulator: Emulator, tmp_path: Path
) -> None:
    script = magic_script(tmp_path, "--n 4 --size 256x256", "a fox in the snow")

    output = run_on_terminal(ipython(script), environment(slow_emulator, tmp_path / "home"))

    shown = screen(output)
    labels = [f"#{i}:" for i in range(1, 5)]
    # One row per job, whatever happened in between, each ending "completed".
    for label in labels:
        rows = [row for row in shown if row.startswith(label)]
        assert len(rows) == 1, shown
        assert rows[0].startswith(f"{label} completed · "), shown
    job_rows = [row for row in shown if row.startswith("#")]
    assert len(job_rows) == 4, shown
    assert all(len(row) < COLUMNS for row in shown)
    # While a job waited its elapsed time moved (redraws of the same row, not new lines).
    waiting = [
        float(m.group(1))
        for text in re.split(r"[\r\n]", output)
        if "#1: pending" in text
        for m in [_ELAPSED.search(text.split("#1: pending", 1)[1])]
        if m
    ]
    assert len(set(waiting)) >= 3, waiting
    assert output.count("\n") < 12, output  # four rows, a summary, the script's own line


def test_a_log_gets_one_line_per_change_of_state(slow_emulator: Emulator, tmp_path: Path) -> None:
    script = magic_script(tmp_path, "--n 4 --size 256x256", "a fox in the snow")

    output = run_piped(ipython(script), environment(slow_emulator, tmp_path / "home"))

    assert "\x1b[" not in output
    assert "\r" not in output
    lines = [line for line in output.splitlines() if line.startswith("#")]
    changes = [line.split(" · ", 1)[0] for line in lines]  # "#2: pending"
    assert len(changes) == len(set(changes)), lines  # no state printed twice
    for label in ("#1", "#2", "#3", "#4"):
        assert f"{label}: completed" in changes
    assert any(line.startswith("4 jobs · 4 completed · ") for line in output.splitlines())


def test_the_batch_line_moves_on_a_terminal_and_counts_no_credit_before_it_is_done(
    slow_emulator: Emulator, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue owl\na green frog\n")
    command = [
        sys.executable,
        "-m",
        "miragic_nb",
        "batch",
        str(prompts),
        "--out",
        str(tmp_path / "out"),
        "--size",
        "256x256",
    ]

    output = run_on_terminal(command, environment(slow_emulator, tmp_path / "home"))

    drawn = [text for text in re.split(r"[\r\n]", output) if text.startswith("batch ")]
    # Redrawn in place: the screen keeps one batch row, and it says how it ended.
    rows = [row for row in screen(output) if row.startswith("batch ")]
    assert len(rows) == 1, screen(output)
    assert rows[0].startswith("batch 3/3: completed · 3 completed"), rows
    # Its time moved while the first jobs waited.
    waiting = [
        float(m.group(1))
        for text in drawn
        if text.startswith("batch 0/3: ")
        for m in [_ELAPSED.search(text)]
        if m
    ]
    assert len(set(waiting)) >= 3, drawn
    # No credit is claimed for a job that has not finished.
    for text in drawn:
        claimed = re.search(r"(\d+) credits", text)
        completed = re.search(r"(\d+) (?:completed|done)", text)
        if claimed:
            assert completed is not None, text
            assert int(claimed.group(1)) <= int(completed.group(1)), text
