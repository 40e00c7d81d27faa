"""``%miragic history`` filters, ``%miragic usage``, and the help the subcommand parsers write.

Every job here is a real one against the emulator, recorded in the test's own history store.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb._core.request import MODELS
from miragic_nb._core.states import STATUSES
from miragic_nb._magic.commands import COMMANDS, SUBCOMMANDS, parse_since
from miragic_nb._magic.magic import Miragic
from miragic_nb._store.history import UsageRow
from miragic_nb._views.tables import usage_bundle
from miragic_nb.emulator import Emulator

from .test_magic_errors import assert_one_short_line

if TYPE_CHECKING:
    from .magic_fixtures import Run, Runner

pytest_plugins = ["tests.magic_fixtures"]


def _make(run: Runner, ip: InteractiveShell, options: str, prompt: str) -> str:
    cell = run(f"%%miragic -W 256 -H 256 {options}\n{prompt}")
    assert cell.error is None, cell.text
    job_id: str = ip.user_ns["_"].metadata["job_id"]
    return job_id


def _fail(run: Runner, api: Emulator, prompt: str) -> None:
    api.faults.configure(force_failure=True, failure_message="the server said no")
    assert run(f"%%miragic -W 256 -H 256\n{prompt}").error is not None
    api.faults.configure(force_failure=False)


def _table(cell: Run) -> dict[str, str]:
    assert cell.error is None, cell.text
    (bundle,) = [o.data for o in cell.outputs if "text/html" in o.data]
    return {key: str(value) for key, value in bundle.items()}


def _listed(cell: Run, job_ids: list[str]) -> list[str]:
    """Which of ``job_ids`` the history table shows, in its order (the text lines)."""
    lines = _table(cell)["text/plain"].splitlines()
    return [job_id for line in lines for job_id in job_ids if job_id in line]


def test_history_filters_by_prompt_model_status_and_date(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    fox = _make(run, ip, "--model turbo", "A Red Fox in the snow")
    whale = _make(run, ip, "--model flux", "a blue whale")
    owl = _make(run, ip, "--model flux", "an owl and a fox_cub 100%")
    _fail(run, api, "a failing harbour")
    (failed,) = set(api.jobs) - {fox, whale, owl}
    everything = [fox, whale, owl, failed]

    assert _listed(run("%miragic history"), everything) == [failed, owl, whale, fox]
    assert _listed(run("%miragic history 2"), everything) == [failed, owl]
    assert _listed(run("%miragic history --search FOX"), everything) == [owl, fox]
    assert _listed(run("%miragic history --search 'blue whale'"), everything) == [whale]
    # LIKE's own wildcards are plain text in a search.
    assert _listed(run("%miragic history --search fox_cub"), everything) == [owl]
    assert _listed(run("%miragic history --search 100%"), everything) == [owl]
    assert _listed(run("%miragic history --model TURBO"), everything) == [fox]
    assert _listed(run("%miragic history --status failed"), everything) == [failed]
    assert _listed(run("%miragic history --model flux --status COMPLETED 1"), everything) == [owl]
    assert _listed(run("%miragic history --since 1h --search fox"), everything) == [owl, fox]
    today = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    assert _listed(run(f"%miragic history --since {today}"), everything) == everything[::-1]

    tomorrow = f"{datetime.now(timezone.utc) + timedelta(days=1):%Y-%m-%d}"
    for line in (f"%miragic history --since {tomorrow}", "%miragic history --search nowhere"):
        cell = run(line)
        assert cell.error is None
        assert cell.io.stdout == "No jobs match these filters.\n"
        assert not any("text/html" in o.data for o in cell.outputs)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            "%miragic history --model dalle",
            f"unknown model 'dalle'; choose from {', '.join(MODELS)}",
        ),
        (
            "%miragic history --status DONE",
            f"unknown status 'DONE'; choose from {', '.join(STATUSES)}",
        ),
        ("%miragic history --since yesterday", "or a span back from now like 24h, 7d or 2w"),
        ("%miragic history --since 2026-13-01", "must be a date like 2026-11-30"),
        ("%miragic history --since \u0662\u0660\u0662\u0666-11-30", "must be a date like"),
        ("%miragic history --since 99999999999d", "must be a date like 2026-11-30"),
        ("%miragic history 0", "must be a positive integer, got '0'"),
        ("%miragic history --model", "argument --model: expected one argument"),
        ("%miragic history --notebook x.ipynb --model flux", "--notebook takes no N and no filter"),
        ("%miragic history --limit 3", "unexpected --limit;"),
        ("%miragic usage --by week", "invalid choice: 'week' (choose from 'model', 'day')"),
        ("%miragic usage --since last-week", "must be a date like 2026-11-30"),
        ("%miragic usage 10", "unexpected 10"),
        ("%miragic models --all", "unexpected --all"),
    ],
)
def test_bad_filters_are_one_line_saying_what_is_allowed(
    run: Runner, api: Emulator, line: str, says: str
) -> None:
    cell = run(line)
    assert isinstance(cell.error, UsageError), cell.text
    command = line.split()[1]
    text = assert_one_short_line(cell, f"UsageError: %miragic {command}", says)
    assert COMMANDS[command].parser.usage_line() in text  # and how to write it
    assert api.requests == []


def _usage_rows(cell: Run) -> dict[str, list[str]]:
    """The text table's rows by their first column (below the title and the header)."""
    lines = _table(cell)["text/plain"].splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}


