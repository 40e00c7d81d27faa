"""Prompt templates: ``{name}`` from the user's namespace, everything else exactly as written.

IPython expands ``{expr}`` in a magic's line, never in a cell body, so the magic does its own,
much narrower substitution. Unlike ``str.format`` it never raises: JSON, unknown names, stray
braces, format specs (``{x:>4}``) and conversions (``{x!r}``) stay as they are. ``{{`` gives a
literal ``{``, and a ``}}`` that closes it gives ``}`` (so ``{{style}}`` is the text
``{style}``); a ``}}`` with no ``{{`` before it is left alone, because nested JSON ends that way
(``{"size": {"w": 1}}``) and valid JSON never contains ``{{``. Only these forms are replaced,
when ``name`` is in the namespace:

- ``{name}``
- ``{name.attr}`` (any chain of public attributes)
- ``{name[key]}`` (an integer index when ``key`` is digits, else a string key; quotes around
  the key are optional), and mixed chains such as ``{cfg[styles][0].title}``
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["interpolate"]

_NAME = r"[^\W\d]\w*"
_TOKEN = re.compile(
    r"\{\{|\}\}|\{(?P<name>" + _NAME + r")(?P<chain>(?:\." + _NAME + r"|\[[^\[\]{}]*\])*)\}"
)
_STEP = re.compile(r"\.(?P<attr>" + _NAME + r")|\[(?P<key>[^\[\]{}]*)\]")
#: Longest text a single placeholder may expand to; a huge value would be a mistake.
MAX_VALUE_CHARS = 100_000
_MISSING = object()


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Fill ``{name}``-style placeholders from ``namespace``; never raises on any template."""
    open_escapes = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal open_escapes
        token = match.group(0)
        if token == "{{":
            open_escapes += 1
            return "{"
        if token == "}}":
            if open_escapes == 0:
                return token  # e.g. the end of nested JSON
            open_escapes -= 1
            return "}"
        return _replacement(match, namespace)

    return _TOKEN.sub(replace, template)


def _replacement(match: re.Match[str], namespace: Mapping[str, Any]) -> str:
    token = match.group(0)
    value = _resolve(match, namespace)
    if value is _MISSING:
        return token
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a broken __str__ must not break the cell: leave the placeholder
        return token
    if not isinstance(text, str) or len(text) > MAX_VALUE_CHARS:
        return token
    return text


def _resolve(match: re.Match[str], namespace: Mapping[str, Any]) -> Any:
    """The value a placeholder names, or ``_MISSING`` when any step does not resolve."""
    try:
        value = namespace[match.group("name")]
    except Exception:  # KeyError, or a namespace mapping that misbehaves
        return _MISSING
    for step in _STEP.finditer(match.group("chain")):
        attr, key = step.group("attr"), step.group("key")
        try:
            if attr is not None:
                if attr.startswith("_"):  # private and dunder attributes are not for prompts
                    return _MISSING
                value = getattr(value, attr)
            else:
                value = _item(value, key)
        except Exception:
            return _MISSING
    return value


def _item(value: Any, key: str) -> Any:
    stripped = key.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        return value[stripped[1:-1]]
    if stripped.lstrip("-").isdigit():
        try:
            return value[int(stripped)]
        except (KeyError, TypeError):
            pass  # a mapping with string keys such as "1"
    return value[key]
