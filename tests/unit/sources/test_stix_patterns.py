"""STIX patterns -> the values an indicator lists: alternatives kept, IPs spelt as events spell
them, networks as networks."""

from __future__ import annotations

import json

import pytest

from vigil.config import shared_data_dir
from vigil.detect.intel import IntelIndex
from vigil.sources.intel.stix import parse_objects, pattern_values

MD5 = "file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e'"


@pytest.mark.parametrize(
    ("pattern", "values"),
    [
        # An IP beside a file hash: the IP was lost with the hash.
        (f"[ipv4-addr:value = '1.2.3.4'] OR [{MD5}]", [("ipv4", "1.2.3.4")]),
        (f"[ipv4-addr:value = '1.2.3.4' OR {MD5}]", [("ipv4", "1.2.3.4")]),
        ("[ipv6-addr:value = '2001:DB8:0:0::1']", [("ipv6", "2001:db8::1")]),
        ("[ipv4-addr:value = '223.166.0.0/15']", [("ipv4", "223.166.0.0/15")]),
        ("[ipv4-addr:value = '10.1.2.3/32']", [("ipv4", "10.1.2.3")]),
        ("[ipv4-addr:value ISSUBSET '198.51.100.0/24']", [("ipv4", "198.51.100.0/24")]),
        (f"[{MD5}]", None),
        ("[ipv4-addr:value != '1.2.3.4']", None),
        ("[domain-name:value = 'a.example'] AND [ipv4-addr:value = '1.2.3.4']", None),
    ],
)
def test_pattern_values(pattern: str, values: list[tuple[str, str]] | None) -> None:
    assert pattern_values(pattern, where="t") == values


def test_the_real_apt1_bundles_ranges_match_addresses_inside_them() -> None:
    bundle = json.loads((shared_data_dir() / "intel" / "stix" / "apt1.json").read_bytes())
    result = parse_objects(bundle["objects"], where="apt1")
    networks = [i for i in result.indicators if "/" in i.value]
    assert networks, "the bundle lists /15 ranges"
    index = IntelIndex()
    index.add(
        [n.value for n in networks], indicator_type="ipv4", category="c2", feed="stix:apt1", list_version="v"
    )
    first = networks[0].value.split("/")[0].rsplit(".", 1)[0] + ".77"
    assert index.lookup(first) is not None
