"""A local Bitcoin Core JSON-RPC endpoint serving recorded ``getblock`` responses.

A real HTTP server on 127.0.0.1 (a free port) that answers ``getblockcount``,
``getblockhash`` and ``getblock <hash> 2`` from the real responses in
``../shared/data/chain/bitcoin``, the way Bitcoin Core does: HTTP basic auth, JSON-RPC
errors with HTTP 500 (``-8`` height out of range, ``-5`` block not found) and 404 for
unknown methods.  ``head`` limits the chain the server admits to, so a test can make
blocks "appear"; ``missing`` heights are "out of range" although under the head (a node
behind a load balancer lagging the one that answered ``getblockcount``); ``chain`` is the network
``getblockchaininfo`` names (the recorded blocks are mainnet's); ``fail_next`` answers
that many requests with 503 (a node restarting), ``fail_nth`` answers only the n-th request
(1-based, counted from start) with 503.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.loopback import LoopbackHttp

from vigil.config import shared_data_dir

REPO = Path(__file__).resolve().parents[3]
DATA = shared_data_dir() / "chain" / "bitcoin"


def recorded_blocks() -> dict[str, bytes]:
    """Recorded verbosity-2 blocks by hash, as the node sent them."""
    blocks = {}
    for path in sorted(DATA.glob("*_getblock_*_2.json")):
        # The files end with a newline a node does not put inside its JSON-RPC envelope.
        raw = path.read_bytes().strip()
        blocks[json.loads(raw)["hash"]] = raw
    return blocks


class BitcoinRpcServer(LoopbackHttp):
    def __init__(
        self,
        *,
        user: str = "vigil",
        password: str = "s3cret-test-pw",  # noqa: S107 - a test server's own password
        head: int | None = None,
    ) -> None:
        self.blocks = recorded_blocks()
        self.heights = {json.loads(raw)["height"]: h for h, raw in self.blocks.items()}
        self.head = max(self.heights) if head is None else head
        self.missing: set[int] = set()
        self.chain = "main"
        self.fail_next = 0
        #: The status and body those failures answer with (a proxy in front of a node answers
        #: with its own HTML page).
        self.fail_with: tuple[int, bytes] = (503, b"node restarting")
        self.fail_nth: int | None = None
        self.requests = 0
        self.calls: list[str] = []
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._lock = threading.Lock()
        super().__init__(self._handler(), "btc-rpc")

    def answer(self, method: str, params: list[Any]) -> tuple[int, Any, dict[str, Any] | None]:
        """(HTTP status, raw JSON result or None, error or None) for one call."""
        if method == "getblockcount":
            return 200, str(self.head).encode(), None
        if method == "getblockchaininfo":
            return 200, json.dumps({"chain": self.chain, "blocks": self.head}).encode(), None
        if method == "getblockhash":
            height = params[0] if params else None
            if (
                not isinstance(height, int)
                or height > self.head
                or height not in self.heights
                or height in self.missing
            ):
                return 500, None, {"code": -8, "message": "Block height out of range"}
            return 200, json.dumps(self.heights[height]).encode(), None
        if method == "getblock":
            block_hash = params[0] if params else None
            verbosity = params[1] if len(params) > 1 else 1
            raw = self.blocks.get(block_hash) if isinstance(block_hash, str) else None
            if raw is None or json.loads(raw)["height"] > self.head:
                return 500, None, {"code": -5, "message": "Block not found"}
            if verbosity != 2:
                return (
                    500,
                    None,
                    {"code": -8, "message": f"this recording only has verbosity 2, not {verbosity}"},
                )
            return 200, raw, None
        return 404, None, {"code": -32601, "message": "Method not found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with server._lock:
                    server.requests += 1
                    if server.fail_next > 0 or server.requests == server.fail_nth:
                        server.fail_next = max(0, server.fail_next - 1)
                        self._send(*server.fail_with, {"retry-after": "0"})
                        return
                if self.headers.get("authorization") != server._auth:
                    self._send(401, b"", {"www-authenticate": 'Basic realm="jsonrpc"'})
                    return
                request = json.loads(body)
                server.calls.append(request["method"])
                status, result, error = server.answer(request["method"], request.get("params", []))
                envelope = (
                    b'{"result":'
                    + (result if result is not None else b"null")
                    + b',"error":'
                    + json.dumps(error).encode()
                    + b',"id":'
                    + json.dumps(request.get("id")).encode()
                    + b"}"
                )
                self._send(status, envelope, {"content-type": "application/json"})

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
