"""Fixtures for the magic's tests: a real IPython shell with the extension loaded.

The shell is IPython's own test shell (``globalipapp``: a ``TerminalInteractiveShell`` with an
in-memory history), so the magic runs exactly as it does in a terminal IPython.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from IPython.testing import globalipapp
from IPython.utils.capture import CapturedIO, capture_output

from miragic_nb import session as builtin
from miragic_nb._magic.magic import Miragic, load_ipython_extension, unload_ipython_extension
from miragic_nb.emulator import Emulator


@dataclass
class Run:
    """What one cell did: its result and everything it printed or displayed."""

    result: ExecutionResult
    io: CapturedIO

    @property
    def error(self) -> BaseException | None:
        return self.result.error_before_exec or self.result.error_in_exec

    @property
    def text(self) -> str:
        return self.io.stdout + self.io.stderr

    @property
    def outputs(self) -> list[Any]:
        return list(self.io.outputs)

    def image_outputs(self) -> list[dict[str, Any]]:
        return [o.data for o in self.io.outputs if any(k.startswith("image/") for k in o.data)]


Runner = Callable[[str], Run]


def run_cell(ip: InteractiveShell, source: str) -> Run:
    with capture_output() as captured:
        result = ip.run_cell(source, store_history=True)
    return Run(result, captured)


@pytest.fixture
def run(ip: InteractiveShell) -> Runner:
    """``run("%%miragic ...")``: run a cell in the shell and capture what it showed."""
    return lambda source: run_cell(ip, source)


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell: InteractiveShell = globalipapp.get_ipython()
    builtin.reset()
    load_ipython_extension(shell)
    yield shell
    unload_ipython_extension(shell)
    shell.config.pop("Miragic", None)
    for name in list(shell.user_ns):
        if name.startswith("t_"):  # the variables tests define
            del shell.user_ns[name]
    builtin.reset()


@pytest.fixture
def magic(ip: InteractiveShell) -> Miragic:
    instance = ip.magics_manager.registry["Miragic"]
    assert isinstance(instance, Miragic)
    # Dense polling and a text progress view: fast, and readable in assertions.
    instance.poll_interval = 0.02
    instance.max_poll_interval = 0.2
    instance.progress = "text"
    instance.timeout = 20.0
    return instance


@pytest.fixture
def api(magic: Miragic, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The magic pointed at the test emulator, with its key in the environment."""
    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    magic.base_url = emulator.url
    return emulator
