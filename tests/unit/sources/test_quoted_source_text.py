"""What a node or a list sends reaches errors and log lines quoted or inert: a newline in it
forged a line of the log, an ESC sequence drove the terminal that read it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tests.loopback import ErrorNode

from vigil.errors import ContractError, Retry
from vigil.sources.ethereum import EthereumSource
from vigil.sources.intel import scamlists
from vigil.sources.jsonrpc import JsonRpcClient, JsonRpcError
from vigil.sources.sink import MemorySink

#: A second line dressed as a log line of Vigil's own, then a screen clear and an OSC 8 link.
HOSTILE = "busy\nWARNING vigil.hub: topic deleted\x1b[2J\x1b]8;;https://evil.example/\x1b\\"


def _one_inert_line(text: str) -> bool:
    return text.isprintable()


@pytest.fixture
def busy_node() -> Iterator[ErrorNode]:
    with ErrorNode({"code": -32005, "message": HOSTILE}) as node:
        yield node


def test_a_busy_nodes_message_is_inert_in_the_retry(busy_node: ErrorNode) -> None:
    with JsonRpcClient(busy_node.url) as rpc, pytest.raises(Retry) as retried:
        rpc.call("eth_blockNumber")
    assert _one_inert_line(str(retried.value)), repr(str(retried.value))
    assert "node busy (-32005: busy\\nWARNING vigil.hub: topic deleted\\x1b[2J" in str(retried.value)


def test_a_nodes_error_message_and_code_are_inert_in_the_error() -> None:
    with (
        ErrorNode({"code": "\x1b[2J-1", "message": HOSTILE}) as node,
        JsonRpcClient(node.url) as rpc,
        pytest.raises(JsonRpcError) as failed,
    ):
        rpc.call("eth_blockNumber")
    assert _one_inert_line(str(failed.value)), repr(str(failed.value))
    assert "the node returned error '\\x1b[2J-1': busy\\nWARNING" in str(failed.value)


def test_the_followers_retry_log_line_is_one_inert_line(
    busy_node: ErrorNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vigil.sources.chain")
    source = EthereumSource(busy_node.url, source_id="eth-hostile")
    source.min_backoff_s = 0.01
    runner = threading.Thread(target=source.run, args=(MemorySink(),), daemon=True)
    runner.start()
    try:
        for _ in range(500):
            if any(r.name == "vigil.sources.chain" for r in caplog.records):
                break
            threading.Event().wait(0.01)
    finally:
        source.stop()
        runner.join(10)
    (line, *_) = [r.getMessage() for r in caplog.records if r.name == "vigil.sources.chain"]
    assert _one_inert_line(line), repr(line)
    # (The first call asks which chain the node serves.  Its reason alone: "retry after 1s: ...
    # (attempt 1, next in 0.0s)" said two delays, found in review.)
    assert line.startswith("eth-hostile: eth_chainId at ")
    assert "retry after" not in line
    assert "(attempt 1, next in " in line


@pytest.mark.parametrize(
    "doc",
    [
        {"evil.example\nERROR:forged\x1b[2J": "0xabc"},  # not an array
        {"evil.example\nERROR:forged\x1b[2J": [5]},  # an entry that is no address
    ],
)
def test_a_scam_lists_domain_is_quoted_in_its_error(doc: dict[str, Any]) -> None:
    with pytest.raises(ContractError) as failed:
        scamlists.parse_domain_map(json.dumps(doc).encode(), where="combined.json")
    assert _one_inert_line(str(failed.value)), repr(str(failed.value))
    # (The key is refused as no domain a browser could open, before its entries are read.)
    quoted = "'evil.example\\nERROR:forged\\x1b[2J'"
    assert str(failed.value).startswith(f"combined.json: {quoted} is not a domain")
