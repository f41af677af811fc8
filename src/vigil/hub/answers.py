"""Waiting for an admin request's answers, the cluster's controller looked up again meanwhile.

librdkafka sends most admin requests (topics made, described, changed or deleted; ACLs; consumer
groups listed or deleted) to the broker its last metadata named as the controller, or to one it
knew of.  Metadata taken while a cluster had no broker unfenced names none (-1): a single broker
paused past its session, fenced by its controller when it resumed and unfenced 36 ms later, did
that once in CI.  The request then waits for a controller the client does not look up again,
and fails at its timeout, however soon the broker is back: a stage started then stopped 30 s
later ("did not describe topic ...'s settings within 30s"); every such request on that client
hung alike (measured, 2026-12-07).  Metadata asked for meanwhile, on the same client, has it
learn the controller, and the request goes.

Not covered: a client made at the very moment the cluster lost its last unfenced broker can be
left knowing no broker at all (its metadata requests fail, "Broker transport failure", for
minutes: seen in review); and ``describe_cluster``, which Vigil does not use, aborted the
process when asked while the broker was fenced (a librdkafka assertion).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, wait
from contextlib import suppress
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

#: How long a request may go unanswered before its client is asked to look the controller up
#: (answered requests take milliseconds; asked every second, a paused cluster is seen soon).
LOOK_UP_AFTER_S = 1.0


def wait_answered(admin: AdminClient, futures: Iterable[Future[Any]], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``futures`` (of requests made with ``admin``), asking for
    the cluster's metadata every :data:`LOOK_UP_AFTER_S` while one is pending; whether all are
    done.  Their results, errors included, are the caller's to read."""
    deadline = time.monotonic() + timeout_s
    pending = set(futures)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        _, pending = wait(pending, timeout=min(LOOK_UP_AFTER_S, left))
        left = deadline - time.monotonic()
        if pending and left > 0:
            # (Out of reach, it raises: the requests' own answers say so, at their timeout.)
            with suppress(KafkaException):
                admin.list_topics(timeout=min(LOOK_UP_AFTER_S, left))
    return True
