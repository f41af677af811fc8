"""A blocking call made on a daemon thread of its own, its outcome in a future, so that the
caller can wait for it in slices and do other things meanwhile (poll a client for its errors,
take a stop) or give it up.

Used where a Kafka client's call may wait past its own timeout or for as long as the broker is
frozen: the reachability check at a command's start (:func:`vigil.hub.client.check_reachable`),
and the stream runtime's start, restore and transactional calls (:mod:`vigil.stream.calls`).
The thread is a daemon: a call given up may still be waiting for the broker when the process
exits, and a worker of :class:`concurrent.futures.ThreadPoolExecutor` would hold the exit until
it returned.  A call given up is left to end on its own: a client cannot be closed under it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def call_aside(call: Callable[[], T], name: str) -> Future[T]:
    """``call`` made on a daemon thread of its own (named ``name``), started now; its future
    has its outcome."""
    future: Future[T] = Future()
    threading.Thread(target=make_into, args=(call, future), name=name, daemon=True).start()
    return future


def make_into(call: Callable[[], T], future: Future[T]) -> None:
    """Make ``call``, its outcome into ``future`` (unless the future was cancelled)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = call()
    except BaseException as exc:  # the caller's to see, whatever it is
        # The exception's traceback holds this frame: without the call (and the client it
        # holds), or the future, which holds the exception, keeps the client alive in a cycle
        # until a full collection (found in review: a consumer left to close when its commit
        # returned, refused, stayed open for minutes).
        del call
        future.set_exception(exc)
    else:
        future.set_result(result)
