"""Shared pieces of the CLI: the console, settings loading, and error rendering."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from vigil.config import Settings, load_settings
from vigil.errors import ConfigError, VigilError
from vigil.events.codec import inert

if TYPE_CHECKING:
    from vigil.stream.app import Application
    from vigil.stream.metrics import MetricsServer

#: No ``:emoji:`` codes: what a record, a letter or a node sent is printed as written (a field
#: named ``:white_check_mark:`` in a dead letter's reason printed as a check mark).
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def settings() -> Settings:
    """Load settings once per command; a bad setting ends the command with its name."""
    return load_settings()


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve Prometheus /metrics on this port (default: VIGIL_METRICS_PORT; unset: not served)",
    ),
]


def serve_metrics_of(
    cfg: Settings,
    port: int | None,
    apps: Callable[[], Iterable[Application]],
    *,
    connectors: bool = False,
) -> MetricsServer | None:
    """Start ``/metrics`` for the running applications (and, with ``connectors``, what the
    connectors count) when a port is given (option, then setting); None when metrics are not
    served.  Failing to listen names what failed: the host (the metrics_host setting) or the port
    (--metrics-port, or the metrics_port setting, as it was given)."""
    from vigil.sources.base import connector_metrics
    from vigil.stream.metrics import MetricsServer

    given = "--metrics-port" if port is not None else "the metrics_port setting (VIGIL_METRICS_PORT)"
    port = port if port is not None else cfg.metrics_port
    if port is None:
        return None
    extra = [connector_metrics()] if connectors else []
    server = MetricsServer(lambda: [*(app.prometheus.registry for app in apps()), *extra])
    host = cfg.metrics_host
    try:
        server.start(port, host)
    except OSError as exc:
        why = exc.strerror or str(exc)
        # A name that does not resolve, or an address not this machine's, is the host's fault; it
        # was reported as the port's.
        if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            msg = (
                f"the metrics_host setting (VIGIL_METRICS_HOST) {host!r}: cannot listen on it ({why}); "
                "expected an address of this machine (127.0.0.1, or 0.0.0.0 for every interface) or a "
                "host name that resolves to one"
            )
        elif exc.errno in (errno.EADDRINUSE, errno.EACCES):
            # (The privileges' hint for a port that needs them: said of port 43210 in use, it
            # misled; found in review.)
            hint = " (1024 or above, without privileges)" if port < 1024 else ""
            msg = f"{given} {port}: cannot listen on {host}:{port} ({why}); expected a free port{hint}"
        else:
            msg = (
                f"cannot listen on {host}:{port} ({why}), the metrics_host setting (VIGIL_METRICS_HOST) "
                f"and {given}; expected an address of this machine and a free port"
            )
        raise ConfigError(msg) from None
    console.print(f"metrics: http://{cfg.metrics_host}:{port}/metrics")
    return server


#: inert() bounds what it is given (it was made for error messages); texts are escaped in pieces
#: this long so that a whole record or log line is shown, never cut.
_PIECE = 400


def check_writable(path: Path, named: str) -> None:
    """Refuse a file (``named`` as the error names it) that cannot be written, before the work
    that ends in writing it: a labels file was found unwritable only once every record was in
    Kafka ("Is a directory"), hours in on a paced run, and `eval --json` after the evaluation.
    Asked of the file system, nothing made (a run that then finds no broker leaves nothing
    behind)."""
    why = None
    if path.is_dir():
        why = "it is a directory"
    elif path.exists():
        why = None if os.access(path, os.W_OK) else "it is not writable"
    else:
        # The nearest directory there is must let the rest be made in it.
        there = next((p for p in path.parents if p.exists()), Path("/"))
        if not there.is_dir():
            why = f"{str(there)!r} is not a directory"
        elif not os.access(there, os.W_OK | os.X_OK):
            why = f"{str(there)!r} is not writable"
    if why is not None:
        msg = f"{named}: cannot write it ({why}); expected a file path whose directory exists or can be made"
        raise ConfigError(msg)


def plain(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\x9b``,
    ``\\u202e``, ``\\n`` ...), whole: what a record, a node or a feed sent cannot drive the
    terminal (ESC/OSC sequences, C1 controls, bidi overrides) or forge a line.  ``lines``: keep
    the newlines (a traceback, a multi-line error) and make each line inert."""
    if lines:
        return "\n".join(plain(line) for line in text.split("\n"))
    return "".join(inert(text[i : i + _PIECE]) for i in range(0, len(text), _PIECE))


def shown(text: str, *, lines: bool = False) -> str:
    """``text`` for a Rich markup string: :func:`plain`, and any ``[...]`` printed as written."""
    return escape(plain(text, lines=lines))


class _InertFormatter(logging.Formatter):
    """One line per record whatever the message holds (a node's error text, a feed's value):
    its control characters, newlines included, are escaped.  A traceback keeps its lines,
    each made inert the same way."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return plain(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return plain(super().formatException(ei), lines=True)

    def formatStack(self, stack_info: str) -> str:
        return plain(super().formatStack(stack_info), lines=True)


class _LogLine(logging.Handler):
    """Prints the ``vigil`` loggers' records as the CLI prints its own lines (``warning: ...``
    on stderr).  Without it, logging's last-resort handler printed bare messages, and a
    message quoting what a source sent could pass for lines of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_InertFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            err_console.print(
                f"[yellow]{record.levelname.lower()}:[/yellow] {escape(text)}",
                highlight=False,
                soft_wrap=True,
                emoji=False,
            )
        except Exception:  # logging's contract: a record that cannot be printed never raises
            self.handleError(record)


def _install_log_lines() -> None:
    vigil_log = logging.getLogger("vigil")
    if not any(isinstance(h, _LogLine) for h in vigil_log.handlers):
        vigil_log.addHandler(_LogLine())


def run_guarded(app: typer.Typer) -> None:
    """Run the Typer app; Vigil errors end with a one-line message and exit code 1, not a traceback."""
    _install_log_lines()
    try:
        app()
    except VigilError as exc:
        # Not wrapped at the terminal's width: a message stays whole when searched or logged.
        # (Its lines kept: a rule file's problems are listed one per line.)
        err_console.print(
            f"[bold red]error:[/] {shown(str(exc), lines=True)}", highlight=False, soft_wrap=True
        )
        sys.exit(1)
    except OSError as exc:
        # A path the user gave that cannot be written or read (a directory where a file goes,
        # a file where a directory goes, no such directory): its reason and path, not a traceback
        # (`vigil eval --json DIR` gave one after the whole evaluation).
        where = f": {exc.filename}" if exc.filename is not None else ""
        err_console.print(
            f"[bold red]error:[/] {shown(f'{exc.strerror or exc}{where}')}", highlight=False, soft_wrap=True
        )
        sys.exit(1)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM taken as Ctrl-C while the block runs (on the main thread): a local broker being
    started is then stopped as on Ctrl-C, not left running (SIGTERM's default ended the command
    with the broker's JVM alive, found in review, 2026-12-06)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
