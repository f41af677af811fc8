"""Client IP addresses as every source spells them in ``entities.ip``.

Intel indicators, per-IP history and counts key on the string, so one address must be one
string whichever source saw it: ``ipaddress``'s form (IPv6 compressed and lower-case), an
IPv4 address a dual-stack server logged as IPv4-mapped IPv6 (``::ffff:192.0.2.1``) as the IPv4
address.  A value that is no address (an AWS service name, Salesforce's ``Salesforce.com IP``
for its own requests, a host name) is no IP: as an entity it joined every event carrying it.
An IPv6 zone (``fe80::1%eth0``) is left out: it names the receiving host's interface, not the
client, and any text may follow the ``%`` (an address with ``%x`` appended escaped its intel).
"""

from __future__ import annotations

import ipaddress


def client_ip(value: object) -> str | None:
    """``value`` as a canonical IP address, or None when it is not a string holding one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Address(int(address)))  # (without its zone)
    return str(address)
