"""The history and usage tables of ``%miragic history`` and ``%miragic usage``.

Each table is a display bundle: HTML for a notebook (every value escaped; the only markup of
our own is a thumbnail) and plain text for a terminal, so the frontend shows what it can.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miragic_nb._store.history import HistoryRecord, UsageRow

#: Longest side of a history thumbnail, in pixels.
THUMBNAIL_SIDE = 96
_HISTORY_HEADERS = ("", "created", "status", "model", "size", "seed", "job", "prompt")
#: The usage line of the built-in emulator's jobs: placeholders, not counted in the total.
EMULATOR_LINE = "built-in emulator (no credits)"
#: Spaces between the columns of a text table.
_GAP = "  "
_GAP_WIDTH = len(_GAP)
#: Fewest characters of the prompt a history line keeps, however narrow the terminal.
_MIN_PROMPT = 24
_USAGE_COLUMNS = ("jobs", "credits", "failed", "reused (credits saved)")


class _Markup(str):
    """HTML made here (a thumbnail), not text to escape."""


def history_bundle(records: Sequence[HistoryRecord], *, width: int | None = None) -> dict[str, str]:
    """The jobs as an HTML table with thumbnails, and as an aligned text table ``width``
    columns wide (default: the terminal's width)."""
    rows = [
        [
            _thumbnail(record),
            f"{record.created_at:%Y-%m-%d %H:%M}",
            record.status,
            record.model or "?",
            _size_text(record),
            "" if record.seed is None else str(record.seed),
            record.job_id,
            (record.prompt or "")[:120],
        ]
        for record in records
    ]
    if width is None:
        width = shutil.get_terminal_size().columns
    return {
        "text/html": _html_table(_HISTORY_HEADERS, rows),
        "text/plain": history_text(records, width=width),
    }


def history_text(records: Sequence[HistoryRecord], *, width: int) -> str:
    """Aligned columns that fit in ``width`` characters; the prompt takes what is left and is
    cut at a word boundary with an ellipsis. Narrow terminals lose the size column first,
    then the year of the date; the job id is never cut (``%miragic resume`` needs it)."""
    layouts = (
        ("%Y-%m-%d %H:%M", True),
        ("%Y-%m-%d %H:%M", False),
        ("%m-%d %H:%M", False),
    )
    for date_format, with_size in layouts:
        table = [
            [
                f"{r.created_at:{date_format}}",
                r.status,
                r.model or "?",
                *([_size_text(r)] if with_size else []),
                "—" if r.seed is None else str(r.seed),
                r.job_id,
            ]
            for r in records
        ]
        headers = ["created", "status", "model", *(["size"] if with_size else []), "seed", "job"]
        widths = [max(len(row[i]) for row in [headers, *table]) for i in range(len(headers))]
        room = width - 1 - sum(widths) - _GAP_WIDTH * len(widths)
        if room >= _MIN_PROMPT:
            break
    cells = [
        _GAP.join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [headers, *table]
    ]
    texts = [" ".join((r.prompt or "").split()) for r in records]
    if room >= _MIN_PROMPT:
        prompts = ["prompt", *(ellipsize(text, room) for text in texts)]
        lines = [
            _GAP.join([row, prompt]).rstrip() for row, prompt in zip(cells, prompts, strict=True)
        ]
    else:
        # Too narrow for a prompt column: each prompt goes on its own line under its job.
        lines = [cells[0].rstrip()]
        for row, text in zip(cells[1:], texts, strict=True):
            lines += [row.rstrip(), _GAP + ellipsize(text, max(width - 1 - _GAP_WIDTH, 1))]
    return "\n".join(lines)


def ellipsize(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: cut at the last word boundary that keeps
    at least half of it, with "…"; a long word is cut inside."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space >= width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def _size_text(record: HistoryRecord) -> str:
    if record.width is None or record.height is None:
        return "?"
    return f"{record.width}×{record.height}"


def usage_bundle(rows: Sequence[UsageRow], *, by: str, title: str) -> dict[str, str]:
    """Spending per model or per day, with a total row, under ``title``; the built-in
    emulator's jobs on one line of their own below it, at 0 credits."""
    paid = [row for row in rows if not row.emulator]
    body = [
        [row.key or "?", *_usage_numbers(row.jobs, row.credits, row.failures, row.reuses)]
        for row in paid
    ]
    body.append(["total", *_usage_sum(paid)])
    emulated = [row for row in rows if row.emulator]
    if emulated:
        body.append([EMULATOR_LINE, *_usage_sum(emulated)])
    headers = (by, *_USAGE_COLUMNS)
    return {
        "text/html": f"<p>{html.escape(title)}</p>{_html_table(headers, body)}",
        "text/plain": f"{title}\n{_text_table(headers, body)}",
    }


def _usage_sum(rows: Sequence[UsageRow]) -> list[str]:
    return _usage_numbers(
        sum(row.jobs for row in rows),
        sum(row.credits for row in rows),
        sum(row.failures for row in rows),
        sum(row.reuses for row in rows),
    )


def _usage_numbers(jobs: int, credits: float, failures: int, reuses: int) -> list[str]:
    return [str(jobs), f"{credits:g}", str(failures), str(reuses)]


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_escaped(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, numbers right-aligned."""
    table = [list(headers), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    )


def _escaped(cell: str) -> str:
    return cell if isinstance(cell, _Markup) else html.escape(cell)


def _thumbnail(record: HistoryRecord) -> str:
    """The saved image, small, as an inline JPEG; empty when there is none or it is unreadable."""
    if record.path is None:
        return ""
    # Pillow loads here, not at import: listing subcommands stays cheap.
    from PIL import Image

    try:
        with Image.open(record.path) as image:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=70)
    except (OSError, ValueError):
        return ""
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return _Markup(f'<img src="data:image/jpeg;base64,{data}">')
