"""Ids minted in blocks: deterministic per seed and namespace, unique across block boundaries."""

from __future__ import annotations

import re

from vigil.sim.factory import IdMint, Make


def test_ids_are_deterministic_unique_hex_and_differ_by_namespace() -> None:
    a = IdMint(7, "benign")
    ids = [a.mint() for _ in range(2_000)]  # several blocks of 512
    again = IdMint(7, "benign")
    assert [again.mint() for _ in range(2_000)] == ids
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    other = {IdMint(7, "spoofing:0").mint() for _ in range(100)} | {IdMint(8, "benign").mint()}
    assert not other & set(ids)


def test_named_hashes_repeat_and_fresh_ones_do_not() -> None:
    m = Make(7, "drainer_approval:1", 1.7e9)
    assert m.tx_hash("drain", 0) == m.tx_hash("drain", 0) != m.tx_hash("drain", 1)
    fresh = {m.fresh_tx_hash() for _ in range(1_000)}
    assert len(fresh) == 1_000
    assert all(re.fullmatch(r"0x[0-9a-f]{64}", h) for h in fresh)
