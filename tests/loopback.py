"""HTTP servers for tests: on 127.0.0.1, a free port, served from a thread while entered."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class LoopbackHttp:
    """Serves ``handler`` on a free loopback port (``url``) between ``__enter__`` and ``__exit__``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval keeps shutdown() (and so each test's teardown) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=name, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def answer_json(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    """Send ``body`` as the JSON answer to the request ``handler`` is handling."""
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class ErrorNode(LoopbackHttp):
    """A JSON-RPC endpoint answering every call with ``error`` (what a node's words can hold)."""

    def __init__(self, error: dict[str, Any]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                answer_json(
                    self, json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode()
                )

        super().__init__(Handler, "error-node")
