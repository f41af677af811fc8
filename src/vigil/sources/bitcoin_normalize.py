"""Bitcoin raw blocks (``getblock <hash> 2``) -> ``chain_transfer`` events.

One event per transaction output that pays a resolvable address with a value above zero:
``to_address`` is the output's address (``scriptPubKey.address`` from Bitcoin Core 22,
``scriptPubKey.addresses`` when it is a single address, in older versions),
``value_raw`` the amount in satoshis, ``amount`` in BTC (8 decimals).

The sender is not part of an output.  It is resolved only where the block says it:

- a coinbase transaction (newly mined coins): ``from_address`` is ``"coinbase"`` and
  ``entities.wallet`` is empty;
- inputs that carry ``prevout`` (Bitcoin Core 25+ at verbosity 3): ``from_address`` is the
  address of the first input that has one, the usual common-input-ownership reading of a
  transaction (all inputs signed by one owner), which coin-joins violate;
- otherwise (verbosity 2, as in the recorded blocks): ``from_address`` is ``"unknown"``
  and ``entities.wallet`` is left empty, so nothing is attributed to a made-up wallet.
  Resolving it would need ``getrawtransaction`` on each spent transaction (a node with
  ``txindex``), which the normaliser, a pure function of the record, does not do.

Not turned into events: outputs without an address (``OP_RETURN`` data, bare multisig,
non-standard scripts, and pay-to-pubkey outputs on Core 22+ which report no address)
and zero-value outputs.  Change outputs are transfers like any other.

Each event names its block (``block_hash``), so the events of a block a reorg replaced can be
told apart.  Event ids derive from ``bitcoin`` + txid + output index.  Bad input (not JSON, missing
fields, a malformed txid or hash, verbosity-1 blocks) raises
:class:`~vigil.errors.ContractError` naming the record and the JSON path.
"""

from __future__ import annotations

import re
from datetime import timedelta

import msgspec

from vigil.errors import ContractError, DecodeError
from vigil.events.base import Event
from vigil.hub.raw import RawRecord
from vigil.sources.base import Normalizer
from vigil.sources.chain_normalize import block_time, chain_transfer, decode_record

BTC_DECIMALS = 8
SATOSHI_PER_BTC = 10**BTC_DECIMALS
MAX_SATOSHI = 21_000_000 * SATOSHI_PER_BTC
COINBASE = "coinbase"
UNKNOWN = "unknown"

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Base58 (legacy, P2SH) and bech32/bech32m (segwit, taproot) addresses, any network.
_ADDRESS = re.compile(r"[13mn2][1-9A-HJ-NP-Za-km-z]{25,34}|(?:bc|tb|bcrt)1[02-9ac-hj-np-z]{8,87}")


class _ScriptPubKey(msgspec.Struct):
    address: str | None = None
    addresses: list[str] | None = None


class _Prevout(msgspec.Struct):
    scriptPubKey: _ScriptPubKey


class _Vin(msgspec.Struct):
    coinbase: str | None = None
    txid: str | None = None
    prevout: _Prevout | None = None


class _Vout(msgspec.Struct):
    value: float
    n: int
    scriptPubKey: _ScriptPubKey


class _Tx(msgspec.Struct):
    txid: str
    vin: list[_Vin]
    vout: list[_Vout]


class _Block(msgspec.Struct):
    hash: str
    height: int
    time: int
    tx: list[_Tx | str]


_decoder = msgspec.json.Decoder(_Block)


def _address(spk: _ScriptPubKey, where: str, path: str) -> str | None:
    if spk.address is not None:
        candidate = spk.address
    elif spk.addresses is not None and len(spk.addresses) == 1:
        candidate = spk.addresses[0]
    else:
        return None
    if not _ADDRESS.fullmatch(candidate):
        msg = f"expected a Bitcoin address (base58 or bech32); got {candidate[:100]!r}"
        raise DecodeError(msg, where=where, path=path)
    return candidate


class BitcoinNormalizer(Normalizer):
    """``raw.bitcoin`` records (kind ``btc_block``) -> ``chain_transfer`` events."""

    source = "bitcoin"
    #: Consensus accepts a block dated up to two hours after the network-adjusted time.
    max_ahead = timedelta(hours=2, minutes=5)

    def normalize(self, record: RawRecord) -> list[Event]:
        where = f"raw.bitcoin {record.kind} (key {record.key!r})"
        if record.kind != "btc_block":
            msg = f"{where}: unknown record kind {record.kind!r}; expected 'btc_block'"
            raise ContractError(msg)
        block = decode_record(_decoder, record.value, where)
        if not _HEX64.fullmatch(block.hash):
            msg = f"expected a 64-hex block hash; got {block.hash[:80]!r}"
            raise DecodeError(msg, where=where, path="$.hash")
        if block.height < 0 or block.time < 0:
            msg = f"height and time must be >= 0; got height {block.height}, time {block.time}"
            raise DecodeError(msg, where=where, path="$.height")
        occurred_at = block_time(block.time, where, "$.time")
        events: list[Event] = []
        for i, tx in enumerate(block.tx):
            path = f"$.tx[{i}]"
            if isinstance(tx, str):
                msg = "expected transaction objects (getblock verbosity 2 or 3); got a txid"
                raise DecodeError(msg, where=where, path=path)
            if not _HEX64.fullmatch(tx.txid):
                msg = f"expected a 64-hex txid; got {tx.txid[:80]!r}"
                raise DecodeError(msg, where=where, path=f"{path}.txid")
            sender = self._sender(tx, where, path)
            # Only a real address is a wallet: "coinbase" and "unknown" would be hot fake keys.
            wallet = None if sender in (COINBASE, UNKNOWN) else sender
            for j, out in enumerate(tx.vout):
                opath = f"{path}.vout[{j}]"
                if not 0 <= out.value * SATOSHI_PER_BTC <= MAX_SATOSHI:
                    msg = f"output value must be between 0 and 21e6 BTC; got {out.value!r}"
                    raise DecodeError(msg, where=where, path=f"{opath}.value")
                # Exact: a double holds every satoshi count up to 21e14 (< 2**53).
                satoshi = round(out.value * SATOSHI_PER_BTC)
                to = _address(out.scriptPubKey, where, f"{opath}.scriptPubKey")
                if to is None or satoshi == 0:
                    continue
                events.append(
                    chain_transfer(
                        record,
                        chain="bitcoin",
                        tx_hash=tx.txid,
                        part=out.n,
                        occurred_at=occurred_at,
                        block_number=block.height,
                        from_address=sender,
                        wallet=wallet,
                        to_address=to,
                        asset="BTC",
                        value_raw=satoshi,
                        decimals=BTC_DECIMALS,
                        block_hash=block.hash,
                    )
                )
        return events

    @staticmethod
    def _sender(tx: _Tx, where: str, path: str) -> str:
        if not tx.vin:
            msg = "a transaction needs at least one input; got none"
            raise DecodeError(msg, where=where, path=f"{path}.vin")
        if tx.vin[0].coinbase is not None:
            return COINBASE
        for k, vin in enumerate(tx.vin):
            if vin.txid is None:
                msg = "a non-coinbase input must reference the spent transaction (txid)"
                raise DecodeError(msg, where=where, path=f"{path}.vin[{k}].txid")
            if vin.prevout is not None:
                found = _address(vin.prevout.scriptPubKey, where, f"{path}.vin[{k}].prevout.scriptPubKey")
                if found is not None:
                    return found
        return UNKNOWN
