"""How a published image was made, in its notebook output, and reading that back.

Every image output the package displays carries ``metadata["miragic"]`` next to its data:

- one image (``%%miragic``, ``%miragic resume``, ``panel.image``, a result reused from the
  history): ``{"job_id", "prompt", "model", "width", "height", "seed", "image_url",
  "emulator", "reused"}``;
- a grid (``--n``, model comparison), which is one HTML output:
  ``{"images": [{"label": "#1", ...same keys...}, ...]}`` in the grid's order.

``width``/``height``/``seed`` are what was asked for (``seed`` is None when the server chose
one); ``image_url`` is the input image sent to ``kontext``, else None; ``emulator`` is True for
placeholder images from the built-in emulator. The API key and the (possibly signed, always
temporary) result URL are never included.

:func:`jobs_in_notebook` reads these back from a saved ``.ipynb`` (and the same description
that the panel's pictures carry in the saved widget state, see ``described_image.py``), for
``%miragic history --notebook PATH``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from miragic_nb._core.embedded import METADATA_KEY


class Records(Protocol):
    """What ``report`` needs of the history: where it is, and a job's record."""

    @property
    def home(self) -> Path: ...

    def get(self, job_id: str) -> Any: ...


#: What an output records about each image, in this order.
FIELDS = ("job_id", "prompt", "model", "width", "height", "seed", "image_url")


def provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The output metadata for one image, from its ``info["miragic"]``."""
    described = {name: meta.get(name) for name in FIELDS}
    described["emulator"] = bool(meta.get("emulator"))
    described["reused"] = bool(meta.get("reused"))
    return described


#: Where a saved notebook keeps its widgets (the panel's pictures among them).
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@dataclass(frozen=True)
class NotebookJob:
    """One image found in a notebook: which code cell shows it and how it was made.

    ``cell`` is None for a picture of a panel, found in the saved widget state.
    """

    cell: int | None
    provenance: dict[str, Any]

    @property
    def job_id(self) -> str | None:
        value = self.provenance.get("job_id")
        return value if isinstance(value, str) and value else None


def jobs_in_notebook(path: str | os.PathLike[str]) -> list[NotebookJob]:
    """Every image with our metadata in the ``.ipynb`` at ``path``: outputs in notebook order
    (``cell`` counts code cells from 1), then the panels' jobs from the widget state (once
    per job: a result and its thumbnail are one job). Raises ``OSError`` or ``ValueError``.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{os.fspath(path)} is not a notebook (not JSON: {exc})") from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise ValueError(f"{os.fspath(path)} is not a notebook (no cells)")
    code_cells = [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]
    in_outputs = [
        NotebookJob(number, described)
        for number, cell in enumerate(code_cells, start=1)
        for described in _described_images(cell.get("outputs"))
    ]
    return in_outputs + _panel_jobs(notebook.get("metadata"))


def _panel_jobs(metadata: object) -> list[NotebookJob]:
    widgets = metadata.get("widgets") if isinstance(metadata, dict) else None
    saved = widgets.get(WIDGET_STATE) if isinstance(widgets, dict) else None
    models = saved.get("state") if isinstance(saved, dict) else None
    by_job: dict[str, NotebookJob] = {}
    for model in models.values() if isinstance(models, dict) else []:
        state = model.get("state") if isinstance(model, dict) else None
        described = state.get(METADATA_KEY) if isinstance(state, dict) else None
        if isinstance(described, dict) and described.get("job_id"):
            by_job.setdefault(str(described["job_id"]), NotebookJob(None, described))
    return list(by_job.values())


def _described_images(outputs: object) -> Iterator[dict[str, Any]]:
    for output in outputs if isinstance(outputs, list) else []:
        metadata = output.get("metadata") if isinstance(output, dict) else None
        described = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
        if not isinstance(described, dict):
            continue
        images = described.get("images")
        if isinstance(images, list):
            yield from (image for image in images if isinstance(image, dict))
        else:
            yield described


def report(path: str | os.PathLike[str], history: Records) -> list[str]:
    """Lines for ``%miragic history --notebook``: each job and whether the history has it."""
    found = jobs_in_notebook(path)
    if not found:
        return [f"No Miragic images in {os.fspath(path)}."]
    lines = []
    kept = 0
    for item in found:
        record = history.get(item.job_id) if item.job_id else None
        kept += record is not None
        meta = item.provenance
        where = f"in the history ({record.status})" if record is not None else "not in the history"
        seed = "random seed" if meta.get("seed") is None else f"seed {meta['seed']}"
        extra = " · emulator" if meta.get("emulator") else ""
        shown_in = "panel" if item.cell is None else f"cell {item.cell}"
        lines.append(
            f"{shown_in}  job {item.job_id or '?'}  {meta.get('model') or '?'} "
            f"{meta.get('width')}×{meta.get('height')} {seed}{extra}  {where}  "
            f"{json.dumps(str(meta.get('prompt') or ''), ensure_ascii=False)[:80]}"
        )
    summary = (
        f"{len(found)} images in {os.fspath(path)}; {kept} of them in the history at {history.home}"
    )
    return [summary, *lines]
