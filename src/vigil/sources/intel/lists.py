"""The polling source for intelligence lists (OFAC, scam/drainer lists, STIX bundle files).

Each configured list (a local path or an http(s) URL) is fetched every ``poll_interval``
seconds.  When its content changed (SHA-256), the new content is published unchanged to
``raw.intel`` (kind ``address_list``, or ``stix_bundle`` for a STIX file), with the list
name, format, feed and version (the content hash) in ``meta``, keyed by the feed: the lists of
one feed share its indicators, so their records (a revocation from one list, the listing from
another) must reach the normaliser in the order they were published, on one partition.  With a
``data_dir`` the directory is looked at again at each poll: a list file added is followed, and
one deleted has its entries revoked (a directory that cannot be read, or holds no list at all,
changes nothing).

Entries that disappeared from a list must stop matching (unless another list of the same
feed still has them: they share its indicator), so the source also publishes an
``address_list_removed`` record (a JSON document the connector derives: the entries that
were in the previous version and are not in this one) in the same transaction; the
normaliser turns it into ``revoked`` indicators.  To know the previous entries after a
restart, the cursor keeps, per list, its version and the keys of its entries.  That keeps
the cursor proportional to the lists (about 350 kB for all the shipped lists), well
below Kafka's 1 MB message limit; much larger lists would need their own source ids.
STIX bundles carry their own revocations (``revoked: true``), so no diff is kept for them,
and deleting a bundle's file revokes none of its indicators: a feed withdraws one by
publishing it again revoked (a bundle's indicators are keyed by their STIX ids, which a
revocation of a list entry does not reach).

A list larger than a raw record may be (:data:`~vigil.sources.sink.RAW_PUBLISH_MAX_BYTES`, the
raw topics' 64 MiB less a record batch's framing) is not published, named in
:attr:`IntelListSource.errors` and the log, and the others go on.

A download that is no list is not published (the previous version stays in force): one that does
not parse.  A version that drops more than ``max_drop`` (half) of a list of at least
``DROP_CHECK_MIN`` entries, and an empty one where the previous version had fewer entries than
that, is held until the next poll fetches the same version again: a truncated download revoked
what it cut off, sanctions screening lost with it until the next good read.  (An emptied list
was once never published: 7 of OFAC's 17 lists hold one address, and the delisting of that
address could never take effect.)  An empty version of a list of ``DROP_CHECK_MIN`` entries or
more is never published: an empty body (an HTTP 200 without one, a file caught at 0 bytes)
hashes the same at every poll, and would pass the two-poll guard; such a list is retired by
removing it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from vigil.config import Settings
from vigil.errors import ContractError, SourceError
from vigil.hub.raw import RawRecord
from vigil.sources.base import RawSink, Source, check_options, seconds_option
from vigil.sources.intel import ofac, scamlists
from vigil.sources.intel.normalize import LIST_FORMATS, STIX_FORMAT, parse_list
from vigil.sources.sink import RAW_PUBLISH_MAX_BYTES

log = logging.getLogger(__name__)

NAME = "intel"
KIND_LIST = "address_list"
KIND_REMOVED = "address_list_removed"
KIND_STIX = "stix_bundle"
#: Lists at least this long are checked for a large drop (see the module docstring).
DROP_CHECK_MIN = 20
#: Version of the revocation record of a list whose file was deleted.
DELETED_VERSION = "deleted"


@dataclass(frozen=True)
class ListSpec:
    """One list to follow.  ``name`` is its identity (record key, cursor entry)."""

    name: str
    location: str
    format: str
    feed: str

    def __post_init__(self) -> None:
        if self.format not in (*LIST_FORMATS, STIX_FORMAT):
            known = ", ".join(sorted((*LIST_FORMATS, STIX_FORMAT)))
            msg = f"intel list {self.name!r}: unknown format {self.format!r}; expected one of: {known}"
            raise SourceError(msg)


def shipped_lists(data_dir: Path) -> list[ListSpec]:
    """The lists in the layout of ``shared/data/intel``: ``ofac/*.txt``, ``scamsniffer/*.json``
    and STIX bundle files ``stix/*.json`` (feed ``stix:<file stem>``)."""
    specs = [
        ListSpec(f"ofac.{ofac.asset_of(p.name) or p.stem}", str(p), ofac.FORMAT, ofac.FEED)
        for p in sorted((data_dir / "ofac").glob("sanctioned_addresses_*.txt"))
    ]
    scam = data_dir / "scamsniffer"
    if (scam / "address.json").exists():
        specs.append(
            ListSpec("scamsniffer.address", str(scam / "address.json"), scamlists.ADDRESSES, scamlists.FEED)
        )
    if (scam / "combined.json").exists():
        specs.append(
            ListSpec(
                "scamsniffer.combined", str(scam / "combined.json"), scamlists.DOMAIN_MAP, scamlists.FEED
            )
        )
    specs += [
        ListSpec(f"stix.{p.stem}", str(p), STIX_FORMAT, f"stix:{p.stem}")
        for p in sorted((data_dir / "stix").glob("*.json"))
    ]
    return specs


def content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class IntelListSource(Source):
    """Follows ``lists`` and publishes every new version (and what it removed)."""

    name = NAME

    def __init__(
        self,
        lists: list[ListSpec],
        *,
        poll_interval: float = 300.0,
        http_timeout: float = 30.0,
        source_id: str | None = None,
        data_dir: Path | None = None,
        max_drop: float = 0.5,
    ) -> None:
        super().__init__(source_id or "intel.lists")
        names = [spec.name for spec in lists]
        if len(set(names)) != len(names):
            msg = f"intel lists: duplicate list names in {names}"
            raise SourceError(msg)
        if not 0 < max_drop <= 1:
            msg = (
                f"intel lists: option max_drop must be a share of a list (0 < max_drop <= 1); got {max_drop}"
            )
            raise SourceError(msg)
        self.lists = lists
        self.poll_interval = poll_interval
        self.http_timeout = http_timeout
        #: Where the lists are, looked at again at each poll (None: ``lists`` as given).
        self.data_dir = data_dir
        self.max_drop = max_drop
        self.polls = 0
        self.errors: dict[str, str] = {}
        #: List name -> a version held for its large drop, published if fetched again.
        self._held: dict[str, str] = {}
        #: Lists found missing from ``data_dir`` at the last poll (deleted once missing twice).
        self._missing: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> IntelListSource:
        """Options: ``data_dir`` (a directory laid out like shared/data/intel: ofac/, scamsniffer/),
        ``poll_interval`` (s, 300), ``max_drop`` (0.5, see the module docstring), ``source_id``."""
        del settings
        check_options(NAME, options, {"data_dir", "poll_interval", "max_drop", "source_id"})
        if "data_dir" not in options:
            msg = "intel lists: option 'data_dir' is required (a directory with ofac/ and scamsniffer/)"
            raise SourceError(msg)
        data_dir = Path(options["data_dir"])
        return cls(
            shipped_lists(data_dir),
            poll_interval=seconds_option(NAME, options, "poll_interval", 300.0),
            source_id=options.get("source_id"),
            data_dir=data_dir,
            max_drop=float(options.get("max_drop", "0.5")),
        )

    def fetch(self, spec: ListSpec) -> bytes:
        if spec.location.startswith(("http://", "https://")):
            try:
                resp = httpx.get(spec.location, timeout=self.http_timeout, follow_redirects=True)
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                msg = f"intel list {spec.name!r}: GET {spec.location} failed: {exc}"
                raise SourceError(msg) from None
            return resp.content
        try:
            return Path(spec.location).read_bytes()
        except OSError as exc:
            msg = f"intel list {spec.name!r}: cannot read {spec.location}: {exc}"
            raise SourceError(msg) from None

    def poll_once(self, sink: RawSink, state: dict[str, Any]) -> int:
        """Fetch every list once; publish the changed ones.  Returns how many changed (lists
        deleted from ``data_dir`` included)."""
        changed = self._rescan(sink, state)
        for spec in self.lists:
            try:
                data = self.fetch(spec)
            except SourceError as exc:
                # One unreachable list must not stop the others; it is retried next poll.
                self.errors[spec.name] = str(exc)
                log.warning("%s (retried at the next poll)", exc)
                continue
            version = content_version(data)
            previous = state.get(spec.name) or {}
            if previous.get("version") == version:
                # The version in force read again: a drop held before was a torn read, and only a
                # drop fetched on two polls in a row is published.
                if self._held.pop(spec.name, None) is not None:
                    self.errors.pop(spec.name, None)
                continue
            elsewhere = self._elsewhere(spec, state)
            records, entry = self._records(spec, data, version, previous, elsewhere)
            if records is None:
                continue
            _publish(sink, records, state, {**state, spec.name: entry})
            self.errors.pop(spec.name, None)
            changed += 1
        self.polls += 1
        return changed

    def _rescan(self, sink: RawSink, state: dict[str, Any]) -> int:
        """Follow the lists now in ``data_dir``; revoke the entries of lists deleted from it.
        Returns how many lists went."""
        if self.data_dir is None:
            return 0
        try:
            found = shipped_lists(self.data_dir)
        except OSError as exc:
            log.warning(
                "intel lists: cannot look at %s (%s); the lists stay as they were", self.data_dir, exc
            )
            return 0
        if not found:
            # Unmounted, or emptied by a failed sync: not a deletion of every list.
            log.warning("intel lists: no list in %s; the lists stay as they were", self.data_dir)
            return 0
        names = {spec.name for spec in found}
        # Followed until now, or (after a restart) known from the cursor only: deleted while down.
        known = {spec.name: spec for spec in self.lists}
        for name, entry in state.items():
            if name not in known and isinstance(entry, dict) and entry.get("feed") and entry.get("format"):
                known[name] = ListSpec(name, str(entry.get("location", "")), entry["format"], entry["feed"])
        # Deleted: missing from a folder that is there (a feed's folder missing is an unmount or a
        # sync swapping folders, not the deletion of every list in it), on two polls in a row.
        missing = {
            name
            for name, spec in known.items()
            if name not in names and (not spec.location or Path(spec.location).parent.is_dir())
        }
        gone = [known[name] for name in sorted(missing & self._missing)]
        self._missing = missing
        for name in sorted(missing - {spec.name for spec in gone}):
            log.warning(
                "intel lists: %s is missing from %s; revoked if still missing at the next poll",
                name,
                self.data_dir,
            )
        added = sorted(names - {spec.name for spec in self.lists})
        if added:
            log.info("intel lists: following %s, new in %s", ", ".join(added), self.data_dir)
        # Lists missing once are followed (fetched: their reads fail, their entries stay) until
        # they are taken for deleted.
        followed = {spec.name for spec in self.lists}
        waiting = sorted(missing - {spec.name for spec in gone})
        self.lists = found + [known[name] for name in waiting if name in followed]
        for spec in gone:
            previous = state.get(spec.name) or {}
            elsewhere = self._elsewhere(spec, state)
            removed = sorted(set(previous.get("keys", [])) - elsewhere)
            # As of the list's last version, so the feed's version in later alerts stays a real one.
            version = str(previous.get("version") or DELETED_VERSION)
            records = [self._removal(spec, version, previous, removed, datetime.now(UTC))] if removed else []
            _publish(sink, records, state, {k: v for k, v in state.items() if k != spec.name})
            self.errors.pop(spec.name, None)
            self._held.pop(spec.name, None)
            log.warning("intel lists: %s was deleted; %d of its entries revoked", spec.name, len(removed))
        return len(gone)

    def _elsewhere(self, spec: ListSpec, state: dict[str, Any]) -> set[str]:
        # Lists of one feed share its indicators (an address on OFAC's ETH and USDC lists is one
        # key, ``eth_address:<value>@ofac_sdn``): what one drops stays while another has it.
        return {
            key
            for other in self.lists
            if other.feed == spec.feed and other.name != spec.name
            for key in (state.get(other.name) or {}).get("keys", [])
        }

    def _removal(
        self, spec: ListSpec, version: str, previous: dict[str, Any], removed: list[str], now: datetime
    ) -> RawRecord:
        categories = LIST_FORMATS[spec.format].categories
        doc = {
            "list": spec.name,
            "feed": spec.feed,
            "version": version,
            "previous_version": previous.get("version"),
            "removed": [[*k.split(":", 1), categories(k.split(":", 1)[0])] for k in removed],
        }
        return RawRecord(
            self.name,
            KIND_REMOVED,
            msgspec.json.encode(doc),
            now,
            key=spec.feed.encode(),
            meta=_meta(spec, version),
        )

    def _records(
        self,
        spec: ListSpec,
        data: bytes,
        version: str,
        previous: dict[str, Any],
        elsewhere: set[str],
    ) -> tuple[list[RawRecord] | None, dict[str, Any]]:
        now = datetime.now(UTC)
        meta = _meta(spec, version)
        key = spec.feed.encode()
        stix = spec.format == STIX_FORMAT
        record = RawRecord(self.name, KIND_STIX if stix else KIND_LIST, data, now, key=key, meta=meta)
        if record.size() > RAW_PUBLISH_MAX_BYTES:
            # Refused by Kafka, it stopped the source, again at every start while the file stayed
            # (and the lists after it were never read).
            msg = (
                f"intel list {spec.name!r}: version {version} is {record.size():,} bytes, more than a "
                f"raw record may be ({RAW_PUBLISH_MAX_BYTES:,}); split it into files of its own"
            )
            self._not_published(spec, msg)
            return None, previous
        if stix:
            return [record], {"version": version, "keys": [], **_spec_of(spec)}
        try:
            entries = parse_list(spec.format, data, where=f"intel list {spec.name}", meta=meta)
        except ContractError as exc:
            # A broken download is not published as the new version: that would revoke every
            # entry.  The previous version stays in force; the error is kept for status.
            self._not_published(spec, str(exc))
            return None, previous
        keys = sorted(f"{t}:{v}" for t, v, _ in entries)
        before = previous.get("keys", [])
        dropped = set(before) - set(keys)
        emptied = bool(before) and not keys
        if emptied and len(before) >= DROP_CHECK_MIN:
            # An empty body (an HTTP 200 without one, a file caught at 0 bytes) hashes the same on
            # every poll, so the two-poll guard below would publish it: a whole sanctions list
            # revoked.  A list that long is retired by removing it (its file, its URL), not emptied.
            msg = (
                f"intel list {spec.name!r}: version {version} has no entries, the previous "
                f"{len(before):,}; not published (an empty download would revoke them all): to retire "
                "the list, remove it from the source's lists"
            )
            self._not_published(spec, msg)
            return None, previous
        if emptied or (len(before) >= DROP_CHECK_MIN and len(dropped) > self.max_drop * len(before)):
            if self._held.get(spec.name) != version:
                self._held[spec.name] = version
                drop = (
                    f"has no entries, the previous {len(before):,}"
                    if emptied
                    else f"drops {len(dropped):,} of {len(before):,} entries"
                )
                msg = (
                    f"intel list {spec.name!r}: version {version} {drop}; "
                    "held until the next poll fetches it again"
                )
                self.errors[spec.name] = msg
                log.warning("%s (a truncated download would revoke what it cut off)", msg)
                return None, previous
            log.warning("intel list %r: version %s fetched again: its drop is published", spec.name, version)
        self._held.pop(spec.name, None)
        records = [record]
        removed = sorted(dropped - elsewhere)
        if removed:
            records.append(self._removal(spec, version, previous, removed, now))
        return records, {"version": version, "keys": keys, **_spec_of(spec)}

    def _not_published(self, spec: ListSpec, msg: str) -> None:
        """Keep ``msg`` for status and log it: ``spec``'s new version is not published."""
        self.errors[spec.name] = msg
        log.warning("%s: not published; the previous version stays in force", msg)

    def run(self, sink: RawSink) -> None:
        cursor = sink.last_cursor(self.source_id) or {}
        state: dict[str, Any] = dict(cursor.get("lists", {}))
        while self.running:
            self.poll_once(sink, state)
            if self.wait(self.poll_interval):
                return


def _spec_of(spec: ListSpec) -> dict[str, str]:
    """What the cursor keeps of a list besides its keys: enough to revoke them once its file is
    gone, even after a restart."""
    return {"feed": spec.feed, "format": spec.format, "location": spec.location}


def _meta(spec: ListSpec, version: str) -> dict[str, str]:
    """A list record's ``meta``: which list, in what format, of which feed, at which version."""
    return {
        "list": spec.name,
        "format": spec.format,
        "feed": spec.feed,
        "version": version,
        "location": spec.location,
    }


def _publish(
    sink: RawSink, records: list[RawRecord], state: dict[str, Any], new_state: dict[str, Any]
) -> None:
    """Publish ``records`` with ``new_state`` as the cursor; ``state`` becomes it once published."""
    sink.publish(records, cursor={"lists": new_state})
    state.clear()
    state.update(new_state)
