"""One fresh process measuring one download-and-decode path (run by ``download_decode``).

``python -m benchmarks.download_child PATH URL WARMUP_URL BASE_URL API_KEY REPEATS`` prints
JSON: peak RSS growth (``VmHWM`` reset through ``/proc/self/clear_refs``), the peak of
Python-traced allocations (``tracemalloc``; Pillow's pixel buffers are not traced), and the
median time from "the job is COMPLETED" to "a decoded image in hand".
"""

from __future__ import annotations

import gc
import io
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import requests
from PIL import Image

from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.jobs import Job
from miragic_nb.client import Client


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _kb("VmHWM")


def main(argv: list[str]) -> None:
    path, url, warmup_url, base_url, api_key, repeats = argv
    client = Client(api_key=api_key, base_url=base_url, history=False)

    def ours(target: str) -> Image.Image:
        # What Client.finish does once the status read says COMPLETED.
        data, job = client.download(Job(id="benchmark", status="COMPLETED", result_url=target))
        return GeneratedImage.from_bytes(data, {"job_id": job.id})

    def naive(target: str) -> Image.Image:
        image = Image.open(io.BytesIO(requests.get(target, timeout=30).content))
        image.load()
        return image

    fetch: Callable[[str], Image.Image] = {"ours": ours, "naive": naive}[path]
    fetch(warmup_url)  # imports, connection pool, decoder tables
    before = _reset_peak()
    image = fetch(url)
    rss_growth = _kb("VmHWM") - before
    decoded = image.width * image.height * len(image.getbands())
    del image
    times = []
    for _ in range(int(repeats)):
        gc.collect()
        started = time.perf_counter()
        fetch(url)
        times.append(time.perf_counter() - started)
    gc.collect()
    tracemalloc.start()
    fetch(url)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    json.dump(
        {
            "rss_growth": rss_growth,
            "traced_peak": traced_peak,
            "decoded": decoded,
            "seconds": statistics.median(times),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
