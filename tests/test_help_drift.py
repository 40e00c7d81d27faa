"""The help people read matches the code: the docs' option table of ``%%miragic`` against the
magic's own parser, and ``python -m miragic_nb ... --help`` as a terminal shows it.

The table is read as a reader reads it (each row's flags and the ranges it states) and every
claim is tried on the parser's own argument types, so the next drift fails here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from miragic_nb.__main__ import _parser
from miragic_nb._magic.magic import Miragic

ROOT = Path(__file__).resolve().parent.parent
#: The full table lives in the magic's page once it has one; the README may show a subset.
FULL, SUBSET = ROOT / "docs" / "magic-commands.md", ROOT / "README.md"
_FLAG = re.compile(r"`(-{1,2}[a-zA-Z][\w-]*)")
#: A range as written: with an en dash in the docs, a hyphen in the parser's help (1-64).
_DASH = "[\N{EN DASH}-]"
_RANGE = re.compile(rf"(\d+)\s*{_DASH}\s*(\d+)")
_AT_MOST_SEEDS = re.compile(r"at most (\d+) seeds")


def option_table(path: Path) -> dict[str, str] | None:
    """The first table under an "Options" heading: each flag it lists and the text of its row;
    None when the page has no such table."""
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = next((i for i, line in enumerate(lines) if re.match(r"#+ Options$", line)), None)
    if heading is None:
        return None
    rows: dict[str, str] = {}
    for line in lines[heading + 1 :]:
        if rows and not line.startswith("|"):
            break
        if not line.startswith("| `"):
            continue
        flags, meaning = line[2:].rstrip(" |").split(" | ", 1)
        for flag in _FLAG.findall(flags):
            rows[flag] = meaning
    return rows


def parser_options() -> dict[str, argparse.Action]:
    parser = Miragic.miragic.parser  # type: ignore[attr-defined]
    return {
        flag: action
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
    }


def _accepts(convert: Callable[[str], object], text: str) -> bool:
    try:
        convert(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def _tables() -> list[tuple[Path, dict[str, str]]]:
    found = [(path, option_table(path)) for path in (FULL, SUBSET)]
    tables = [(path, table) for path, table in found if table is not None]
    assert tables, "no '### Options' table of %%miragic in the docs or the README"
    return tables


@pytest.mark.parametrize("which", ["full", "any"])
def test_the_docs_option_table_lists_exactly_the_parsers_flags(which: str) -> None:
    options = parser_options()
    for path, table in _tables():
        unknown = sorted(set(table) - set(options))
        assert not unknown, f"{path.name} documents flags the magic does not have: {unknown}"
        if which == "full":
            missing = sorted(set(options) - set(table))
            assert not missing, f"{path.name} does not document {missing}"
            break  # only the first table found (the full page, else the README) must be whole


def test_every_range_in_the_option_table_is_the_parsers_range() -> None:
    options = parser_options()
    checked = 0
    for path, table in _tables():
        for flag, meaning in table.items():
            action = options[flag]
            convert = action.type
            # The parser's own help states its ranges: the docs must state the same.
            for low, high in _RANGE.findall(action.help or ""):
                assert re.search(rf"\b{low}\s*{_DASH}\s*{high}\b", meaning), (
                    f"{path.name}: {flag} is {low} to {high} in the parser, the docs say: {meaning}"
                )
            for low, high in _RANGE.findall(meaning):
                assert callable(convert), f"{path.name}: {flag} takes no number, yet has a range"
                form = "{0}x{0}" if action.metavar == "WxH" else "{0}"
                first, last = int(low), int(high)
                said = f"{path.name}: {flag} is documented as {first} to {last}"
                assert _accepts(convert, form.format(first)), said
                assert _accepts(convert, form.format(last)), said
                assert not _accepts(convert, form.format(first - 1)), said
                assert not _accepts(convert, form.format(last + 1)), said
                checked += 1
            for most in _AT_MOST_SEEDS.findall(meaning):
                said = f"{path.name}: {flag} is documented as at most {most} seeds"
                assert callable(convert), said
                assert _accepts(convert, f"1..{most}"), said
                assert not _accepts(convert, f"1..{int(most) + 1}"), said
                checked += 1
    assert checked >= 3  # the sides and --n at least: the table was read


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        _parser().parse_args([*argv, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("command", [[], ["demo"], ["app"], ["batch"]])
def test_command_line_help_is_plain_text_and_explains_every_option(command: list[str]) -> None:
    text = _help(*command)
    assert "``" not in text  # reST markup belongs to docstrings, not to a terminal
    # Each option line of the "options:" section has words after its flags.
    section = text.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", "\n" + section)
    for entry in entries[1:]:
        flags, _, explained = entry.strip().partition("  ")
        assert explained.strip(), (
            f"{' '.join(command) or 'python -m miragic_nb'}: {flags} has no help"
        )
