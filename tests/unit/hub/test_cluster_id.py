"""Cluster ids for the local broker's storage format."""

from __future__ import annotations

import base64

from vigil.hub.broker import _random_cluster_id


def test_cluster_ids_are_16_bytes_and_never_read_as_an_option() -> None:
    # One base64url id in 64 starts with "-", which `kafka-storage format -t <id>` reads as an
    # option (a three-node test failed that way).  5,000 draws would meet one with certainty.
    ids = [_random_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    for i in ids[:100]:
        assert len(i) == 22
        assert len(base64.urlsafe_b64decode(i + "==")) == 16
