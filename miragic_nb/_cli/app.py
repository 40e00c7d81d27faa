"""``python -m miragic_nb app``: the panel alone, as a small web page served by Voilà.

The page is a generated one-cell notebook (the panel, nothing else) that Voilà runs in its own
kernel per visitor. Voilà shows no code and refuses code sent by the page, so a visitor can
only use the panel's controls. The kernel inherits this process's environment: with
``MIRAGIC_API_KEY`` set the page spends that key's credits, without it the page uses the
built-in emulator. So by default the server listens on 127.0.0.1 only and asks for a token.

Saved images go to one folder chosen on the command line (default: the current directory);
the page's "Save to" field is switched off, so a visitor cannot write files elsewhere.
"""

from __future__ import annotations

import importlib
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miragic_nb._cli import demo

#: Voilà's own default port.
DEFAULT_PORT = 8866
DEFAULT_HOST = "127.0.0.1"
#: The notebook's name is the page's title.
NOTEBOOK_NAME = "Miragic.ipynb"
#: The panel's emulator notice, for a page: there is no ``%miragic login`` in it.
APP_EMULATOR_NOTICE = (
    "offline emulator — placeholder images; start the app with MIRAGIC_API_KEY set to use Miragic"
)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class AppSettings:
    """Where the page listens, its token and where saved images go."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    save_dir: Path = Path()
    token: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def panel_source(save_dir: Path) -> str:
    """The app's only cell: move to the save folder, show a panel whose Save goes there."""
    return (
        "import os\n"
        f"os.chdir({str(save_dir)!r})\n"
        "from miragic_nb._panel.panel import EMULATOR_NOTICE, Panel\n"
        "panel = Panel()\n"
        "# A page visitor cannot run %miragic login: say what the person starting it can do.\n"
        f"notice = {APP_EMULATOR_NOTICE!r}\n"
        "panel.header.value = panel.header.value.replace(EMULATOR_NOTICE, notice)\n"
        "# Saved files go to the folder chosen when the app was started, nowhere else.\n"
        "panel.save_path.disabled = True\n"
        "panel.save_path.placeholder = 'saved in the folder the app was started with'\n"
        "panel"
    )


def write_app_notebook(folder: Path, save_dir: Path) -> Path:
    nbformat: Any = importlib.import_module("nbformat")  # untyped; installed with Voilà
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": demo.KERNEL_NAME,
        "display_name": "Python 3",
        "language": "python",
    }
    notebook.cells = [nbformat.v4.new_code_cell(panel_source(save_dir))]
    path = folder / NOTEBOOK_NAME
    nbformat.write(notebook, path)
    return path


def start_message(settings: AppSettings, env: dict[str, str]) -> list[str]:
    """What the command prints before serving: the URL, who pays, where files go."""
    return [
        f"Miragic panel: {settings.url}",
        f"  Jobs go to {demo.describe_target(env)}.",
        "  Whoever reaches this page spends the key's credits: it needs the token above, "
        + (
            f"and listens on {settings.host} only."
            if settings.host in _LOOPBACK
            else f"and listens on {settings.host}, reachable from other machines."
        ),
        f"  Saved images go to {settings.save_dir}.",
        "  Ctrl-C stops it.",
    ]


def serve(settings: AppSettings, *, say: Callable[[str], None] = print) -> None:
    """Serve the panel until interrupted (blocks). Raises ImportError without Voilà."""
    from voila.app import Voila

    # The kernel inherits this environment; from a source checkout it must import this copy.
    os.environ.update(demo.kernel_environment(os.environ))
    with tempfile.TemporaryDirectory(prefix="miragic-app-") as folder:
        notebook = write_app_notebook(Path(folder), settings.save_dir)
        for line in start_message(settings, dict(os.environ)):
            say(line)
        Voila.launch_instance(
            argv=[str(notebook), "--no-browser"],
            ip=settings.host,
            port=settings.port,
            port_retries=0,  # the URL printed above must be the one served
            token=settings.token,
            open_browser=False,
        )
