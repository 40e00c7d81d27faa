"""The baseline: the API reference's own Python example, completed with a download.

It reads the job at once and then every 2 s (``time.sleep(2)``), with plain ``requests`` calls
and no session, exactly as the reference shows; then it downloads the result and decodes it,
so both sides end with a decoded image in hand.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import requests
from PIL import Image

from .common import CREATE_PATH, STATUS_PATH


@dataclass(frozen=True)
class ReferenceResult:
    job_id: str
    #: From just before the create request to a decoded image in hand.
    elapsed_s: float
    #: The server's ``metadata.processingTimeMs``, in seconds.
    processing_s: float
    image: Image.Image


def reference_generate(
    base_url: str,
    api_key: str,
    prompt: str,
    *,
    model: str = "flux",
    width: int = 512,
    height: int = 512,
    interval: float = 2.0,
) -> ReferenceResult:
    headers = {"X-API-Key": api_key}
    data = {"prompt": prompt, "model": model, "width": width, "height": height}
    started = time.perf_counter()
    response = requests.request("POST", base_url + CREATE_PATH, headers=headers, data=data)
    job_id = response.json()["data"]["jobId"]
    while True:
        result = requests.get(base_url + STATUS_PATH + job_id, headers=headers)
        record = result.json()["data"]
        if record["status"] == "COMPLETED":
            break
        if record["status"] == "FAILED":
            raise RuntimeError(f"job {job_id} failed: {record.get('errorMessage')}")
        time.sleep(interval)
    content = requests.get(record["processedImageUrl"]).content
    image = Image.open(io.BytesIO(content))
    image.load()
    elapsed = time.perf_counter() - started
    processing = record["metadata"]["processingTimeMs"] / 1000
    return ReferenceResult(job_id, elapsed, processing, image)
