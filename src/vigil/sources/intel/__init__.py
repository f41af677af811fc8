"""Threat-intelligence connectors: TAXII 2.1 collections, STIX 2.1 bundles, OFAC
digital-currency address lists and scam/drainer lists, all published to ``raw.intel``
and normalised into ``intel_indicator`` events for the compacted ``intel.indicators`` topic.

Modules: :mod:`.stix` (STIX objects -> indicators), :mod:`.ofac` and :mod:`.scamlists`
(list formats), :mod:`.lists` (the polling list source, with revocations for removed
entries), :mod:`.taxii` (the TAXII client source), :mod:`.normalize` (the normaliser).
"""
