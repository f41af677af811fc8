"""`vigil dlq summary|redrive`: what the dead-letter topics hold, and sending it through again."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vigil.cli._common import console, settings
from vigil.errors import ConfigError
from vigil.events.codec import inert
from vigil.hub import dlq, redrive
from vigil.hub.client import check_reachable

app = typer.Typer(no_args_is_help=True)

#: Groups `vigil dlq summary` prints (the largest first); the rest are counted in one line.
SHOWN_GROUPS = 50

TopicArg = Annotated[str, typer.Argument(help="Dead-letter topic: dlq.normalize, dlq.detect or dlq.ingest")]
AnyTopicOpt = Annotated[
    bool,
    typer.Option(
        "--any-topic",
        help="Read TOPIC though its name is not dlq.<stage> (an application's own dlq_topic)",
    ),
]

#: A dead-letter topic's name: ``dlq.<stage>``, under a prefix ending in "." too, or any name
#: with ``dlq`` as one of its dot-separated parts (``payments.dlq``).
_DLQ_NAME = re.compile(r"(?:^|\.)dlq(?:\.|$)")


def _checked_topic(topic: str, any_topic: bool) -> None:
    """Refuse a topic that is not named as a dead-letter topic, unless told: `redrive alerts`
    made the topics ``alerts.redriven`` and a consumer group, and said "redrove 0 records"."""
    if not any_topic and not _DLQ_NAME.search(topic):
        msg = (
            f"{inert(topic[:80])!r} is not named as a dead-letter topic (dlq.<stage>, such as "
            "dlq.normalize, dlq.detect or dlq.ingest, under a prefix too, or a name with a 'dlq' "
            "part); pass --any-topic for one named otherwise"
        )
        raise ConfigError(msg)


def _shown(text: str, limit: int = 160) -> str:
    # Letters quote what a source sent (and anyone who may write the topic writes them): shown
    # as text, never as markup or terminal control, and bounded.
    text = inert(text)
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def _listed(what: str, lines: list[str], shown: int, total: int | None = None) -> None:
    """The first ``shown`` of ``lines``, and how many more (of ``total``, default all ``lines``)."""
    for line in lines[:shown]:
        console.print(f"[yellow]{what}:[/] {_shown(line)}", soft_wrap=True, highlight=False)
    more = (len(lines) if total is None else total) - min(shown, len(lines))
    if more > 0:
        console.print(f"[yellow]{what}:[/] ... and {more:,} more")


@app.command("summary")
def summary_cmd(topic: TopicArg, any_topic: AnyTopicOpt = False) -> None:
    """Letters grouped by stage, source topic and reason (numbers and quoted values blanked)."""
    _checked_topic(topic, any_topic)
    cfg = settings()
    check_reachable(cfg)
    found = dlq.summarize(cfg, topic)
    if not found.letters and not found.undecodable:
        console.print(f"[green]{_shown(topic)} holds no dead letters[/]")
        return
    # Lines, not a table: a reason is long, and a table would wrap it past reading (or grep).
    for group in found.groups[:SHOWN_GROUPS]:
        first = group.first.isoformat(timespec="seconds") if group.first else "?"
        last = group.last.isoformat(timespec="seconds") if group.last else "?"
        console.print(
            f"[bold]{group.count:>7,}[/]  {_shown(group.stage, 40)}  {_shown(group.topic, 80)}  "
            f"{_shown(group.reason)}\n"
            f"         [dim]{first} .. {last}, e.g. {_shown(group.example, 120)}[/]",
            soft_wrap=True,
            highlight=False,
        )
    rest = found.groups[SHOWN_GROUPS:]
    if rest:
        console.print(f"... and {len(rest):,} more groups ({sum(g.count for g in rest):,} letters)")
    folded = any(group.reason == dlq.OTHER for group in found.groups)
    console.print(
        f"{found.letters:,} letters in {len(found.groups):,} groups"
        + (f" (past {dlq.MAX_GROUPS:,} groups, the smaller ones' letters in one)" if folded else "")
    )
    _listed("not a dead letter", found.undecodable, 5, found.undecodable_count)
    if not found.letters:
        raise typer.Exit(1)  # records, none of them a letter: not a dead-letter topic


@app.command("redrive")
def redrive_cmd(
    topic: TopicArg,
    reason_contains: Annotated[
        str | None,
        typer.Option("--reason-contains", help="Only letters whose reason contains this (case ignored)"),
    ] = None,
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning",
            help=(
                "Read from the first letter, not from the first one not yet settled (lists again "
                "those that could not be sent; still sends none sent before)"
            ),
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be sent; send nothing")
    ] = False,
    again: Annotated[
        bool,
        typer.Option(
            "--again", help="Also send records that were sent again before and failed again (each once)"
        ),
    ] = False,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help=(
                "Send from its letter a record its topic no longer holds (retention), when the "
                "letter holds it whole: its bytes are then trusted as the record, so only for "
                "dead-letter topics that only your stages write"
            ),
        ),
    ] = False,
    allow_topic: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-topic",
            help=(
                "Also send to this topic (by default only stages' inputs: raw.<source>, "
                "events.<domain>, detect.routed, each also under a prefix ending in '.')"
            ),
        ),
    ] = None,
    any_topic: AnyTopicOpt = False,
) -> None:
    """Append each dead-lettered record again to the topic it came from, for its stage to read
    once the cause is fixed.  Each letter is sent at most once, whatever the filter and flags of
    the runs: a letter held back (filtered out, its topic not allowed, failed again) is kept for
    a later run that admits it, and one sent is never sent again."""
    _checked_topic(topic, any_topic)
    cfg = settings()
    check_reachable(cfg)
    with Progress(
        TextColumn("[bold]redrive[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(_shown(topic, 80), total=None)
        done = redrive.redrive(
            cfg,
            topic,
            reason_contains=reason_contains,
            from_beginning=from_beginning,
            dry_run=dry_run,
            allow_topics=allow_topic or (),
            again=again,
            rebuild=rebuild,
            progress=lambda n: bar.update(task, completed=n),
        )
    verb = "would redrive" if dry_run else "redrove"
    # Each count says what a run will do with those letters: the hints are the flags that send
    # them, and the ledger sees to it that nothing sent now is sent by that run.
    console.print(
        f"{verb} {done.redriven:,} records"
        + (f"; {len(done.unavailable):,} could not be sent (and no run will)" if done.unavailable else "")
        + (f"; {done.sent_before:,} sent before, not again" if done.sent_before else "")
        + (
            f"; {len(done.without_headers):,} without their headers, which cannot be read (events, "
            "read by their bytes alone)"
            if done.without_headers
            else ""
        )
        + (
            f"; passed over {done.passed:,} letters (filter), kept: a run without --reason-contains, "
            "or with one they match, sends them"
            if done.passed
            else ""
        )
        + (
            f"; {len(done.refused):,} to topics not allowed, kept: the same run with --allow-topic TOPIC "
            "sends those to TOPIC"
            if done.refused
            else ""
        )
        + (
            f"; {len(done.failed_again):,} failed again after a redrive, kept: the same run with --again "
            "sends them"
            if done.failed_again
            else ""
        )
        + (
            f"; {len(done.rebuildable):,} gone from their topics, kept: the same run with --rebuild sends "
            "them from their letters"
            if done.rebuildable
            else ""
        )
        + f" [dim](position kept in group {_shown(done.group)}, letters sent named in "
        + f"{_shown(redrive.ledger_topic(topic))})[/]",
        soft_wrap=True,
    )
    _listed("not sent", done.unavailable, 10)
    _listed("kept", done.refused, 10)
    _listed("failed again", done.failed_again, 10)
    _listed("gone, in their letters", done.rebuildable, 10)
    _listed("not a dead letter", done.undecodable, 5)
    _listed("sent without their headers", done.without_headers, 5)
