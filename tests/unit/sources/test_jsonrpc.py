"""The JSON-RPC client against local HTTP endpoints: where requests go, what is logged, which
failures are waited out and for how long."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from gzip import compress as gzip_compress
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from tests.loopback import ErrorNode, LoopbackHttp, answer_json
from tests.paced import PacedRun

from vigil.config import Settings
from vigil.errors import ConfigError, Retry
from vigil.hub.topics import RAW_RECORD_MAX_BYTES
from vigil.sources.bitcoin import BitcoinSource
from vigil.sources.chain import MAX_RETRY_AFTER_S, backoff_s
from vigil.sources.ethereum import EthereumSource
from vigil.sources.jsonrpc import (
    DEADLINE_PER_TIMEOUT,
    MAX_RESPONSE_BYTES,
    JsonRpcClient,
    JsonRpcError,
    answer_too_large,
)
from vigil.sources.sink import MemorySink


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


# ---------------------------------------------------------------------- transport failures


class _CutGzip(LoopbackHttp):
    """Answers every call with a gzip body cut short (a proxy or a node dropping mid-body)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                body = b"\x1f\x8b\x08\x00garbage-cut-short"
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-encoding", "gzip")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler, "cut-gzip")


class _RestartingProxy(LoopbackHttp):
    """An egress HTTP proxy answering every CONNECT with 503 (restarting), keeping the targets."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_CONNECT(self) -> None:
                proxy.targets.append(self.path)
                self.send_response(503, "Service Unavailable")
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(Handler, "proxy-503")


def test_a_gzip_body_cut_short_is_a_retry() -> None:
    # httpx.DecodingError escaped as a traceback and stopped the connector.
    with (
        _CutGzip() as server,
        JsonRpcClient(server.url) as rpc,
        pytest.raises(Retry, match=f"eth_blockNumber at {server.url}: DecodingError: "),
    ):
        rpc.call("eth_blockNumber")


def test_an_egress_proxy_refusing_the_tunnel_is_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx.ProxyError (the proxy's 503 to CONNECT) escaped as a traceback; the same 503 from the
    # node itself was retried.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with _RestartingProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with (
            JsonRpcClient("https://eth-mainnet.example.com/v2/key-SECRET-1") as rpc,
            pytest.raises(Retry, match="ProxyError: 503") as info,
        ):
            rpc.call("eth_blockNumber")
    assert proxy.targets == ["eth-mainnet.example.com:443"]  # it went through the proxy
    assert "eth_blockNumber at https://eth-mainnet.example.com: " in str(info.value)
    assert "SECRET" not in str(info.value)


class _PacedEthereum(PacedRun, EthereumSource):
    pass


def test_the_connector_waits_out_a_cut_body_instead_of_dying() -> None:
    with _CutGzip() as server:
        source = _PacedEthereum(server.url, polls=3, confirmations=0)
        source.run(MemorySink())  # returns when stopped: no traceback
    assert source.waits == [1.0, 2.0, 4.0]


def test_a_request_that_cannot_be_sent_is_an_error_that_does_not_show_the_value(endpoint: _Endpoint) -> None:
    # A header value HTTP does not allow (h11's LocalProtocolError quotes it, and such headers
    # carry API keys): a configuration error, not a raw httpx traceback nor a retry for ever.
    with (
        JsonRpcClient(endpoint.url, headers={"x-api-key": "key-SECRET-1\nx"}) as rpc,
        pytest.raises(JsonRpcError, match="LocalProtocolError") as info,
    ):
        rpc.call("eth_blockNumber")
    assert not isinstance(info.value, Retry)
    assert "SECRET" not in str(info.value)
    assert endpoint.paths == []


@pytest.mark.parametrize(
    ("url", "got"),
    [
        ("htps://mainnet.infura.io/v3/key-SECRET-1", "got scheme 'htps' and host 'mainnet.infura.io'"),
        ("mainnet.infura.io/v3/key-SECRET-1", "got no scheme and no host"),
        ("ws://127.0.0.1:8546/key-SECRET-1", "got scheme 'ws' and host '127.0.0.1'"),
        ("https:///v3/key-SECRET-1", "got scheme 'https' and no host"),
        ("https://mainnet.infura.io/v3/key-SECRET-1\n", "is not a valid URL"),
        # A "/" in a password ends the host there: httpx's message quoted the password's start
        # as the port ("Invalid port: 'SECRET'").
        ("https://user:SECRET/c2VjcmV0@mainnet.infura.io/v3/", "must be percent-encoded: %2F for /"),
    ],
)
def test_a_url_that_is_not_http_is_refused_by_setting_when_the_source_is_built(
    tmp_path: Path, url: str, got: str
) -> None:
    # Accepted, it failed at the first call with httpx.UnsupportedProtocol, a traceback.
    settings = Settings(home=tmp_path)
    with pytest.raises(
        ConfigError, match="ethereum source: option url \\(or the setting ethereum_rpc_url\\)"
    ) as eth:
        EthereumSource.from_settings(settings, url=url)
    with pytest.raises(ConfigError, match="bitcoin source: option url") as btc:
        BitcoinSource.from_settings(settings, url=url)
    for info in (eth, btc):
        assert got in str(info.value)
        assert "SECRET" not in str(info.value)


# ---------------------------------------------------------------------- Retry-After


class _RateLimited(LoopbackHttp):
    """Answers every call with HTTP 429 and the given ``Retry-After``."""

    def __init__(self, retry_after: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(429)
                self.send_header("retry-after", retry_after)
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(Handler, "rate-limited")


@pytest.mark.parametrize(
    "retry_after",
    [
        "86400000",  # 1,000 days: the connector slept them after one warning
        "10000000000",  # the wait itself raised OverflowError
        "999999999999999",  # timedelta raised OverflowError
        "9" * 5000,  # int() refuses it: ValueError
        "Fri, 31 Dec 9999 23:59:59 GMT",  # an HTTP date, far ahead
    ],
)
def test_a_huge_retry_after_is_capped_and_said_once(
    retry_after: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="vigil.sources.http_limits"),
        _RateLimited(retry_after) as node,
        JsonRpcClient(node.url) as rpc,
    ):
        for _ in range(3):
            with pytest.raises(Retry, match="HTTP 429") as info:
                rpc.call("eth_blockNumber")
            assert info.value.after == timedelta(seconds=MAX_RETRY_AFTER_S)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "vigil.sources.http_limits"]
    assert f"{node.url} asked to wait " in line
    assert f"waiting at most {MAX_RETRY_AFTER_S:g} s" in line


def test_an_http_date_retry_after_is_honoured_as_a_delay() -> None:
    # Read as "no Retry-After": the default second, against a node asking for two minutes.
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    past = "Mon, 01 Jan 2001 00:00:00 GMT"
    with _RateLimited(soon) as node, JsonRpcClient(node.url) as rpc, pytest.raises(Retry) as info:
        rpc.call("eth_blockNumber")
    assert timedelta(seconds=100) < info.value.after <= timedelta(seconds=120)
    with _RateLimited(past) as node, JsonRpcClient(node.url) as rpc, pytest.raises(Retry) as info:
        rpc.call("eth_blockNumber")
    assert info.value.after == timedelta(0)


def test_the_connector_waits_a_capped_retry_after_then_backs_off_as_usual() -> None:
    with _RateLimited("86400000") as node:
        source = _PacedEthereum(node.url, polls=2, confirmations=0)
        source.run(MemorySink())
    assert source.waits == [MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S]


def test_backoff_caps_what_was_asked() -> None:
    # Whatever raised the Retry: an uncapped ask stalled the connector, or crashed the wait.
    assert backoff_s(1e15, 1) == MAX_RETRY_AFTER_S
    assert backoff_s(float("inf"), 3) == MAX_RETRY_AFTER_S
    assert backoff_s(float("nan"), 1) == MAX_RETRY_AFTER_S
    assert backoff_s(45.0, 1) == 45.0  # a reasonable ask is still honoured in full
    assert backoff_s(MAX_RETRY_AFTER_S + 1, 1) == MAX_RETRY_AFTER_S


# ---------------------------------------------------------------------- deadline, size, depth


class _Body(LoopbackHttp):
    """Answers every call with ``status`` and ``body(request id)``: at once with its
    content-length (``pieces=None``), or in ``pieces`` writes ``pace`` seconds apart without one
    (the body ends with the connection); gzip-compressed when ``gzip``.  The answer ends when the
    client hangs up, or when the server is left."""

    def __init__(
        self,
        body: Callable[[int], bytes],
        *,
        status: int = 200,
        pieces: int | None = None,
        pace: float = 0.0,
        gzip: bool = False,
    ) -> None:
        self._left = threading.Event()
        left = self._left

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                data = body(request["id"])
                self.send_response(status)
                self.send_header("content-type", "application/json")
                if gzip:
                    data = gzip_compress(data)
                    self.send_header("content-encoding", "gzip")
                if pieces is None:
                    self.send_header("content-length", str(len(data)))
                self.end_headers()
                step = -(-len(data) // (pieces or 1))
                try:
                    for start in range(0, len(data), step):
                        if start and left.wait(pace):
                            return
                        self.wfile.write(data[start : start + step])
                except OSError:
                    return  # the client hung up (past its deadline or its limit)

        super().__init__(Handler, "body")

    def __exit__(self, *exc: object) -> None:
        self._left.set()
        super().__exit__(*exc)


def _answer(request_id: int, result_bytes: int = 6, padding: int = 0) -> bytes:
    """A JSON-RPC answer: ``padding`` spaces, then a result of ``result_bytes`` bytes (at least 4:
    ``"0x"``; ``"0x11"`` by default)."""
    result = b'"0x' + b"1" * (result_bytes - 4) + b'"'
    return b" " * padding + b'{"jsonrpc":"2.0","id":%d,"result":%s}' % (request_id, result)


def test_a_body_sent_a_byte_at_a_time_is_retried_at_the_deadline() -> None:
    # httpx's timeout is per read: one byte every 20 ms never ran into timeout_s, and a node
    # (or a proxy) dripping its body held the connector, stop() included, as long as it liked.
    # Here the whole answer would take 2 s.
    with _Body(lambda i: _answer(i, padding=60), pieces=100, pace=0.02) as node:
        url = node.url.replace("http://", "http://user:pw-SECRET-1@") + "/v3/key-SECRET-2"
        with (
            JsonRpcClient(url, timeout_s=5.0, deadline_s=0.3) as rpc,
            pytest.raises(
                Retry, match=f"eth_blockNumber at {node.url}: no complete response within 0.3s"
            ) as info,
        ):
            rpc.call("eth_blockNumber")
    assert info.value.after == timedelta(seconds=1)
    assert "SECRET" not in str(info.value)


def test_the_connector_backs_off_from_a_node_dripping_its_answers() -> None:
    with _Body(lambda i: _answer(i, padding=60), pieces=100, pace=0.02) as node:
        rpc = JsonRpcClient(node.url, deadline_s=0.2)
        source = _PacedEthereum(node.url, polls=3, confirmations=0, rpc=rpc)
        source.run(MemorySink())  # returns when stopped: no traceback
    assert source.waits == [1.0, 2.0, 4.0]


def test_the_deadline_defaults_to_a_multiple_of_the_read_timeout() -> None:
    # Long enough for the largest block a node may send; a node answering in time is unaffected.
    with (
        _Body(lambda i: _answer(i, padding=5), pieces=10, pace=0.001) as node,
        JsonRpcClient(node.url, timeout_s=0.5) as rpc,
    ):
        assert rpc.call("eth_blockNumber") == "0x11"
        assert rpc._deadline_s == DEADLINE_PER_TIMEOUT * 0.5
    assert DEADLINE_PER_TIMEOUT * 10.0 >= 60.0


@pytest.mark.parametrize(
    "node",
    [
        pytest.param({"pieces": None}, id="with-content-length"),
        pytest.param({"pieces": 64}, id="until-the-connection-ends"),
        pytest.param({"gzip": True}, id="gzip-small-on-the-wire"),
    ],
)
def test_a_body_past_the_size_limit_is_not_read_whole(node: dict[str, Any]) -> None:
    # The whole body went to memory, whatever its size (a proxy's endless answer, a gzip bomb).
    limit = 64 << 10
    with (
        _Body(lambda i: _answer(i, result_bytes=1 << 20), **node) as server,
        JsonRpcClient(server.url, max_response_bytes=limit) as rpc,
        pytest.raises(
            JsonRpcError, match=f"eth_blockNumber at {server.url}: the response is larger than 65,536 bytes"
        ),
    ):
        rpc.call_raw("eth_blockNumber")


def test_an_endless_body_is_cut_at_the_size_limit() -> None:
    with (
        _Body(lambda i: b" " * (16 << 20), pieces=256) as server,  # (ended by the test, not the node)
        JsonRpcClient(server.url, max_response_bytes=64 << 10) as rpc,
        pytest.raises(JsonRpcError, match="larger than 65,536 bytes"),
    ):
        rpc.call("eth_blockNumber")


def test_a_body_of_exactly_the_size_limit_is_read() -> None:
    limit = 64 << 10
    size = limit - (len(_answer(1)) - 6)  # (the first call's id is 1)
    with _Body(lambda i: _answer(i, result_bytes=size), pieces=8) as server:
        with JsonRpcClient(server.url, max_response_bytes=limit) as rpc:
            assert len(rpc.call_raw("eth_blockNumber")) == size
        assert len(_answer(1, result_bytes=size)) == limit


def test_the_default_size_limit_admits_the_largest_raw_record() -> None:
    # A raw block is published as one record: the limit is the raw topics', plus the envelope.
    assert RAW_RECORD_MAX_BYTES < MAX_RESPONSE_BYTES <= RAW_RECORD_MAX_BYTES + (1 << 20)


def _deep(request_id: int) -> bytes:
    nested = b"[" * 20000 + b"]" * 20000
    return b'{"jsonrpc":"2.0","id":%d,"error":{"code":-1,"message":"x","data":%s}}' % (request_id, nested)


@pytest.mark.parametrize(("status", "raised"), [(200, JsonRpcError), (500, Retry)])
def test_deeply_nested_json_is_an_unreadable_answer(status: int, raised: type[Exception]) -> None:
    # RecursionError escaped (neither a JsonRpcError nor a Retry) and stopped the connector with
    # a traceback; it is now what any other unreadable answer is: an error naming the method, or
    # retried from a server error.
    with (
        _Body(_deep, status=status) as server,
        JsonRpcClient(server.url) as rpc,
        pytest.raises(raised, match=f"eth_blockNumber at {server.url}: HTTP {status}") as info,
    ):
        rpc.call("eth_blockNumber")
    assert isinstance(info.value, JsonRpcError) == (raised is JsonRpcError)


# ---------------------------------------------------------------------- -32005


@pytest.mark.parametrize(
    "said", ["query returned more than 10000 results", "Log response size exceeded. You can make ..."]
)
def test_an_answer_capped_for_its_size_is_an_error_not_a_busy_node(said: str) -> None:
    # Infura's -32005 for a block with too many logs is the same answer at every attempt: as
    # "node busy" it was retried every 30 s for ever.
    with (
        ErrorNode({"code": -32005, "message": said}) as node,
        JsonRpcClient(node.url) as rpc,
        pytest.raises(JsonRpcError) as info,
    ):
        rpc.call("eth_getLogs", [{"blockHash": "0x" + "ab" * 32}], about="block 7")
    assert (info.value.code, info.value.detail) == (-32005, said)
    assert answer_too_large(info.value)
    assert f"eth_getLogs for block 7 at {node.url}: the node returned error -32005: {said}" in str(info.value)


def test_a_rate_limit_with_the_same_code_is_still_waited_out() -> None:
    with (
        ErrorNode({"code": -32005, "message": "project ID request rate exceeded"}) as node,
        JsonRpcClient(node.url) as rpc,
        pytest.raises(Retry, match=r"node busy \(-32005: project ID request rate exceeded\)"),
    ):
        rpc.call("eth_blockNumber")
