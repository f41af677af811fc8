"""The list source's guards: a download that is no list is not published, a large drop waits
for a second look, a feed's records share one key, and the list directory is followed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vigil.config import Settings
from vigil.errors import SourceError
from vigil.events.types import IntelIndicator
from vigil.sources.intel import scamlists
from vigil.sources.intel.lists import DROP_CHECK_MIN, IntelListSource, ListSpec
from vigil.sources.intel.normalize import IntelNormalizer
from vigil.sources.sink import MemorySink


def addresses(n: int, start: int = 0) -> list[str]:
    return [f"0x{i:040x}" for i in range(start + 1, start + n + 1)]


def scam_list(tmp_path: Path, values: list[str], name: str = "scam") -> tuple[Path, ListSpec]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(values))
    return path, ListSpec(name, str(path), scamlists.ADDRESSES, scamlists.FEED)


def revoked(records: list) -> set[str]:  # type: ignore[type-arg]
    events = [e for r in records for e in IntelNormalizer().normalize(r)]
    return {e.payload.value for e in events if isinstance(e, IntelIndicator) and e.payload.revoked}


def test_an_empty_download_of_a_list_that_had_entries_is_not_published(tmp_path: Path) -> None:
    # An HTTP 200 with an empty body, a file caught mid-rewrite: it revoked every entry.
    path, spec = scam_list(tmp_path, addresses(3))
    source, sink, state = IntelListSource([spec]), MemorySink(), {}
    assert source.poll_once(sink, state) == 1
    path.write_text("[]")
    assert source.poll_once(sink, state) == 0
    assert len(sink.records) == 1
    assert (
        "has no entries, the previous 3; held until the next poll fetches it again" in source.errors["scam"]
    )


def test_an_empty_download_of_a_long_list_is_never_published(tmp_path: Path) -> None:
    # An empty body hashes the same at every poll: held once and then published, it revoked a
    # whole sanctions list five minutes after an HTTP 200 without a body.
    path, spec = scam_list(tmp_path, addresses(DROP_CHECK_MIN))
    source, sink, state = IntelListSource([spec]), MemorySink(), {}  # type: ignore[var-annotated]
    source.poll_once(sink, state)
    path.write_text("[]")
    for _ in range(3):
        assert source.poll_once(sink, state) == 0
    assert revoked(sink.records) == set()
    assert f"has no entries, the previous {DROP_CHECK_MIN}; not published" in source.errors["scam"]
    assert len(state["scam"]["keys"]) == DROP_CHECK_MIN


@pytest.mark.parametrize("entries", [1, DROP_CHECK_MIN - 1])
def test_an_emptied_list_is_published_once_fetched_again(tmp_path: Path, entries: int) -> None:
    # Refused at every poll: 7 of OFAC's 17 lists hold one address, whose delisting could never
    # be published.  Now held, as a large drop is, and published when read so twice in a row.
    path, spec = scam_list(tmp_path, addresses(entries))
    source, sink, state = IntelListSource([spec]), MemorySink(), {}  # type: ignore[var-annotated]
    source.poll_once(sink, state)
    path.write_text("[]")
    assert source.poll_once(sink, state) == 0
    assert source.poll_once(sink, state) == 1
    assert revoked(sink.records[1:]) == set(addresses(entries))
    assert "scam" not in source.errors
    assert state["scam"]["keys"] == []
    # Listed again later: published at once, as any version growing a list.
    path.write_text(json.dumps(addresses(1)))
    assert source.poll_once(sink, state) == 1


def test_an_emptied_list_read_once_between_full_reads_revokes_nothing(tmp_path: Path) -> None:
    path, spec = scam_list(tmp_path, addresses(1))
    source, sink, state = IntelListSource([spec]), MemorySink(), {}  # type: ignore[var-annotated]
    source.poll_once(sink, state)
    full = path.read_text()
    for text in ("[]", full, "[]"):
        path.write_text(text)
        assert source.poll_once(sink, state) == 0
    assert revoked(sink.records) == set()


def test_a_large_drop_is_published_only_once_fetched_again(tmp_path: Path) -> None:
    path, spec = scam_list(tmp_path, addresses(40))
    source, sink, state = IntelListSource([spec]), MemorySink(), {}
    source.poll_once(sink, state)
    path.write_text(json.dumps(addresses(10)))  # a truncated download, or a real purge
    assert source.poll_once(sink, state) == 0
    assert "drops 30 of 40 entries; held until the next poll" in source.errors["scam"]
    assert len(sink.records) == 1
    # Fetched again the same: a real purge, published with its revocations.
    assert source.poll_once(sink, state) == 1
    assert revoked(sink.records[1:]) == set(addresses(30, 10))
    assert "scam" not in source.errors
    # A drop within max_drop goes out at once.
    path.write_text(json.dumps(addresses(6)))
    assert source.poll_once(sink, state) == 1
    assert revoked(sink.records[3:]) == set(addresses(4, 6))


def test_a_held_drop_that_turned_out_a_torn_read_changes_nothing(tmp_path: Path) -> None:
    path, spec = scam_list(tmp_path, addresses(40))
    source, sink, state = IntelListSource([spec]), MemorySink(), {}
    source.poll_once(sink, state)
    path.write_text(json.dumps(addresses(5)))
    assert source.poll_once(sink, state) == 0
    path.write_text(json.dumps(addresses(41)))  # the whole file, one more
    assert source.poll_once(sink, state) == 1
    assert revoked(sink.records) == set()


def test_a_feeds_lists_publish_under_one_key_so_a_move_between_them_stays_in_order(tmp_path: Path) -> None:
    # An address moving from one list to another of the same feed: the revocation from the one
    # and the listing from the other went to two partitions under the lists' names, and applied
    # in the wrong order left it unlisted.
    moved, kept = addresses(2)
    a_path, a = scam_list(tmp_path, [moved, kept], "a")
    b_path, b = scam_list(tmp_path, [kept], "b")
    source, sink, state = IntelListSource([a, b]), MemorySink(), {}
    source.poll_once(sink, state)
    a_path.write_text(json.dumps([kept]))
    b_path.write_text(json.dumps([kept, moved]))
    assert source.poll_once(sink, state) == 2
    assert {r.key for r in sink.records} == {scamlists.FEED.encode()}
    latest: dict[str, bool] = {}
    for record in sink.records:  # in publication order, as one partition keeps them
        for event in IntelNormalizer().normalize(record):
            assert isinstance(event, IntelIndicator)
            latest[event.payload.value] = event.payload.revoked
    assert latest == {moved: False, kept: False}


def layout(root: Path, assets: dict[str, list[str]]) -> None:
    ofac = root / "ofac"
    ofac.mkdir(parents=True, exist_ok=True)
    for asset, values in assets.items():
        (ofac / f"sanctioned_addresses_{asset}.txt").write_text("".join(f"{v}\n" for v in values))


def test_the_list_directory_is_followed_lists_added_and_deleted(tmp_path: Path) -> None:
    eth, usdt, both = addresses(2), addresses(2, 10), addresses(1, 20)
    layout(tmp_path, {"ETH": eth + both})
    source = IntelListSource.from_settings(Settings(), data_dir=str(tmp_path))
    sink, state = MemorySink(), {}
    assert source.poll_once(sink, state) == 1
    layout(tmp_path, {"USDT": usdt + both})  # a new asset list upstream: followed without a restart
    assert source.poll_once(sink, state) == 1
    assert [r.meta["list"] for r in sink.records] == ["ofac.ETH", "ofac.USDT"]
    (tmp_path / "ofac" / "sanctioned_addresses_ETH.txt").unlink()
    assert source.poll_once(sink, state) == 0  # missing once: a sync replacing the file?
    assert source.poll_once(sink, state) == 1  # missing twice: deleted
    assert revoked(sink.records[2:]) == set(eth)  # not what the USDT list still has
    assert set(state) == {"ofac.USDT"}
    # Deleted while the source was down: revoked from what the cursor kept.
    (tmp_path / "ofac" / "sanctioned_addresses_USDT.txt").unlink()
    layout(tmp_path, {"ARB": addresses(1, 30)})
    restarted = IntelListSource.from_settings(Settings(), data_dir=str(tmp_path))
    mark = len(sink.records)
    assert restarted.poll_once(sink, state) == 1  # the new list
    assert restarted.poll_once(sink, state) == 1  # the deleted one, missing twice
    assert revoked(sink.records[mark:]) == set(usdt + both)
    # A directory with no list at all (unmounted, a failed sync) is no deletion of every list.
    (tmp_path / "ofac" / "sanctioned_addresses_ARB.txt").unlink()
    mark = len(sink.records)
    assert restarted.poll_once(sink, state) == 0
    assert sink.records[mark:] == []
    assert set(state) == {"ofac.ARB"}


def test_a_list_too_large_for_a_raw_record_is_not_published_and_the_others_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused by Kafka, a 7.5 MB STIX bundle stopped the source, again at every start while the
    # file stayed, and the lists after it were never read.  (The limit lowered for the test.)
    monkeypatch.setattr("vigil.sources.intel.lists.RAW_PUBLISH_MAX_BYTES", 4_000)
    _, big = scam_list(tmp_path, addresses(200), name="big")
    _, small = scam_list(tmp_path, addresses(3), name="small")
    source, sink, state = IntelListSource([big, small]), MemorySink(), {}  # type: ignore[var-annotated]
    assert source.poll_once(sink, state) == 1
    assert [r.meta["list"] for r in sink.records] == ["small"]
    assert set(state) == {"small"}
    assert source.errors["big"].startswith("intel list 'big': version ")
    assert "more than a raw record may be (4,000); split it" in source.errors["big"]


def test_max_drop_must_be_a_share() -> None:
    with pytest.raises(SourceError, match="max_drop must be a share"):
        IntelListSource([], max_drop=0)


def test_a_feeds_folder_missing_revokes_nothing(tmp_path: Path) -> None:
    # ofac/ gone for a while (a sync swapping folders, an unmount) while scamsniffer/ is there:
    # every OFAC list was taken for deleted and revoked.
    layout(tmp_path, {"ETH": addresses(3)})
    (tmp_path / "scamsniffer").mkdir()
    (tmp_path / "scamsniffer" / "address.json").write_text(json.dumps(addresses(2, 50)))
    source = IntelListSource.from_settings(Settings(), data_dir=str(tmp_path))
    sink, state = MemorySink(), {}  # type: ignore[var-annotated]
    assert source.poll_once(sink, state) == 2
    (tmp_path / "ofac").rename(tmp_path / "ofac.old")
    for _ in range(3):
        source.poll_once(sink, state)
    assert revoked(sink.records) == set()
    assert "ofac.ETH" in state


def test_a_held_drop_is_forgotten_once_the_version_in_force_is_read_again(tmp_path: Path) -> None:
    # Held, then the full list read again, then the same torn read once more: it was taken for
    # "fetched again" and its drop published.
    path, spec = scam_list(tmp_path, addresses(40))
    source, sink, state = IntelListSource([spec]), MemorySink(), {}  # type: ignore[var-annotated]
    source.poll_once(sink, state)
    full = path.read_text()
    for text in (json.dumps(addresses(5)), full, json.dumps(addresses(5))):
        path.write_text(text)
        assert source.poll_once(sink, state) == 0
    assert revoked(sink.records) == set()
