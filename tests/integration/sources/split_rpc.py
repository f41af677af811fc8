"""A load balancer in front of two JSON-RPC nodes of one chain, for the tests.

A real HTTP endpoint on 127.0.0.1 (a free port) that forwards each call unchanged, with its
Authorization header, to the first node, or to the second one for the ``methods`` given: as
behind a provider's load balancer, where one call may reach a node lagging the node that
answered the one before.  The node's status and body come back as they were.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
from tests.loopback import LoopbackHttp, answer_json


class SplitRpc(LoopbackHttp):
    def __init__(self, first: str, second: str, methods: set[str]) -> None:
        #: (method, "first" or "second") of each call, in order.
        self.served: list[tuple[str, str]] = []
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                method = json.loads(body)["method"]
                which = "second" if method in methods else "first"
                balancer.served.append((method, which))
                headers = {"content-type": "application/json"}
                if self.headers.get("authorization"):
                    headers["authorization"] = self.headers["authorization"]
                upstream = second if which == "second" else first
                response = httpx.post(upstream, content=body, headers=headers, timeout=10.0)
                answer_json(self, response.content, response.status_code)

        super().__init__(Handler, "split-rpc")
