"""Domain names in the one spelling every part of Vigil keys on: the ASCII form.

A phishing click's host comes from a Mailchimp normaliser in punycode (``xn--uniswp-7nf.org``),
as a browser sends it; a STIX feed or a scam list may spell the same domain in Unicode
(``unisw\u0430p.org``, its ``a`` Cyrillic).  Stored as given, the listing never matched the
click: homograph domains are what phishing lists exist for.  Each side goes through
:func:`domain_to_ascii`.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import idna

#: C0 controls and space: what a browser strips from both ends of a URL.
C0_OR_SPACE = "".join(map(chr, range(0x21)))

#: What no domain may hold once mapped (the WHATWG URL standard's forbidden domain code points):
#: a browser refuses such a host, so it names no place a click went.
_FORBIDDEN_IN_DOMAIN = frozenset(C0_OR_SPACE[:0x20] + " #/:<>?@[\\]^|%\x7f")


def domain_to_ascii(host: str) -> str | None:
    """``host`` as the WHATWG URL standard's host parser makes it (percent-decoded as UTF-8,
    then UTS-46 mapped, non-transitional, without STD3 rules, as browsers do), in its ASCII
    (punycode) form without a trailing dot; None where a browser refuses it.  UTS-46 comes from
    the ``idna`` package (its mapping table of the Unicode version it ships)."""
    if host.isascii() and "%" not in host:
        # UTS-46 maps ASCII by lower-casing it alone (without STD3 rules): a sixth of the cost,
        # for the names nearly every list and click holds.
        mapped = host.lower()
    else:
        try:
            decoded = unquote_to_bytes(host).decode("utf-8")
            mapped = idna.uts46_remap(decoded, std3_rules=False, transitional=False)
        except (UnicodeDecodeError, idna.IDNAError):
            return None
    mapped = mapped.rstrip(".")
    if not mapped or any(c in _FORBIDDEN_IN_DOMAIN for c in mapped):
        return None
    try:
        labels = [
            label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
            for label in mapped.split(".")
        ]
    except UnicodeError:
        return None
    return ".".join(labels)


def email_to_ascii(address: str) -> str | None:
    """``address`` with its domain (after the last ``@``) in the ASCII form of
    :func:`domain_to_ascii`, the whole lower-cased (mailbox names are matched case-insensitively,
    as every mail provider does); None where the domain is one no browser or mail server could
    resolve.  A STIX feed may list ``support@unisw\u0430p.org`` for the punycode sender a phishing
    mail carries."""
    local, at, domain = address.rpartition("@")
    if not at:
        return None
    ascii_domain = domain_to_ascii(domain)
    if ascii_domain is None:
        return None
    return f"{local.lower()}@{ascii_domain}"
