"""Everyday mistakes get a one-line error and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.hub.broker import free_port_block


def _vigil(
    tmp_path: Path, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    clean |= {"VIGIL_HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("source", "bitcoin", "-o", "bogus=1"), "unknown option(s) ['bogus']"),
        (("source", "bitcoin", "-o", "confirmations=x"), "option confirmations must be a whole number"),
        (("source", "bitcoin", "-o", "rpc_user=u"), "rpc_user and rpc_password go together"),
        # Raised as ValueError or OSError while the connector was built: tracebacks.
        (("source", "coinbase"), "source coinbase: at least one product id is needed (e.g. products="),
        (("source", "binance"), "source binance: at least one stream is needed (e.g. streams="),
        (("source", "ethereum", "-o", "confirmations=-2"), "source ethereum: confirmations must be >= 0"),
        (
            ("source", "backend", "-o", "keys_file=/nonexistent/keys.json"),
            "source backend: option keys_file='/nonexistent/keys.json': cannot read it (No such file",
        ),
        (
            ("source", "coinbase", "-o", "products=BTC-USD", "-o", "heartbeat_timeout=soon"),
            "source coinbase: option heartbeat_timeout='soon': expected a number",
        ),
        # Refused before anything is made: `redrive alerts` made the topic alerts.redriven and a
        # consumer group, and said "redrove 0 records".
        (("dlq", "redrive", "alerts"), "'alerts' is not named as a dead-letter topic (dlq.<stage>"),
        (("dlq", "summary", "events.identity"), "pass --any-topic for one named otherwise"),
        # Found only once every record was produced ("Is a directory"), hours in when paced.
        (("simulate", "--events", "100", "--labels-file", "/tmp"), "--labels-file '/tmp': cannot write it"),
        # Ignored, the run was in memory: a replay's result taken for one on the broker.
        (("eval", "--backlog", "--events", "10"), "--backlog is for a run on the broker: pass --kafka"),
        # Found only after the whole evaluation (minutes with --kafka).
        (("eval", "--events", "10", "--json", "/tmp"), "--json '/tmp': cannot write it (it is a directory)"),
        # "Out of date" with every file's name, and advice that made the mistyped directory.
        (("schemas", "check", "/nonexistent/schemas"), "no schema directory /nonexistent/schemas"),
    ],
)
def test_bad_connector_options_are_named(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    out = _vigil(tmp_path, *args)
    assert out.returncode == 1
    assert says in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_no_broker_answering_is_a_clear_error(tmp_path: Path) -> None:
    # (A closed loopback port: nothing listens there.)
    closed = f"127.0.0.1:{free_port_block(1)}"
    for args in (("source", "coinbase", "-o", "products=BTC-USD"), ("normalize",)):
        out = _vigil(tmp_path, *args, VIGIL_KAFKA_BOOTSTRAP=closed)
        assert out.returncode == 1, out.stderr
        assert "did not answer a metadata request" in out.stderr + out.stdout
        # Said once the connection was refused, not after the check's whole 10 s.
        assert "every broker refused the connection" in " ".join((out.stderr + out.stdout).split())
        assert "Traceback" not in out.stderr
        # The cause is in Vigil's one line, not only in librdkafka's own log lines before it.
        assert "Connection refused" in out.stderr + out.stdout
        assert "|FAIL|" not in out.stderr + out.stdout


def test_a_source_id_the_acls_would_refuse_is_warned_of_before_the_broker(tmp_path: Path) -> None:
    # The ACLs grant source-<name> the transactional ids and cursor topics prefixed with its
    # raw topic's name: "dmz" ran locally and was refused by a secured cluster at start.
    from vigil.cli.source import acl_mismatch, build_connector
    from vigil.config import load_settings
    from vigil.hub.acls import components

    cfg = load_settings(home=tmp_path)
    granted = {name for _, _, name, _ in components()["source-syslog"]}
    assert {"vigil.source.syslog", "vigil.cursors.syslog"} <= granted
    assert acl_mismatch(build_connector("syslog", cfg, {"source_id": "syslog-dmz"})) is None
    assert acl_mismatch(build_connector("syslog", cfg, {})) is None
    assert acl_mismatch(build_connector("taxii", cfg, {"url": "http://127.0.0.1:1/taxii2/"})) is None
    closed = f"127.0.0.1:{free_port_block(1)}"
    out = _vigil(tmp_path, "source", "syslog", "-o", "source_id=dmz", VIGIL_KAFKA_BOOTSTRAP=closed)
    said = " ".join((out.stdout + out.stderr).split())
    assert "source id 'dmz' does not start with 'syslog'" in said
    assert "vigil.source.syslog*" in said
    assert "vigil.cursors.syslog*" in said
    ok = _vigil(tmp_path, "source", "syslog", "-o", "source_id=syslog-b", VIGIL_KAFKA_BOOTSTRAP=closed)
    assert "does not start with" not in ok.stdout + ok.stderr


def test_run_refuses_a_bad_connector_option_before_starting_anything(tmp_path: Path) -> None:
    # Built after normalise and detection had started, a bad option raised with those running
    # in daemon threads: the exit killed them mid-transaction.  (A closed port: nothing would
    # answer, so a start would show as a different error.)
    closed = f"127.0.0.1:{free_port_block(1)}"
    out = _vigil(
        tmp_path, "run", "--source", "bitcoin", "-o", "bitcoin.confirmations=x", VIGIL_KAFKA_BOOTSTRAP=closed
    )
    assert out.returncode == 1
    assert "option confirmations must be a whole number" in out.stderr + out.stdout
    assert "did not answer" not in out.stderr + out.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("detect", "--rules", "nope"), "nope: no such file or directory (relative to the current directory"),
        (("run", "--rules", "nope"), "nope: no such file or directory (relative to the current directory"),
        (("normalize", "--source", "nope"), "--source nope: no normaliser by that name; known: backend"),
        # (The flag vigil run and normalize take, beside detect's own --guarantee.)
        (
            ("detect", "--at-least-once", "--guarantee", "exactly_once"),
            "--at-least-once and --guarantee exactly_once say different things",
        ),
        (("detect", "--guarantee", "maybe"), "--guarantee must be exactly_once or at_least_once"),
        (("detect", "--at-least-once", "--rules", "nope"), "nope: no such file or directory"),
    ],
)
def test_commands_check_their_own_inputs_before_the_broker(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    # Checked after the broker was asked, a missing rules directory or an unknown source was
    # reported as "did not answer" when no broker ran (and `vigil run` started one and made its
    # topics before it noticed).  A closed port: nothing answers there.
    closed = f"127.0.0.1:{free_port_block(1)}"
    out = _vigil(tmp_path, *args, VIGIL_KAFKA_BOOTSTRAP=closed)
    assert out.returncode == 1, out.stderr
    assert says in out.stderr
    assert "did not answer" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("detect", "--batch-size", "0"), "--batch-size"),
        (("eval", "--events", "-5"), "--events"),
        (("eval", "--customers", "3"), "--customers"),
        (("eval", "--attack-rate", "-1"), "--attack-rate"),
        (("demo", "--customers", "3"), "--customers"),
    ],
)
def test_out_of_range_options_are_named_as_options(
    tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    # The runtime's and the simulator's own checks named an internal application or SimConfig.
    closed = f"127.0.0.1:{free_port_block(1)}"
    out = _vigil(tmp_path, *args, VIGIL_KAFKA_BOOTSTRAP=closed)
    assert out.returncode == 2, out.stderr
    assert f"Invalid value for '{option}'" in out.stderr
    assert "SimConfig" not in out.stderr
    assert "application" not in out.stderr


def test_rules_validate_away_from_the_repository_says_the_directory_is_missing(tmp_path: Path) -> None:
    out = _vigil(tmp_path, "rules", "validate", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.startswith(
        f"rules: error: no such file or directory (relative to the current directory, {tmp_path}); "
        "expected a rule file (*.yaml) or a directory of them\n"
    ), out.stderr
    assert ":0:0" not in out.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"VIGIL_KAFKA_SECURITY_PROTOCOL": "SSL", "VIGIL_KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
            "VIGIL_KAFKA_SSL_CA_LOCATION (kafka_ssl_ca_location): no such file",
        ),
        ({"VIGIL_CONFIG": "{toml}"}, "{toml}:1:24: the settings file is not valid TOML"),
        # A property librdkafka does not know, or a value it refuses: a traceback quoting the
        # value (client options may hold secrets).
        (
            {"VIGIL_KAFKA_CLIENT_OPTIONS": '{{"compression.type": "hunter2SECRET"}}'},
            "(kafka_client_options, VIGIL_KAFKA_CLIENT_OPTIONS) were refused: Invalid value <hidden> for "
            'configuration property "compression.codec"',
        ),
        (
            # (Not a sasl.* one: without SASL it is refused at load, vigil.config.)
            {"VIGIL_KAFKA_CLIENT_OPTIONS": '{{"socket.keepalive.enabled": "x"}}'},
            'were refused: No such configuration property: "socket.keepalive.enabled"',
        ),
    ],
)
def test_settings_mistakes_are_one_line_errors(tmp_path: Path, env: dict[str, str], says: str) -> None:
    toml = tmp_path / "vigil.toml"
    toml.write_text("kafka_bootstrap = 127.0.0.1:9092\n")  # unquoted: not TOML
    env = {key: value.format(toml=toml) for key, value in env.items()}
    out = _vigil(tmp_path, "topics", "list", **env)
    assert out.returncode == 1, out.stderr
    assert says.format(toml=toml) in out.stderr
    assert "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr + out.stdout


def test_a_path_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path) -> None:
    # `vigil schemas export FILE` (a file where a directory goes), `vigil eval --json DIR` (after
    # the whole evaluation) and the like ended in a traceback.
    taken = tmp_path / "taken"
    taken.write_text("")
    out = _vigil(tmp_path, "schemas", "export", str(taken))
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: File exists: ") or out.stderr.startswith("error: Not a directory: ")
    assert str(taken) in out.stderr
    assert "Traceback" not in out.stderr


def test_a_misspelt_variable_is_one_warning_line_naming_the_setting_meant(tmp_path: Path) -> None:
    # Ignored in silence, the secret under the wrong name read as "not set" with no hint why.
    out = _vigil(
        tmp_path, "source", "hubspot", VIGIL_HUBSPOT_CLIENT_SECRT="hunter2-hubspot", VIGIL_COMPILE="0"
    )
    assert out.returncode == 1
    warning, error = out.stderr.splitlines()
    assert warning == (
        "warning: ignoring environment variable VIGIL_HUBSPOT_CLIENT_SECRT (did you mean "
        "VIGIL_HUBSPOT_CLIENT_SECRET?): not a Vigil setting (each is a field of vigil.config.Settings)"
    )
    assert error.startswith("error: client_secret is required: set VIGIL_HUBSPOT_CLIENT_SECRET")
    assert "hunter2" not in out.stderr + out.stdout
    # Spelt right, it is the connector's secret; VIGIL_COMPILE (the Makefile's) is no warning.
    spelt_right = {"VIGIL_HUBSPOT_CLIENT_SECRET": "hunter2-hubspot", "VIGIL_COMPILE": "0"}
    out = _vigil(tmp_path, "source", "hubspot", "-o", "port=x", **spelt_right)
    assert out.returncode == 1
    assert "warning" not in out.stderr
    assert "client_secret is required" not in out.stderr
    assert "hunter2" not in out.stderr + out.stdout


def test_a_secret_option_is_never_repeated_in_an_error(tmp_path: Path) -> None:
    # A bad port beside the client secret listed every option given, the secret's value with it.
    out = _vigil(tmp_path, "source", "hubspot", "-o", "client_secret=TOPSECRETVALUE", "-o", "port=")
    assert out.returncode != 0
    assert "options given" in out.stderr
    assert "TOPSECRETVALUE" not in out.stderr + out.stdout
    assert "client_secret=<hidden>" in out.stderr


@pytest.mark.parametrize(
    "args",
    [("tail", "alerts", "-n", "-3"), ("broker", "logs", "-n", "-3"), ("broker", "logs", "--node", "0")],
)
def test_counts_below_one_are_refused_as_usage(tmp_path: Path, args: tuple[str, ...]) -> None:
    # Each exited 0 printing nothing (or a log path of node "-1").
    out = _vigil(tmp_path, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Input should be greater than or equal" in out.stderr


def test_the_scenario_list_gives_each_first_paragraph_whole(tmp_path: Path) -> None:
    # Its first line alone stopped mid-sentence ("... or the victim's own through a").
    out = _vigil(tmp_path, "simulate", "--list")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "or the victim's own through a stolen session cookie), credential change" in text


def test_the_labels_file_is_checked_without_making_anything(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port_block(1)}"
    wanted = tmp_path / "new" / "labels.jsonl"
    out = _vigil(
        tmp_path,
        "simulate",
        "--events",
        "100",
        "--topic-prefix",
        "t.",
        "--labels-file",
        str(wanted),
        VIGIL_KAFKA_BOOTSTRAP=closed,
    )
    assert out.returncode == 1
    assert "did not answer a metadata request" in out.stderr + out.stdout
    assert not (tmp_path / "new").exists()  # nothing made for a run that produced nothing
    # The default path, under a VIGIL_HOME that is a file, named as such.
    home = tmp_path / "home-file"
    home.write_text("")
    out = _vigil(home, "simulate", "--events", "100")
    assert out.returncode == 1
    assert (
        f"the labels file {str(home / 'sim' / 'labels-seed7.jsonl')!r} (under VIGIL_HOME)"
        in out.stderr + out.stdout
    )
