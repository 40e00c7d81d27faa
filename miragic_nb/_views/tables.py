"""The history and usage tables of ``%miragic history`` and ``%miragic usage``.

Each table is a display bundle: HTML for a notebook (every value escaped; the only markup of
our own is a thumbnail) and plain text for a terminal, so the frontend shows what it can.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miragic_nb._store.history import HistoryRecord, UsageRow

#: Longest side of a history thumbnail, in pixels.
THUMBNAIL_SIDE = 96
_HISTORY_HEADERS = ("", "created", "status", "model", "size", "seed", "job", "prompt")
_USAGE_COLUMNS = ("jobs", "credits", "failed", "reused (credits saved)")


class _Markup(str):
    """HTML made here (a thumbnail), not text to escape."""


def history_bundle(records: Sequence[HistoryRecord]) -> dict[str, str]:
    """The jobs as an HTML table with thumbnails, and as one text line each."""
    text = [
        f"{r.created_at:%Y-%m-%d %H:%M}  {r.status:<9}  {r.model or '?'}  "
        f"{r.width}×{r.height}  seed {r.seed}  {r.job_id}  {(r.prompt or '')[:60]}"
        for r in records
    ]
    rows = [
        [
            _thumbnail(record),
            f"{record.created_at:%Y-%m-%d %H:%M}",
            record.status,
            record.model or "?",
            f"{record.width}×{record.height}",
            "" if record.seed is None else str(record.seed),
            record.job_id,
            (record.prompt or "")[:120],
        ]
        for record in records
    ]
    return {"text/html": _html_table(_HISTORY_HEADERS, rows), "text/plain": "\n".join(text)}


def usage_bundle(rows: Sequence[UsageRow], *, by: str, title: str) -> dict[str, str]:
    """Spending per model or per day, with a total row, under ``title``."""
    body = [
        [row.key or "?", *_usage_numbers(row.jobs, row.credits, row.failures, row.reuses)]
        for row in rows
    ]
    total = _usage_numbers(
        sum(row.jobs for row in rows),
        sum(row.credits for row in rows),
        sum(row.failures for row in rows),
        sum(row.reuses for row in rows),
    )
    body.append(["total", *total])
    headers = (by, *_USAGE_COLUMNS)
    return {
        "text/html": f"<p>{html.escape(title)}</p>{_html_table(headers, body)}",
        "text/plain": f"{title}\n{_text_table(headers, body)}",
    }


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
