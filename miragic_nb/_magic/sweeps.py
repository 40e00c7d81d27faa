"""Sweeps for ``%%miragic``: a seed range (``--seed 1..8``) and a prompt template over a list
variable (``--sweep animals`` with ``{animals}`` in the prompt), each job labelled by the
value it was made with."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from miragic_nb._core.interpolate import interpolate

_RANGE = re.compile(r"\s*(\d{1,19})\s*\.\.\s*(\d{1,19})\s*")
#: The most values one sweep may have (the cell's job cap applies on top).
MAX_VALUES = 64


def seeds(text: str) -> tuple[int, ...]:
    """``--seed``: one seed (``7``) or an inclusive range (``1..8``)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return (int(text),)
    found = _RANGE.fullmatch(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative integer, got {text!r} (or a seed range such as 1..8)"
        )
    first, last = int(found[1]), int(found[2])
    if last < first or last - first + 1 > MAX_VALUES:
        raise argparse.ArgumentTypeError(
            f"a seed range goes up, with at most {MAX_VALUES} seeds, got {text!r}"
        )
    return tuple(range(first, last + 1))


@dataclass(frozen=True)
class Variant:
    """One prompt of a sweep and the label that says what was swept to make it."""

    prompt: str
    label: str


def prompts(template: str, namespace: Mapping[str, Any], sweep: str | None) -> list[Variant]:
    """The prompts of a cell: one, or one per value of the list variable ``sweep``, which
    the template names as ``{sweep}``."""
    if sweep is None:
        return [Variant(interpolate(template, namespace), "")]
    values = namespace.get(sweep)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"--sweep {sweep}: {sweep} must be a non-empty list in your namespace")
    if len(values) > MAX_VALUES:
        raise ValueError(f"--sweep {sweep}: at most {MAX_VALUES} values, {sweep} has {len(values)}")
    if "{" + sweep + "}" not in template:
        raise ValueError(f"--sweep {sweep}: the prompt never says {{{sweep}}}")
    return [
        Variant(interpolate(template, {**namespace, sweep: value}), str(value)[:40])
        for value in values
    ]
