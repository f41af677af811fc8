"""Client IP addresses: one address, one spelling, whichever source saw it."""

from __future__ import annotations

import pytest

from vigil.sources.addresses import client_ip


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9\n", "203.0.113.9"),
        ("2001:DB8:0000:0::1", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4-mapped: the IPv4 client a dual-stack server saw
        ("::ffff:cb00:7109", "203.0.113.9"),
        ("fe80::1%eth0", "fe80::1"),  # the zone names this host's interface, not the client
        ("2001:db8::bad%\u202eevil", "2001:db8::bad"),  # any text may follow the "%"
        ("::ffff:1.2.3.4%x", "1.2.3.4"),
        ("s3.amazonaws.com", None),
        ("Salesforce.com IP", None),
        ("203.0.113.9:5555", None),
        ("", None),
        (None, None),
        (3405803785, None),  # a number is no string of an address
        (["203.0.113.9"], None),
    ],
)
def test_client_ip(value: object, expected: str | None) -> None:
    assert client_ip(value) == expected
