"""``%%miragic`` sweeps and dry runs in a real IPython shell against the emulator: seed
ranges, a prompt template over a list variable, a grid labelled by the swept values, more
jobs per cell than run at once, and ``--dry-run`` sending nothing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import pytest
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb._magic.magic import Miragic
from miragic_nb._magic.sweeps import prompts, seeds
from miragic_nb._views.gallery import ImageGrid
from miragic_nb.emulator import Emulator

if TYPE_CHECKING:
    from .magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]  # the ip, magic, api and run fixtures

CREATE = "/api/v1/image/generate"


def test_a_seed_range_makes_a_job_per_seed_labelled_by_it(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    cell = run("%%miragic --seed 3..5 -W 256 -H 256\na lighthouse")
    assert cell.error is None, cell.text
    grid = ip.user_ns["_"]
    assert isinstance(grid, ImageGrid)
    assert grid.labels == ["seed 3", "seed 4", "seed 5"]
    assert sorted(job.seed for job in api.jobs.values()) == [3, 4, 5]


def test_a_sweep_over_a_list_variable_labels_the_grid_by_its_values(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    ip.user_ns["animals"] = ["fox", "owl"]
    cell = run("%%miragic --sweep animals --seed 1..2 -W 256 -H 256\na {animals} in the snow")
    assert cell.error is None, cell.text
    grid = ip.user_ns["_"]
    assert grid.labels == ["fox · seed 1", "fox · seed 2", "owl · seed 1", "owl · seed 2"]
    assert grid.columns == 2
    assert sorted(job.prompt for job in api.jobs.values()) == [
        "a fox in the snow",
        "a fox in the snow",
        "a owl in the snow",
        "a owl in the snow",
    ]


def test_more_jobs_than_run_at_once(
    run: Runner, ip: InteractiveShell, magic: Miragic, api: Emulator
) -> None:
    ip.run_line_magic("config", "Miragic.max_concurrency = 4")
    cell = run("%%miragic --seed 1..20 -W 256 -H 256\nmany;")
    assert cell.error is None, cell.text
    assert len(api.jobs) == 20


def test_a_dry_run_prints_the_plan_and_sends_nothing(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    ip.user_ns["animals"] = ["fox", "owl", "cat"]
    cell = run("%%miragic --dry-run --sweep animals --seed 1..2 -W 256 -H 256\na {animals}")
    assert cell.error is None, cell.text
    assert "6 jobs, up to 6 credits" in cell.text
    assert "flux 256×256 seed 2: a cat" in cell.text
    assert api.requests == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--seed 5..2", "a seed range goes up"),
        ("--seed 1..65", "at most 64 seeds"),
        ("--sweep missing", "missing must be a non-empty list"),
        ("--sweep animals --seed 1", "the prompt never says {animals}"),
        ("--seed 1..3 --n 2", "either --n or a seed range"),
        ("--sweep animals --seed 1..40", "at most 64 per cell"),
    ],
)
def test_bad_sweeps_are_refused_before_any_request(
    run: Runner, ip: InteractiveShell, api: Emulator, line: str, message: str
) -> None:
    ip.user_ns["animals"] = ["fox", "owl"]
    body = "a prompt" if "never says" in message else "a {animals}"
    cell = run(f"%%miragic {line}\n{body}")
    assert cell.error is not None
    assert message in str(cell.error)
    assert api.requests == []


def test_sweep_parsing() -> None:
    assert seeds("7") == (7,)
    assert seeds(" 1 .. 3 ") == (1, 2, 3)
    with pytest.raises(argparse.ArgumentTypeError):
        seeds("1..x")
    variants = prompts("a {w}", {"w": ["x", "y"]}, "w")
    assert [(v.prompt, v.label) for v in variants] == [("a x", "x"), ("a y", "y")]


def test_a_dry_run_of_identical_jobs_says_so_in_one_line(run: Runner, api: Emulator) -> None:
    cell = run("%%miragic --dry-run --n 20 -W 256 -H 256\nthe same harbour")
    assert cell.error is None, cell.text
    lines = cell.io.stdout.splitlines()
    assert lines[0] == "  20 × flux 256×256: the same harbour"
    assert "20 jobs, up to 20 credits" in lines[1]
    assert len(lines) == 2
    assert api.requests == []
