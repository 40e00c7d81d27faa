"""Benchmark 5: download and decode a 2048×2048 result — memory and time.

Ours is ``Client.download`` (streamed in chunks, size-capped, length-checked) plus
``GeneratedImage.from_bytes``; the baseline is ``requests.get(url).content`` plus
``PIL.Image.open(...).load()``. Each path runs in its own fresh process (peak RSS is per
process), against files served over loopback: the emulator's own result and a photo-like JPEG.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .common import TIGHT_POLLS, Row, Settings, client_for, emulator
from .photo import photo_like_jpeg

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serve_files(files: dict[str, bytes]) -> Iterator[str]:
    """A tiny loopback file server (another origin than the API, like a CDN)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _measure(
    path: str, url: str, warmup: str, base_url: str, key: str, repeats: int
) -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.download_child",
            path,
            url,
            warmup,
            base_url,
            key,
            str(repeats),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    measured: dict[str, float] = json.loads(result.stdout)
    return measured


def run(settings: Settings) -> list[Row]:
    repeats = settings.pick(3, 10)
    photo = photo_like_jpeg(2048, 2048)
    small = photo_like_jpeg(256, 256)
    rows = []
    with (
        emulator(job_seconds=0.0) as emu,
        serve_files({"/photo.jpg": photo, "/small.jpg": small}) as files,
    ):
        with client_for(emu, poll_schedule=TIGHT_POLLS) as client:
            result = client.generate("download", width=2048, height=2048)
        cases = {
            "photo-like": (f"{files}/photo.jpg", len(photo)),
            "emulator": (result.metadata["result_url"], len(result.original_bytes)),
        }
        for name, (url, encoded) in cases.items():
            warmup = f"{files}/small.jpg"
            naive = _measure("naive", url, warmup, emu.url, emu.api_key, repeats)
            ours = _measure("ours", url, warmup, emu.url, emu.api_key, repeats)
            budget = 3 * (encoded + ours["decoded"])
            label = "`requests.get(url).content` + `Image.open(...).load()`"
            sizes = f"{encoded / 1e6:.2f} MB encoded + {ours['decoded'] / 1e6:.1f} MB decoded"
            rows.append(
                Row(
                    "5 download",
                    f"{name} 2048×2048: peak memory growth",
                    naive["rss_growth"],
                    ours["rss_growth"],
                    "B",
                    goal_text=f"≤ 3 × (enc + dec) = {budget / 1e6:.0f} MB",
                    passed=ours["rss_growth"] <= budget,
                    baseline_label=label,
                    note=(
                        f"{sizes}; ours is {ours['rss_growth'] / (budget / 3):.2f}× (enc + dec); "
                        f"Python-traced peak {ours['traced_peak'] / 1e6:.1f} MB "
                        f"(baseline {naive['traced_peak'] / 1e6:.1f} MB)"
                    ),
                    details={"naive": naive, "ours": ours, "encoded": encoded},
                )
            )
            rows.append(
                Row(
                    "5 download",
                    f"{name} 2048×2048: COMPLETED → image object",
                    naive["seconds"],
                    ours["seconds"],
                    "s",
                    baseline_label=label,
                )
            )
        # What a user waits for: a COMPLETED job through the engine with the history on
        # (the result is recorded after it is handed over; the job id is durable already).
        job_id = result.metadata["job_id"]
        naive = _measure("naive-job", job_id, job_id, emu.url, emu.api_key, repeats)
        ours = _measure("resumed", job_id, job_id, emu.url, emu.api_key, repeats)
        ratio = ours["seconds"] / naive["seconds"]
        rows.append(
            Row(
                "5 download",
                "emulator 2048×2048: a COMPLETED job resumed → image, history on",
                naive["seconds"],
                ours["seconds"],
                "s",
                goal_text="≤ 1.25×",
                passed=ratio <= 1.25,
                baseline_label="one status read + `requests.get` + `Image.open(...).load()`",
            )
        )
    return rows
