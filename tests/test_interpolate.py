"""Prompt interpolation: known names filled, everything else exactly as written, never raising."""

from __future__ import annotations

import random
import string
from types import SimpleNamespace
from typing import Any

import pytest

from miragic_nb._core.interpolate import MAX_VALUE_CHARS, interpolate

NS: dict[str, Any] = {
    "style": "oil painting",
    "n": 3,
    "cfg": {"size": "large", "styles": ["noir", "pastel"], "1": "string one"},
    "colors": ["red", "green"],
    "obj": SimpleNamespace(title="Dusk", inner=SimpleNamespace(mood="calm")),
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("A lighthouse, {style}", "A lighthouse, oil painting"),
        ("{n} cats", "3 cats"),
        ("{obj.title} at {obj.inner.mood}", "Dusk at calm"),
        ("{cfg[size]} canvas", "large canvas"),
        ("{cfg['size']} / {cfg[\"size\"]}", "large / large"),
        ("{colors[1]} and {colors[-1]}", "green and green"),
        ("{cfg[styles][0]}", "noir"),
        ("{cfg[1]}", "string one"),  # digits, but the mapping has a string key
        ("{style}{style}", "oil paintingoil painting"),
        ("{{style}}", "{style}"),
        ("{{{style}}}", "{oil painting}"),
        ("a {{ b }} c", "a { b } c"),
        ("{{a}} and {{b}}", "{a} and {b}"),
    ],
)
def test_known_names_are_filled(template: str, expected: str) -> None:
    assert interpolate(template, NS) == expected


@pytest.mark.parametrize(
    "template",
    [
        '{"prompt": "a cat", "seed": 1}',
        "{unknown}",
        "{unknown.attr} {unknown[0]}",
        "{style:>20}",  # format spec
        "{style!r}",  # conversion
        "{ style }",  # spaces: not a placeholder
        "{}",
        "{0}",
        "{1style}",
        "{",
        "}",
        "}{",
        "{style",
        "style}",
        "{obj.missing}",
        "{obj._private} {obj.__class__} {obj.__dict__}",
        "{colors[9]}",
        "{colors[x]}",
        "{cfg[nokey]}",
        "{n.real.imag.x}",
        "{style[",
        "{style[0}",
        "{style.}",
        "{.style}",
        "{style[]]}",
        "{style.upper()}",
        "{__import__('os').system('true')}",
        "{eval}",  # a builtin, not in the namespace
        "%s %d {} }}{",
        '{"a": {"b": {"c": 1}}}',  # nested JSON: the closing }} are not escapes
        "}} before any {{",
    ],
)
def test_everything_else_is_left_exactly_as_written(template: str) -> None:
    expected = template.replace("{{", "{")  # only the {{ escape changes text here
    assert interpolate(template, NS) == expected


def test_json_prompt_survives_untouched_next_to_a_filled_name() -> None:
    template = 'Draw {style} using {"palette": ["#fff", "#000"], "size": {"w": 1}}'
    assert interpolate(template, NS) == (
        'Draw oil painting using {"palette": ["#fff", "#000"], "size": {"w": 1}}'
    )


class _Hostile:
    @property
    def boom(self) -> str:
        raise RuntimeError("property explodes")

    def __str__(self) -> str:
        raise ValueError("str explodes")

    def __getitem__(self, key: object) -> str:
        raise TypeError("no items")


class _BadMapping(dict[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("namespace explodes")


def test_hostile_values_leave_the_placeholder_and_never_raise() -> None:
    ns = {"h": _Hostile(), "huge": "x" * (MAX_VALUE_CHARS + 1), "none": None}
    template = "{h} {h.boom} {h[0]} {huge} {none}"
    assert interpolate(template, ns) == "{h} {h.boom} {h[0]} {huge} None"
    assert interpolate("{anything}", _BadMapping(anything=1)) == "{anything}"


def test_random_brace_soup_never_raises_and_changes_only_escapes() -> None:
    alphabet = "{}[].'\"x:!0 " + string.ascii_letters[:3]
    rng = random.Random(1234)
    for _ in range(3000):
        template = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        result = interpolate(template, {"zzz": 1})
        if "{{" not in template:
            assert result == template  # nothing to fill, no escape: untouched
        else:
            assert result.replace("{", "").replace("}", "") == (
                template.replace("{", "").replace("}", "")
            )
            assert len(result) < len(template)


def test_unicode_names_and_values() -> None:
    assert interpolate("{café} ☕ {ñ}", {"café": "crème", "ñ": "ü"}) == "crème ☕ ü"
