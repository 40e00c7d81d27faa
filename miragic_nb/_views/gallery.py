"""Several results shown as one labelled grid (``--n`` and model comparison).

``ImageGrid`` is a plain ``list`` of ``GeneratedImage`` that IPython displays as one HTML table
of the server's own bytes (no PNG re-encode of each image). A table, rather than CSS grid, is
what every notebook sanitizer keeps, so a saved notebook still shows the grid. Being one output,
it says how its pictures were made as a list: ``metadata["miragic"]["images"]``, one entry per
``<img>`` in the grid's order (``provenance.py``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from miragic_nb._core.embedded import METADATA_KEY
from miragic_nb._core.provenance import provenance

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage

#: Largest width, in CSS pixels, an image is drawn at inside the grid.
MAX_CELL_WIDTH = 512


class ImageGrid(list["GeneratedImage"]):
    """A list of results that displays as a labelled grid; ``columns`` images per row."""

    def __init__(
        self,
        images: Iterable[GeneratedImage] = (),
        *,
        labels: Iterable[str] | None = None,
        columns: int | None = None,
    ) -> None:
        super().__init__(images)
        given = list(labels) if labels is not None else []
        self.labels = (given + [f"#{i + 1}" for i in range(len(given), len(self))])[: len(self)]
        self.columns = max(1, columns or min(len(self), 4) or 1)

    def caption_lines(self) -> list[str]:
        return [
            f"{label}: {image.caption()}" for label, image in zip(self.labels, self, strict=True)
        ]

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, str], dict[str, Any]]:
        data = {"text/html": self.to_html(), "text/plain": "\n".join(self.caption_lines())}
        return data, {METADATA_KEY: self.provenance()}

    def provenance(self) -> dict[str, Any]:
        """The output metadata: how each image was made, in the grid's order, with its label."""
        return {
            "images": [
                {"label": label, **provenance(image.metadata)}
                for label, image in zip(self.labels, self, strict=True)
            ]
        }

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("\n".join(self.caption_lines()) if not cycle else "ImageGrid(...)")

    def to_html(self) -> str:
        """A table of figures; every text from a prompt or the server is escaped."""
        width = MAX_CELL_WIDTH if self.columns <= 2 else MAX_CELL_WIDTH * 2 // self.columns
        cells = [_cell(image, label, width) for label, image in zip(self.labels, self, strict=True)]
        rows = [
            "<tr>" + "".join(cells[start : start + self.columns]) + "</tr>"
            for start in range(0, len(cells), self.columns)
        ]
        return '<table class="miragic-grid">' + "".join(rows) + "</table>"


def _cell(image: GeneratedImage, label: str, width: int) -> str:
    shown = min(image.width, width)
    data, mimetype = _image_source(image)
    return (
        '<td style="vertical-align:top;text-align:left">'
        f"<b>{html.escape(label)}</b><br>"
        f'<img src="data:{mimetype};base64,{data}" width="{shown}" '
        f'alt="{html.escape(image.metadata.get("prompt") or "", quote=True)}"><br>'
        f"<small>{html.escape(image.caption())}</small></td>"
    )


def _image_source(image: GeneratedImage) -> tuple[str, str]:
    bundle, _ = image.display_bundle()
    for mimetype, value in bundle.items():
        if mimetype.startswith("image/") and isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii"), mimetype
    raise ValueError("the image has no displayable bytes")  # display_bundle always has one
