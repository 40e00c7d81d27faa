"""A hand-written HTTP server on 127.0.0.1, for answers our own emulator never gives."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: (request, method) -> (content type, body) of the answer; every answer is a 200.
Answer = Callable[[BaseHTTPRequestHandler, str], tuple[str, bytes]]


@contextmanager
def loopback_server(answer: Answer) -> Iterator[str]:
    """Serve ``answer`` on a free loopback port; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply("GET")

        def do_POST(self) -> None:
            #: What was posted, for answers that keep it.
            self.body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._reply("POST")

        def _reply(self, method: str) -> None:
            content_type, body = answer(self, method)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        yield url


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port, in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
