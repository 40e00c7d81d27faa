"""The colours and short texts every part of the panel shares, so they all look alike."""

from __future__ import annotations

import html

ERROR_STYLE = "color: var(--jp-error-color1, #c62828)"
WARN_STYLE = "color: var(--jp-warn-color1, #e65100)"
MUTED_STYLE = "color: var(--jp-ui-font-color2, #757575)"
OK_STYLE = "color: var(--jp-success-color1, #2e7d32)"


def styled(style: str, escaped_html: str) -> str:
    """``escaped_html`` (already escaped) in a span of ``style``."""
    return f"<span style='{style}'>{escaped_html}</span>"


def small(style: str, text: str) -> str:
    """``text`` escaped, as small print of ``style``."""
    return f"<small style='{style}'>{html.escape(text)}</small>"


def excerpt(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def one_line(exc: BaseException) -> str:
    """An error as one short line of text (the client has already cut response bodies short).

    Markup in it is kept as text, to be escaped, not stripped: it may be what went wrong.
    """
    return excerpt(str(exc), 240) or type(exc).__name__
