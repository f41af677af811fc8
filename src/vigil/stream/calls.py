"""A thread of its own for the transactional producer's blocking calls, so the loop can wait
for one in slices.

librdkafka's transactional calls do not always keep their timeout: a commit whose request was
on its way when the broker went is sent again until the broker answers (``commit_transaction``
given 30 s was still waiting 150 s later, found in CI, 2026-12-06), and
``send_offsets_to_transaction`` can wait past its timeout with the group coordinator down
(librdkafka issue 5456).  Made on the loop's thread, such a call held the application: nothing
in the log for the whole outage, and a stop not taken until the broker was back.  Made here,
the caller waits in slices (:meth:`vigil.stream.app.Application._waited`): it says what it
waits for, and gives it up when stopping (what the transaction held is processed again at the
next start).

The thread is a daemon: a call given up may still be waiting for the broker when the process
exits, and a worker of :class:`concurrent.futures.ThreadPoolExecutor` would hold the exit until
it returned."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from vigil.hub.aside import make_into

_Call = tuple[Callable[[], None], "Future[None]"]


class CallThread:
    """Makes the calls submitted to it, one at a time, in order, on a daemon thread."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> Future[None]:
        """``call`` made once those before it have returned; its future has its outcome."""
        future: Future[None] = Future()
        self._calls.put((call, future))
        return future

    def close(self) -> None:
        """Let the thread end after the calls submitted so far.  Not waited for: one the broker
        holds may take until it is back."""
        self._calls.put(None)

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            make_into(*item)