def test_usage_counts_credits_jobs_failures_and_reuses(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    assert run("%miragic usage").io.stdout == "No jobs recorded yet.\n"
    seeded = _make(run, ip, "--model flux --seed 7", "a lighthouse <b>at night</b>")
    _make(run, ip, "--model flux", "a harbour")
    _make(run, ip, "--model turbo", "a gull")
    for _ in range(2):  # the same seeded request again: the saved result, no new job
        assert _make(run, ip, "--model flux --seed 7", "a lighthouse <b>at night</b>") == seeded
    _fail(run, api, "a storm")
    assert api.count("POST") == 4

    cell = run("%miragic usage")
    rows = _usage_rows(cell)
    header = _table(cell)["text/plain"].splitlines()[1]
    assert header.split() == ["model", "jobs", "credits", "failed", "reused", "(credits", "saved)"]
    # jobs, credits (the server's creditsUsed: 1 per finished emulator job), failed, reused
    assert rows == {
        "flux": ["3", "2", "1", "2"],
        "turbo": ["1", "1", "0", "0"],
        "total": ["4", "3", "1", "2"],
    }
    html = _table(cell)["text/html"]
    assert html.startswith("<p>Usage, all recorded jobs</p><table><tr><th>model</th>")
    assert "<td>flux</td><td>3</td><td>2</td><td>1</td><td>2</td>" in html

    today = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    by_day = run(f"%miragic usage --by day --since {today}")
    assert _usage_rows(by_day) == {today: ["4", "3", "1", "2"], "total": ["4", "3", "1", "2"]}
    assert _table(by_day)["text/plain"].startswith(f"Usage since {today} 00:00 UTC\nday ")
    assert _usage_rows(run("%miragic usage --since 7d"))["total"] == ["4", "3", "1", "2"]
    offset = run(f"%miragic usage --since {today}T01:00+01:00")  # midnight UTC, written in +01:00
    assert _table(offset)["text/plain"].startswith(f"Usage since {today} 00:00 UTC\n")
    tomorrow = f"{datetime.now(timezone.utc) + timedelta(days=1):%Y-%m-%d}"
    later = run(f"%miragic usage --since {tomorrow}")
    assert later.io.stdout == f"No jobs recorded since {tomorrow} 00:00 UTC.\n"


def test_the_usage_table_escapes_what_it_shows() -> None:
    rows = [UsageRow("<img src=x onerror=alert(1)>", 2, 1.5, 1, 0), UsageRow(None, 1, 0.0, 0, 3)]
    bundle = usage_bundle(rows, by="model", title="Usage, since <then> & now")
    assert "<img" not in bundle["text/html"]
    assert (
        "<td>&lt;img src=x onerror=alert(1)&gt;</td><td>2</td><td>1.5</td>" in bundle["text/html"]
    )
    assert "<p>Usage, since &lt;then&gt; &amp; now</p>" in bundle["text/html"]
    assert "<td>?</td><td>1</td><td>0</td><td>0</td><td>3</td>" in bundle["text/html"]
    assert bundle["text/plain"].splitlines()[-1].split() == ["total", "3", "1.5", "1", "3"]


def test_since_reads_dates_times_offsets_and_spans() -> None:
    assert parse_since("2026-11-30") == datetime(2026, 11, 30, tzinfo=timezone.utc)
    assert parse_since(" 2026-11-30T08:30 ") == datetime(2026, 11, 30, 8, 30, tzinfo=timezone.utc)
    assert parse_since("2026-11-30T08:30+01:00") == datetime(
        2026, 11, 30, 7, 30, tzinfo=timezone.utc
    )
    for text, span in (
        ("24h", timedelta(hours=24)),
        ("7D", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
    ):
        before = datetime.now(timezone.utc)
        moment = parse_since(text)
        assert before - span - timedelta(minutes=5) < moment <= datetime.now(timezone.utc) - span


def test_help_is_what_the_parsers_write(run: Runner, magic: Miragic) -> None:
    overview = run("%miragic help")
    assert overview.error is None
    text = overview.io.stdout
    for name in SUBCOMMANDS:
        assert COMMANDS[name].parser.usage_line() in text
        assert str(COMMANDS[name].parser.description)[:40] in text
    assert "%miragic history [N] [--search TEXT] [--model M] [--status S]" in text
    assert "%miragic usage [--since DATE] [--by model|day]" in text
    assert f"model: {', '.join(MODELS)}" in text  # the cell's options, from its parser
    assert "--image-url" in text

    shown = run("%miragic history --help")
    assert shown.error is None
    assert shown.io.stdout.startswith(
        "usage: %miragic history [N] [--search TEXT] [--model M] [--status S] [--since DATE] "
        "[--notebook PATH]\n"
    )
    for part in (*MODELS, *STATUSES, "24h, 7d, 2w", "default 10"):
        assert part in " ".join(shown.io.stdout.split())
    assert "-h, --help" not in shown.io.stdout
    resume = run("%miragic resume -h")
    assert resume.error is None
    assert resume.io.stdout.startswith("usage: %miragic resume JOB_ID [-o NAME] [--timeout S]\n")
    assert run("%miragic --help").io.stdout == text


def test_login_help_shows_help_and_asks_for_nothing(
    run: Runner, api: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_prompt(prompt: str = "") -> str:
        raise AssertionError("--help must not ask for a key")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    cell = run("%miragic login --help")
    assert cell.error is None
    assert cell.io.stdout.startswith("usage: %miragic login\n")
    refused = run("%miragic login --key sk-live-TYPED-4b3c2d")
    assert_one_short_line(refused, "UsageError: %miragic login takes no argument")
    assert "TYPED" not in refused.text
