"""Saving a result from the panel: the server's original bytes, with how it was made.

The prompt and parameters go into the file itself (a JPEG comment or PNG text chunk, as the
history stores them); a format without a metadata slot gets a ``.json`` file beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.filenames import safe_stem, write_file_atomically

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


@dataclass(frozen=True)
class Saved:
    """Where a result was written, as a path and as the user may be shown it."""

    path: Path
    shown: str
    #: Where the prompt and parameters went: "embedded in the file" or "in <name>.json".
    metadata_where: str


def save_result(image: GeneratedImage, given: str | Path, *, folder: Path | None = None) -> Saved:
    """Write ``image`` to ``given`` (a file, a folder, or blank for the default name); a
    folder that does not exist yet (``some/folder/``) is created, and ``shown`` says so.

    With ``folder`` (a panel whose saves are confined, as the app's), ``given`` is taken
    relative to it and must stay inside it; what is shown names the file only.
    """
    if folder is None:
        target = save_path(image, given)
        # A blank "Save to" names the file alone: a page served to others (the app) must not
        # show them the server's folders.
        shown = str(target) if str(given).strip() else f"{target.name} in the current folder"
        if not target.parent.exists():
            shown += f", in the new folder {target.parent}"
    else:
        target = confined_save_path(image, given, folder)
        shown = f"{target.relative_to(folder.resolve())} in the save folder"
    meta = file_metadata(image)
    data, embedded = _with_metadata(image.original_bytes, meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Never through a link planted in the folder under the file's name (or its temporary's).
    write_file_atomically(target, data)
    where = "embedded in the file"
    if not embedded:
        sidecar = target.with_name(target.name + ".json")
        text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
        write_file_atomically(sidecar, text.encode("utf-8"))
        where = f"in {sidecar.name}"
    return Saved(target, shown, where)


def confined_save_path(image: GeneratedImage, given: str | Path, folder: Path) -> Path:
    """The file ``given`` names inside ``folder``; an ``InvalidRequestError`` if it leaves it.

    Decided here, in the kernel: a widget's value may come from whoever can reach the page,
    whatever the page shows (a disabled field included). Links in the folders on the way are
    followed before the check, so a linked folder cannot lead outside either.
    """
    root = folder.resolve()
    text = str(given).strip()
    # An absolute path joined to the folder stays absolute, and is refused below.
    target = save_path(image, root / text) if text else root / save_path(image, "").name
    parent = target.parent.resolve()
    if not (parent == root or parent.is_relative_to(root)) or target.name in ("", ".", ".."):
        raise InvalidRequestError(
            f"the file must be inside the save folder; {text!r} is not", field="save_path"
        )
    return parent / target.name


def save_path(image: GeneratedImage, given: str | Path) -> Path:
    """The file ``given`` names; blank means ``miragic-<job id>.<ext>`` in the current folder,
    and a folder (one that exists, or any path ending in ``/``) that name inside it."""
    extension = _EXTENSIONS.get(image.mimetype or "", "jpg")
    # The job id comes from the server: only a sanitised form may become a file name.
    job_id = safe_stem(str(image.metadata.get("job_id") or "image"))
    default_name = f"miragic-{job_id}.{extension}"
    text = str(given).strip()
    if not text:
        return Path.cwd() / default_name
    path = Path(text).expanduser()
    # Path() drops a trailing "/": read it first, as the folder the user said it is.
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / default_name
    return path if path.suffix else path.with_name(f"{path.name}.{extension}")


def file_metadata(image: GeneratedImage) -> dict[str, Any]:
    """What a saved file records about itself; not the result URL (signed and temporary)."""
    meta = image.metadata
    keys = ("job_id", "prompt", "model", "width", "height", "seed", "image_url", "options")
    saved = {key: meta.get(key) for key in keys}
    saved["base_url"] = meta.get("base_url")
    saved["created_at"] = meta.get("created_at")
    saved["generator"] = "miragic-nb"
    return saved


def _with_metadata(data: bytes, meta: dict[str, Any]) -> tuple[bytes, bool]:
    """``data`` with ``meta`` embedded the way the history embeds it; False if it could not be."""
    from miragic_nb._core.embedded import embed_metadata, read_embedded_metadata

    embedded = embed_metadata(data, meta)
    return embedded, read_embedded_metadata(embedded) is not None
