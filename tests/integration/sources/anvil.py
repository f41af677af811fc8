"""A real local Ethereum node for the tests: anvil, from npm ``@foundry-rs/anvil``.

The package is installed on first use into ``.vigil/tools/anvil`` (git-ignored); the
binary lives in its platform package (``@foundry-rs/anvil-linux-amd64/bin/anvil`` and
the like), found by globbing rather than by a hard-coded platform name.  Each
:class:`Anvil` runs on a free loopback port and is stopped (and reaped) by the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
from tests.loopback import LoopbackHttp, answer_json

from vigil.hub.broker import free_port_block

REPO = Path(__file__).resolve().parents[3]
TOOLS = REPO / ".vigil" / "tools"
ANVIL_PACKAGE = "@foundry-rs/anvil@1.7.1"

#: The chain id anvil serves by default (a connector following it is built for it, not mainnet's 1).
ANVIL_CHAIN_ID = 31337

#: anvil's first default dev account (unlocked: accepts eth_sendTransaction)
DEV_ACCOUNTS = [
    "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
    "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
    "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
    "0x90f79bf6eb2c4f870365e785982e1f101e93b906",
]


def npm_install(prefix: Path, package: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install the test node (see README prerequisites)")
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", package],
        check=True,
        capture_output=True,
        timeout=300,
    )


def anvil_binary() -> Path:
    prefix = TOOLS / "anvil"
    found = sorted(prefix.glob("node_modules/@foundry-rs/anvil-*/bin/anvil"))
    if not found:
        npm_install(prefix, ANVIL_PACKAGE)
        found = sorted(prefix.glob("node_modules/@foundry-rs/anvil-*/bin/anvil"))
    if not found:
        raise RuntimeError(f"{ANVIL_PACKAGE} installed in {prefix} but no anvil binary was found in it")
    return found[0]


def free_port() -> int:
    # Below the kernel's range for outgoing source ports: a port from bind(0) lies inside it,
    # and any client's connection (Kafka's, during the server's start-up) could take it first.
    return free_port_block(1)


class Anvil:
    """One anvil process with a JSON-RPC helper; use as a context manager."""

    def __init__(self, *, block_time: float | None = None, genesis_timestamp: int | None = None) -> None:
        """``genesis_timestamp`` fixes the genesis block's time: two nodes started with the same
        one and mined alike (:meth:`mine_spaced`) hold the same chain, block hashes included,
        so one can play a node lagging the other."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._block_time = block_time
        self._genesis_timestamp = genesis_timestamp
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)
        self._ids = 0

    def __enter__(self) -> Anvil:
        args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        if self._block_time is not None:
            args += ["--block-time", str(self._block_time)]
        if self._genesis_timestamp is not None:
            args += ["--timestamp", str(self._genesis_timestamp)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"anvil exited with {self._proc.returncode}: {err[-500:]}")
            try:
                self.rpc("eth_blockNumber")
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"anvil did not answer on {self.url} within 20 s")

    def __exit__(self, *exc: object) -> None:
        self._http.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None

    def rpc(self, method: str, *params: Any) -> Any:
        self._ids += 1
        resp = self._http.post(
            self.url, json={"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}
        )
        body = resp.json()
        if "error" in body:
            raise RuntimeError(f"anvil {method}{params}: {body['error']}")
        return body["result"]

    # ------------------------------------------------------------------ conveniences

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", hex(blocks))

    def mine_spaced(self, blocks: int = 1, spacing_s: int = 12) -> None:
        """Mine ``blocks`` blocks, each ``spacing_s`` after its parent (not at the wall clock's
        time): the same calls on nodes of one chain mine the same blocks."""
        for _ in range(blocks):
            parent = self.rpc("eth_getBlockByNumber", "latest", False)
            self.rpc("evm_mine", int(parent["timestamp"], 16) + spacing_s)

    def send(
        self, sender: str, to: str | None, *, value: int = 0, data: str = "0x", gas: int | None = None
    ) -> str:
        """Send from an unlocked dev account; an explicit ``gas`` skips estimation, so a
        transaction that reverts is still mined (with status 0)."""
        tx: dict[str, str] = {"from": sender, "value": hex(value), "data": data}
        if gas is not None:
            tx["gas"] = hex(gas)
        if to is not None:
            tx["to"] = to
        tx_hash: str = self.rpc("eth_sendTransaction", tx)
        return tx_hash

    def receipt(self, tx_hash: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            receipt: dict[str, Any] | None = self.rpc("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return receipt
            time.sleep(0.02)
        raise RuntimeError(f"no receipt for {tx_hash} within 10 s")


class RpcProxy(LoopbackHttp):
    """A real HTTP JSON-RPC endpoint in front of anvil that answers some methods itself
    (to play an older or different node), forwarding everything else unchanged.

    ``errors`` answers every call of a method with that error; ``refuse``, given each request,
    returns the error to answer it with, or None to forward it.  ``calls`` lists the methods
    called, in order."""

    def __init__(
        self,
        upstream: str,
        errors: dict[str, tuple[int, str]] | None = None,
        refuse: Callable[[dict[str, Any]], tuple[int, str] | None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.errors = errors or {}
        self.refused: list[str] = []
        self.calls: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = json.loads(body)
                proxy.calls.append(request["method"])
                refusal = proxy.errors.get(request["method"]) or (refuse(request) if refuse else None)
                if refusal is not None:
                    proxy.refused.append(request["method"])
                    code, message = refusal
                    error = {"code": code, "message": message}
                    out = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode()
                else:
                    out = httpx.post(
                        proxy.upstream, content=body, headers={"content-type": "application/json"}
                    ).content
                answer_json(self, out)

        super().__init__(Handler, "rpc-proxy")
