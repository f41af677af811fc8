"""The explicit registry of connectors and normalisers, by source name.

Adding a technology means adding a line here; nothing is discovered by scanning.
Factories are referenced by import path and imported only when used, so importing
this module does no I/O and pulls in no connector's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

#: source name -> "module:ClassName" of its Source implementation
SOURCES: dict[str, str] = {
    "ethereum": "vigil.sources.ethereum:EthereumSource",
    "bitcoin": "vigil.sources.bitcoin:BitcoinSource",
    "coinbase": "vigil.sources.coinbase:CoinbaseSource",
    "binance": "vigil.sources.binance:BinanceSource",
    "hubspot": "vigil.sources.hubspot:HubSpotSource",
    # HubSpot's audit log (logins, exports) publishes to raw.hubspot too (its name is "hubspot");
    # the HubSpot normaliser reads both.
    "hubspot_audit": "vigil.sources.hubspot_audit:HubSpotAuditSource",
    "salesforce": "vigil.sources.salesforce:SalesforceSource",
    "mailchimp": "vigil.sources.mailchimp:MailchimpSource",
    "backend": "vigil.sources.backend:BackendIngestSource",
    "syslog": "vigil.sources.syslog:SyslogSource",
    "cloudtrail": "vigil.sources.cloudtrail:CloudTrailSource",
    "intel": "vigil.sources.intel.lists:IntelListSource",
    # TAXII publishes to raw.intel too (its name is "intel"); the intel normaliser reads both.
    "taxii": "vigil.sources.intel.taxii:TaxiiSource",
}

#: source name -> "module:ClassName" of its Normalizer
NORMALIZERS: dict[str, str] = {
    "ethereum": "vigil.sources.ethereum_normalize:EthereumNormalizer",
    "bitcoin": "vigil.sources.bitcoin_normalize:BitcoinNormalizer",
    "coinbase": "vigil.sources.coinbase:CoinbaseNormalizer",
    "binance": "vigil.sources.binance:BinanceNormalizer",
    "hubspot": "vigil.sources.hubspot:HubSpotNormalizer",
    "salesforce": "vigil.sources.salesforce:SalesforceNormalizer",
    "mailchimp": "vigil.sources.mailchimp:MailchimpNormalizer",
    "backend": "vigil.sources.backend:BackendNormalizer",
    "syslog": "vigil.sources.syslog:SyslogNormalizer",
    "cloudtrail": "vigil.sources.cloudtrail:CloudTrailNormalizer",
    "intel": "vigil.sources.intel.normalize:IntelNormalizer",
}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def source_class(name: str) -> Any:
    try:
        return _load(SOURCES[name])
    except KeyError:
        msg = f"unknown source {name!r}; known: {', '.join(sorted(SOURCES)) or 'none'}"
        raise KeyError(msg) from None


def normalizer_for(name: str) -> Any:
    try:
        return _load(NORMALIZERS[name])()
    except KeyError:
        msg = f"no normaliser for source {name!r}; known: {', '.join(sorted(NORMALIZERS)) or 'none'}"
        raise KeyError(msg) from None
