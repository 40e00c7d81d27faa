"""Every option of ``%%miragic`` (its usage text, ``%%miragic?``) shows what it sends or changes.

Each spelling of each option has a case here that runs a real cell against the emulator and
checks the create call's form fields as the emulator recorded them, or the change the option
makes (no request, a wait cut short, a name in the namespace). A meta-test reads the magic's
own parser: an option added without a case here fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb._core.errors import JobTimeoutError
from miragic_nb._core.images import GeneratedImage
from miragic_nb._magic.magic import Miragic
from miragic_nb.emulator import Emulator

if TYPE_CHECKING:
    from tests.magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]  # the ip, magic, api and run fixtures

#: What every create call of these cases sends when no option says otherwise.
BASE = {"prompt": "a quiet harbour", "model": "flux", "width": "256", "height": "256"}

Case = Callable[[str, "Runner", InteractiveShell, Emulator], None]
CASES: dict[str, Case] = {}


def case(*spellings: str) -> Callable[[Case], Case]:
    """Register ``check`` as the case of every spelling of one option."""

    def register(check: Case) -> Case:
        for spelling in spellings:
            assert spelling not in CASES, spelling
            CASES[spelling] = check
        return check

    return register


def sent(api: Emulator) -> list[dict[str, str]]:
    """The form of every create call the emulator received, in the order they came."""
    return [r.form for r in api.requests if r.method == "POST"]


def forms(api: Emulator) -> list[dict[str, str]]:
    """The create calls' forms, less the seed the client picks when the cell names none."""
    return [{k: v for k, v in form.items() if k != "seed"} for form in sent(api)]


def seeds(api: Emulator) -> list[str]:
    return sorted((form["seed"] for form in sent(api)), key=int)


def ok(run: Runner, source: str) -> None:
    cell = run(source)
    assert cell.error is None, cell.text


@case("-m", "--model")
def _model(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, f"%%miragic {option} turbo -W 256 -H 256\na quiet harbour")
    assert forms(api) == [{**BASE, "model": "turbo"}]
    api.clear_requests()
    ok(run, f"%%miragic {option} flux,kontext -W 256 -H 256\na quiet harbour")
    assert sorted(f["model"] for f in forms(api)) == ["flux", "kontext"]  # one job per model


@case("-W", "--width")
def _width(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, f"%%miragic {option} 320 -H 256\na quiet harbour")
    assert forms(api) == [{**BASE, "width": "320"}]


@case("-H", "--height")
def _height(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, f"%%miragic -W 256 {option} 320\na quiet harbour")
    assert forms(api) == [{**BASE, "height": "320"}]


@case("--size")
def _size(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, f"%%miragic {option} 320x288\na quiet harbour")
    assert forms(api) == [{**BASE, "width": "320", "height": "288"}]


@case("--image-url")
def _image_url(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, "%%miragic --size 256x256 -o t_source\nthe source picture")
    url = ip.user_ns["t_source"].metadata["result_url"]
    api.clear_requests()
    ok(run, f"%%miragic -m kontext --size 256x256 {option} {url}\na quiet harbour")
    (form,) = forms(api)
    assert form == {**BASE, "model": "kontext", "image_url": url}


@case("--seed")
def _seed(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, f"%%miragic --size 256x256 {option} 42\na quiet harbour")
    assert sent(api) == [{**BASE, "seed": "42"}]
    api.clear_requests()
    ok(run, f"%%miragic --size 256x256 {option} 1..3\na quiet harbour")
    assert seeds(api) == ["1", "2", "3"]  # a range: a job per seed


@case("--sweep")
def _sweep(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ip.user_ns["t_moods"] = ["calm", "stormy"]
    ok(run, f"%%miragic --size 256x256 {option} t_moods\na {{t_moods}} harbour")
    assert sorted(f["prompt"] for f in forms(api)) == ["a calm harbour", "a stormy harbour"]


@case("--dry-run")
def _dry_run(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    cell = run(f"%%miragic --size 256x256 --seed 1..2 {option}\na quiet harbour")
    assert cell.error is None, cell.text
    assert api.requests == []  # nothing sent at all
    assert "2 jobs, up to 2 credits" in cell.io.stdout
    assert "flux 256×256 seed 2: a quiet harbour" in cell.io.stdout


def _flag(name: str, word: str) -> Case:
    def check(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
        ok(run, f"%%miragic --size 256x256 {option}\na quiet harbour")
        # The flag goes as the API's own word, and no other switch is sent with it.
        assert forms(api) == [{**BASE, name: word}]

    return check


for _name in ("enhance", "safe", "private", "nologo"):
    case(f"--{_name}")(_flag(_name, "true"))
    case(f"--no-{_name}")(_flag(_name, "false"))


@case("--timeout")
def _timeout(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    api.faults.never_finish = True
    cell = run(f"%%miragic --size 256x256 {option} 0.3\na quiet harbour")
    # Without the option the cell would wait the magic's 20 s; with it, it stops at 0.3 s.
    assert isinstance(cell.error, JobTimeoutError), cell.text
    (job_id,) = api.jobs
    assert f"%miragic resume {job_id}" in cell.text
    assert forms(api) == [BASE]  # a client-side limit: nothing about it is sent


@case("-n", "--n")
def _n(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, f"%%miragic --size 256x256 {option} 3\na quiet harbour")
    assert forms(api) == [BASE] * 3
    api.clear_requests()
    ok(run, f"%%miragic --size 256x256 --seed 5 {option} 2\na quiet harbour")
    assert seeds(api) == ["5", "6"]


@case("--fresh")
def _fresh(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    source = "%%miragic --size 256x256 --seed 9{}\na quiet harbour"
    ok(run, source.format(""))
    ok(run, source.format(""))  # a seeded request already saved is reused: nothing sent
    assert sent(api) == [{**BASE, "seed": "9"}]
    ok(run, source.format(f" {option}"))
    assert sent(api) == [{**BASE, "seed": "9"}] * 2
    assert not ip.user_ns["_"].metadata.get("reused")


@case("-o", "--out")
def _out(option: str, run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    ok(run, f"%%miragic --size 256x256 {option} t_kept\na quiet harbour")
    kept = ip.user_ns["t_kept"]
    assert isinstance(kept, GeneratedImage)
    (job_id,) = api.jobs
    assert kept.metadata["job_id"] == job_id
    assert forms(api) == [BASE]  # where the result goes is the notebook's business


@pytest.mark.parametrize("option", sorted(CASES))
def test_each_option_shows_what_it_sends_or_changes(
    option: str, run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    CASES[option](option, run, ip, api)


def test_every_option_of_the_usage_text_has_a_case() -> None:
    parser = Miragic.miragic.parser  # type: ignore[attr-defined]  # set by @magic_arguments
    documented = {s for action in parser._actions for s in action.option_strings}
    usage = parser.format_usage() + parser.format_help()
    assert all(s in usage for s in documented)  # what %%miragic? shows
    assert set(CASES) == documented, (
        f"options without a case: {sorted(documented - set(CASES))}; "
        f"cases for no option: {sorted(set(CASES) - documented)}"
    )
