"""Vigil's exceptions.

Every error Vigil raises derives from :class:`VigilError`, so a caller can catch
the whole family in one place.  The tree::

    VigilError
    ├── ConfigError            a setting is missing or malformed (names the setting)
    ├── ContractError          a record does not match its event contract
    │   └── DecodeError        bytes/JSON that cannot be decoded into the declared type
    ├── TopicError             a topic is not declared, or the live topic differs
    ├── BrokerError            the broker could not be started, reached or stopped
    │   └── BrokerUnanswered   a request got no answer in time (it may yet: ask again)
    ├── RuleError              a rule file is invalid (carries file:line:column)
    ├── SourceError            a connector failed talking to its counterpart
    │   └── Retry              a poller asks to be called again after a delay
    └── PipelineError          a stream operator failed on a record (carries topic/partition/offset)

Messages say where, what was expected and what was received.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta


class VigilError(Exception):
    """Base of every error Vigil raises."""


class ConfigError(VigilError):
    """A setting is missing or malformed; the message names the setting."""


class ContractError(VigilError):
    """A record does not satisfy its event contract."""


class DecodeError(ContractError):
    """Input could not be decoded into the declared type.

    ``path`` is the JSON path of the offending field (``$.payload.amount``) when known,
    ``where`` says which input it was (``file.jsonl:12``, ``raw.coinbase[3]@1042``).
    """

    def __init__(self, message: str, *, where: str | None = None, path: str | None = None) -> None:
        self.where = where
        self.path = path
        if path and path not in message:  # (a dead letter's reason is all an analyst reads)
            message = f"{message} (at {path})"
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)


class TopicError(VigilError):
    """A topic is not declared, or the live topic does not match its declaration."""


class BrokerError(VigilError):
    """The Kafka broker could not be started, reached or stopped."""


class BrokerUnanswered(BrokerError):
    """A request got no answer in time, or only "not now" answers (a broker out of reach, a
    leader being elected): unlike a refusal, it may be answered if asked again later."""


class RuleError(VigilError):
    """A rule is invalid.  ``file``, ``line`` and ``column`` locate it when known."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, column: int | None = None
    ) -> None:
        self.file, self.line, self.column = file, line, column
        self.reason = message
        loc = ":".join(str(p) for p in (file, line, column) if p is not None)
        super().__init__(f"{loc}: {message}" if loc else message)


class SourceError(VigilError):
    """A connector failed talking to its counterpart."""


class Retry(SourceError):
    """Raised by a polling source to be called again after ``after``."""

    def __init__(self, after: timedelta, reason: str = "") -> None:
        self.after = after
        self.reason = reason
        super().__init__(f"retry after {after.total_seconds():g}s" + (f": {reason}" if reason else ""))


class PipelineError(VigilError):
    """An operator failed on a record; the message carries topic/partition/offset."""


def chained(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or while handling, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        todo += [err.__cause__, err.__context__]


def message_of(exc: BaseException) -> str:
    """``str(exc)``, whatever its ``__str__`` does: an operator's exception is user code, and one
    whose ``__str__`` raised escaped the error that was to name it (the dead-letter policy's
    too), stopping the application with an unrelated error."""
    try:
        return str(exc)
    except Exception as inner:
        return f"(its message could not be made: {type(inner).__name__})"


def described(exc: BaseException) -> str:
    """``"<type>: <message>"`` of an exception (see :func:`message_of`)."""
    return f"{type(exc).__name__}: {message_of(exc)}"
