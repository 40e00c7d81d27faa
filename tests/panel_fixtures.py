"""Helpers shared by the panel's test modules: a panel on the test emulator, and tree walks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as widgets
import pytest

from miragic_nb._panel.panel import Panel
from miragic_nb.client import Client

CREATE = "/api/v1/image/generate"
STATUS = "/api/v1/image/jobs/"


@pytest.fixture
def panel(client: Client) -> Iterator[Panel]:
    made = Panel(client)
    yield made
    made.close()


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Yield to the loop until ``condition`` holds; a guard against hanging, not a timing check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {limit}s")
        await asyncio.sleep(0.01)


def widget_tree(root: widgets.Widget) -> list[widgets.Widget]:
    """Every widget reachable from ``root`` through its traits (children, layout, style ...)."""
    seen: dict[int, widgets.Widget] = {}
    stack = [root]
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen[id(widget)] = widget
        for value in widget.trait_values().values():
            items = value if isinstance(value, (list, tuple)) else [value]
            stack.extend(item for item in items if isinstance(item, widgets.Widget))
    return list(seen.values())


def trait_text(root: widgets.Widget) -> str:
    """All trait values of the whole tree as one string: what saved widget state could hold."""
    parts: list[str] = []
    for widget in widget_tree(root):
        for name, value in widget.trait_values().items():
            parts.append(f"{name}={_text(value)}")
        parts.append(json.dumps(widget.get_state(), default=_text))
    return "\n".join(parts)


def html_values(root: widgets.Widget) -> list[str]:
    """The ``value`` of every HTML widget in the tree (what the browser renders as markup)."""
    return [w.value for w in widget_tree(root) if isinstance(w, widgets.HTML)]


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    return repr(value)
