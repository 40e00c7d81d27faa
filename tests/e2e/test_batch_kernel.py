"""``await client.agenerate(...)`` and ``generate_many`` at the top level of a notebook cell,
executed by nbclient in a real python3 kernel against an emulator on loopback."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from miragic_nb.emulator import Emulator

CELLS = [
    "import asyncio\nfrom miragic_nb import Client\nclient = Client()",
    # Top-level await: the kernel runs the cell as a coroutine on its own loop.
    "images = await asyncio.gather(*(client.agenerate(f'fox {n}', width=256, height=256)"
    " for n in range(3)))\n"
    "print('SIZES', [image.size for image in images])",
    "result = client.generate_many(['owl 1', 'owl 2'], concurrency=2)\n"
    "print('BATCH', len(result), result.created, sorted(result.errors))",
]


def test_top_level_await_and_a_batch_in_a_real_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    with Emulator(api_key="test-key-0123456789", job_seconds=0.3) as emulator:
        # The kernel inherits the environment it starts in.
        monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
        monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
        NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
        created = emulator.count("POST", "/api/v1/image/generate")
    text = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "SIZES [(256, 256), (256, 256), (256, 256)]" in text
    assert "BATCH 2 2 []" in text
    assert created == 5
