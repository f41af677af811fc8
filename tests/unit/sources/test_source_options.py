"""Every connector refuses options it does not take, and takes ``source_id`` where several
instances may run; poll intervals must be above 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vigil.config import Settings
from vigil.errors import SourceError
from vigil.sources.backend import BackendIngestSource
from vigil.sources.cloudtrail import CloudTrailSource
from vigil.sources.hubspot import HubSpotSource
from vigil.sources.intel.lists import IntelListSource
from vigil.sources.mailchimp import MailchimpSource
from vigil.sources.salesforce import SalesforceSource
from vigil.sources.syslog import SyslogSource

SECRET = "s" * 32


@pytest.fixture
def keys(tmp_path: Path) -> str:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"wallet": "0" * 64}))
    return str(path)


def test_a_mistyped_option_is_refused_by_name(tmp_path: Path, keys: str) -> None:
    # Each was dropped without a word: "skip_bad_file" left the source stopping at the first
    # bad file it was told to skip.
    cases = [
        (
            lambda: CloudTrailSource.from_settings(Settings(), dir=str(tmp_path), skip_bad_file="true"),
            "skip_bad_file",
        ),
        (lambda: SyslogSource.from_settings(Settings(), udp_prot="5514"), "udp_prot"),
        (lambda: BackendIngestSource.from_settings(Settings(), keys_file=keys, max_buffer="5"), "max_buffer"),
        (
            lambda: IntelListSource.from_settings(Settings(), data_dir=str(tmp_path), max_dorp="0.2"),
            "max_dorp",
        ),
    ]
    for build, name in cases:
        with pytest.raises(SourceError, match=rf"unknown option\(s\) \['{name}'\]; known: "):
            build()


@pytest.mark.parametrize("interval", ["0", "-5", "nan", "inf", "soon"])
def test_a_poll_interval_must_be_above_zero(tmp_path: Path, interval: str) -> None:
    # 0 or less polled in a busy loop.
    for build in (
        lambda: CloudTrailSource.from_settings(Settings(), dir=str(tmp_path), poll_interval=interval),
        lambda: IntelListSource.from_settings(Settings(), data_dir=str(tmp_path), poll_interval=interval),
    ):
        with pytest.raises(
            SourceError, match=rf"option poll_interval must be a number of seconds above 0; got '{interval}'"
        ):
            build()
    source = IntelListSource.from_settings(Settings(), data_dir=str(tmp_path), poll_interval="0.5")
    assert source.poll_interval == 0.5


def test_receivers_take_a_source_id_of_their_own(keys: str) -> None:
    # Two instances behind a load balancer shared one transactional id and fenced each other
    # (a publish failed after each of the other's): a given source_id was dropped.
    built = [
        BackendIngestSource.from_settings(Settings(), keys_file=keys, source_id="backend-b"),
        SyslogSource.from_settings(Settings(), source_id="syslog-b"),
        HubSpotSource.from_settings(Settings(), client_secret=SECRET, source_id="hubspot-b"),
        MailchimpSource.from_settings(Settings(), secret=SECRET, source_id="mailchimp-b"),
        SalesforceSource.from_settings(Settings(), token=SECRET, org_ids="00D5e000000AbCd", source_id="sf-b"),
    ]
    assert [s.source_id for s in built] == ["backend-b", "syslog-b", "hubspot-b", "mailchimp-b", "sf-b"]
    default = [
        BackendIngestSource.from_settings(Settings(), keys_file=keys),
        SyslogSource.from_settings(Settings()),
        HubSpotSource.from_settings(Settings(), client_secret=SECRET),
    ]
    assert [s.source_id for s in default] == ["backend", "syslog", "hubspot"]
