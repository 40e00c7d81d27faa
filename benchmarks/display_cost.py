"""Benchmark 2: what showing one result costs the notebook.

Baseline: a plain decoded ``PIL.Image`` displayed the default way (IPython calls Pillow's
``_repr_png_`` and ``_repr_jpeg_``). Ours: ``GeneratedImage``'s ``_ipython_display_``. Both are
captured exactly as a kernel would publish them (``IPython.utils.capture.capture_output`` on a
real ``InteractiveShell``); encoder calls are counted by wrapping Pillow's registered savers.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.interactiveshell import InteractiveShell
from IPython.display import display
from IPython.utils.capture import capture_output
from PIL import Image

from miragic_nb._core.images import GeneratedImage

from .common import TIGHT_POLLS, Row, Settings, client_for, emulator, median
from .photo import photo_like_jpeg


@contextmanager
def count_encodes() -> Iterator[Counter[str]]:
    """Count Pillow encodes per format while the block runs."""
    counts: Counter[str] = Counter()
    originals = {fmt: Image.SAVE[fmt] for fmt in ("PNG", "JPEG")}

    def counting(fmt: str, save: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[fmt] += 1
            return save(*args, **kwargs)

        return wrapper

    for fmt, save in originals.items():
        Image.SAVE[fmt] = counting(fmt, save)
    try:
        yield counts
    finally:
        Image.SAVE.update(originals)


def shown(value: object, repeats: int) -> tuple[int, float, Counter[str], list[str]]:
    """(image bytes published, median seconds to display, encodes per display, mimetypes)."""
    times = []
    payload, mimetypes = 0, []
    with count_encodes() as encodes:
        for _ in range(repeats):
            with capture_output() as captured:  # type: ignore[no-untyped-call]
                started = time.perf_counter()
                display(value)  # type: ignore[no-untyped-call]
                times.append(time.perf_counter() - started)
            data = captured.outputs[-1].data
            mimetypes = sorted(data)
            payload = sum(len(v) for k, v in data.items() if k.startswith("image/"))
    per_display = Counter({k: v // repeats for k, v in encodes.items()})
    return payload, median(times), per_display, mimetypes


def plain(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def run(settings: Settings) -> list[Row]:
    InteractiveShell.instance()  # display() publishes through the running shell
    repeats = settings.pick(3, 10)
    photo = photo_like_jpeg(2048, 1024)
    with emulator(job_seconds=0.0) as emu, client_for(emu, poll_schedule=TIGHT_POLLS) as client:
        emulated = client.generate("display cost", width=2048, height=1024)
    cases = {
        "photo-like 2048×1024 JPEG": GeneratedImage.from_bytes(photo, {"model": "flux"}),
        "emulator 2048×1024 result": emulated,
    }
    rows = []
    for name, image in cases.items():
        original = len(image.original_bytes)
        base_bytes, base_s, base_enc, base_types = shown(plain(image.original_bytes), repeats)
        ours_bytes, ours_s, ours_enc, ours_types = shown(image, repeats)
        details = {
            "original_bytes": original,
            "baseline_mimetypes": base_types,
            "ours_mimetypes": ours_types,
            "baseline_encodes": dict(base_enc),
            "ours_encodes": dict(ours_enc),
        }
        encodes = (
            f"encodes per display: default {dict(base_enc) or 'none'}, "
            f"ours {dict(ours_enc) or 'none'}; default publishes {', '.join(base_types)}"
        )
        rows.append(
            Row(
                "2 display",
                f"{name}: bytes into the notebook",
                base_bytes,
                ours_bytes,
                "B",
                baseline_label="a plain PIL image displayed the default way (PNG + JPEG)",
                details=details,
            )
        )
        rows.append(
            Row(
                "2 display",
                f"{name}: bytes published ÷ server's bytes",
                original,
                ours_bytes,
                "B",
                goal=1.0,
                baseline_label="the server's original bytes",
            )
        )
        rows.append(
            Row(
                "2 display",
                f"{name}: time to display",
                base_s,
                ours_s,
                "s",
                baseline_label="a plain PIL image displayed the default way (PNG + JPEG)",
                note=encodes,
            )
        )
    return rows
