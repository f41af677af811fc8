"""Shared pieces of the CLI: the console, settings loading, and error rendering."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from vigil.config import Settings, load_settings
from vigil.errors import ConfigError, VigilError

if TYPE_CHECKING:
    from vigil.stream.app import Application
    from vigil.stream.metrics import MetricsServer

console = Console()
err_console = Console(stderr=True)


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
    cfg: Settings, port: int | None, apps: Callable[[], Iterable[Application]]
) -> MetricsServer | None:
    """Start ``/metrics`` for the running applications when a port is given (option, then
    setting); None when metrics are not served.  A port in use fails naming it."""
    from vigil.stream.metrics import MetricsServer

    port = port if port is not None else cfg.metrics_port
    if port is None:
        return None
    server = MetricsServer(lambda: [app.prometheus.registry for app in apps()])
    try:
        server.start(port, cfg.metrics_host)
    except OSError as exc:
        msg = f"--metrics-port {port}: cannot listen on {cfg.metrics_host}:{port} ({exc.strerror or exc})"
        raise ConfigError(msg) from None
    console.print(f"metrics: http://{cfg.metrics_host}:{port}/metrics")
    return server


class _WarningLine(logging.Handler):
    """Prints a warning of the settings (an unknown ``VIGIL_*`` variable) as the CLI prints its
    own: one ``warning:`` line on stderr (unconfigured, logging printed the bare message)."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(
            f"[yellow]warning:[/yellow] {escape(record.getMessage())}", highlight=False, soft_wrap=True
        )


def run_guarded(app: typer.Typer) -> None:
    """Run the Typer app; Vigil errors end with a one-line message and exit code 1, not a traceback."""
    settings_log = logging.getLogger("vigil.config")
    if not any(isinstance(h, _WarningLine) for h in settings_log.handlers):
        settings_log.addHandler(_WarningLine(logging.WARNING))
    try:
        app()
    except VigilError as exc:
        # Not wrapped at the terminal's width: a message stays whole when searched or logged.
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
