"""The JSON-RPC client against a local HTTP endpoint: where requests go and what is logged."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from tests.loopback import LoopbackHttp, answer_json

from vigil.sources.jsonrpc import JsonRpcClient


class _Endpoint(LoopbackHttp):
    """A JSON-RPC endpoint on 127.0.0.1 (a free port) answering every call with ``"0x10"`` and
    keeping the path and the Authorization header of each request."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                endpoint.paths.append(self.path)
                endpoint.auth.append(self.headers.get("authorization"))
                out = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x10"}).encode()
                answer_json(self, out)

        super().__init__(Handler, "json-rpc")


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    with _Endpoint() as server:
        yield server


@pytest.mark.parametrize("path", ["/v3/0123456789abcdef", "/wallet/hot", "/"])
def test_requests_go_to_the_configured_path_exactly(endpoint: _Endpoint, path: str) -> None:
    # As a base URL with post(""), httpx added a "/": /v3/<key>/, and Bitcoin Core's
    # /wallet/hot/ (a wallet named "hot/", which does not exist).
    with JsonRpcClient(endpoint.url + path) as rpc:
        assert rpc.call("eth_blockNumber") == "0x10"
    assert endpoint.paths == [path]


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_no_log_line_shows_the_api_key_or_the_credentials_in_the_url(
    endpoint: _Endpoint, caplog: pytest.LogCaptureFixture, level: int
) -> None:
    # httpx logs each request's URL at INFO: a deployment logging at INFO wrote the key on
    # every call.  The line stays, with the URL as messages show it (scheme, host, port).
    caplog.set_level(level)
    url = endpoint.url.replace("http://", "http://user:pw-SECRET-1@") + "/v3/key-SECRET-2"
    with JsonRpcClient(url) as rpc:
        rpc.call("eth_blockNumber")
    assert endpoint.auth == ["Basic " + base64.b64encode(b"user:pw-SECRET-1").decode()]  # still sent
    assert "SECRET" not in caplog.text
    (line,) = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert line.startswith(f"HTTP Request: POST {endpoint.url} ")
