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
import json
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
        "# Saved files go to the folder chosen when the app was started, nowhere else: the\n"
        "# panel decides the path itself, whatever the page sends as the field's value.\n"
        f"panel = Panel(save_dir={str(save_dir)!r})\n"
        "# A page visitor cannot run %miragic login: say what the person starting it can do.\n"
        f"notice = {APP_EMULATOR_NOTICE!r}\n"
        "panel.header.value = panel.header.value.replace(EMULATOR_NOTICE, notice)\n"
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
        _voila_class(Voila).launch_instance(
            argv=[str(notebook), "--no-browser"],
            ip=settings.host,
            port=settings.port,
            port_retries=0,  # the URL printed above must be the one served
            token=settings.token,
            open_browser=False,
        )


#: The subprotocol a browser asks for; without it the legacy framing is used.
V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"


def v1_frame_header(frame: bytes) -> dict[str, Any] | None:
    """The header of a kernel message framed by the v1 websocket protocol, else None (another
    framing, or not a message).

    A v1 frame is a count of offsets, the offsets (8-byte little-endian each), then the parts:
    channel, header, parent header, ... Only the two offsets around the header are read.
    """
    if len(frame) < 32 or int.from_bytes(frame[:8], "little") < 3:
        return None
    start, end = int.from_bytes(frame[16:24], "little"), int.from_bytes(frame[24:32], "little")
    if not 32 <= start <= end <= len(frame):
        return None
    try:
        header = json.loads(frame[start:end])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def frame_is_readable(frame: object, subprotocol: str | None) -> bool:
    """Whether the offsets a binary frame from the browser announces fit in the frame.

    Jupyter Server reads a binary frame by taking its first bytes as a count of offsets and
    reading that many, unchecked: a 32-byte frame announcing 2**60 offsets (v1) or 2**31 - 1
    (legacy framing, one struct format character each) keeps the server allocating until the
    machine runs out of memory. A frame whose count fits in its length costs work in
    proportion to its size, which the websocket's message size limit bounds.
    """
    if not isinstance(frame, bytes):
        # JSON text is parsed in proportion to its length; v1 frames are binary only.
        return subprotocol != V1_PROTOCOL
    if subprotocol == V1_PROTOCOL:
        count = int.from_bytes(frame[:8], "little") if len(frame) >= 8 else 0
        return count >= 2 and 8 * (count + 1) <= len(frame)
    count = int.from_bytes(frame[:4], "big", signed=True) if len(frame) >= 4 else 0
    return count >= 1 and 4 * (count + 1) <= len(frame)


def _voila_class(voila: Any) -> Any:
    """Voilà, with a kernel websocket handler that reads every frame in bounded work.

    Voilà's own handler drops ``execute_input`` messages (they would show the cell's code) by
    reading every binary frame it sends as if it were v1-framed: it takes the first 8 bytes as
    a count of offsets, unchecked, and builds that list. A frame in the legacy framing (a client
    that asks for no subprotocol) with binary buffers -- ipywidgets' answer to
    ``request_states`` carries the images' bytes as buffers -- starts with bytes that read as
    a count near 2**60, and the server loops and fills its memory for as long as it runs. Any
    visitor with the page's token could send that one message; frames sent by the visitor
    (``frame_is_readable``) had the same flaw in Jupyter Server.
    """
    from voila.tornado.kernel_websocket_handler import (
        VoilaKernelWebsocketHandler,
        WebsocketHandler,
    )

    class KernelWebsocketHandler(VoilaKernelWebsocketHandler):  # type: ignore[misc]
        def on_message(self, message: object) -> Any:
            if not frame_is_readable(message, self.selected_subprotocol):
                self.log.warning("closing a kernel websocket: a frame's offsets do not fit in it")
                self.close(1007, "malformed frame")
                return None
            return super().on_message(message)

        def write_message(self, message: object, binary: bool = False) -> Any:
            header = message.get("header") if isinstance(message, dict) else None
            if isinstance(message, bytes):
                header = v1_frame_header(message)
            if isinstance(header, dict) and header.get("msg_type") == "execute_input":
                return None
            # Past Voilà's own check, which would read the frame unbounded.
            return WebsocketHandler.write_message(self, message, binary)

    class App(voila):  # type: ignore[misc]
        def init_handlers(self) -> list[Any]:
            handlers: list[Any] = super().init_handlers()
            return [
                (route[0], KernelWebsocketHandler, *route[2:])
                if route[1] is VoilaKernelWebsocketHandler
                else route
                for route in handlers
            ]

    return App
