"""Syslog: RFC 5424 parsing, RFC 6587 framing, the receiver on real sockets, the normaliser."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from vigil.errors import ContractError, SourceError
from vigil.events.codec import decode_event, encode
from vigil.events.ids import stable_id
from vigil.events.types import SecurityEvent
from vigil.hub.raw import RawRecord
from vigil.sources.base import connector_metrics
from vigil.sources.sink import MemorySink
from vigil.sources.syslog import MAX_FRAME, SyslogNormalizer, SyslogSource, iter_frames, parse_rfc5424

# The examples of RFC 5424 section 6.5 (example 1 has no BOM here; example 4 is verbatim).
RFC_EX1 = (
    b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
    b"'su root' failed for lonvick on /dev/pts/8"
)
RFC_EX2 = (
    b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."
)
RFC_EX3 = (
    b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
    b'eventSource="Application" eventID="1011"] \xef\xbb\xbfAn application event log entry...'
)
RFC_EX4 = (
    b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
    b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'
)
SSHD_FAIL = (
    b'<38>1 2026-11-29T09:00:01.123456Z bastion-1 sshd 4242 AUTH_FAIL [auth@32473 user="alice" '
    b'src="203.0.113.7" outcome="failure" note="quote \\" and bracket \\] kept"] Failed password for alice'
)


def _raw(value: bytes) -> RawRecord:
    return RawRecord(
        source="syslog", kind="syslog", value=value, received_at=datetime(2026, 11, 29, tzinfo=UTC)
    )


def test_rfc_example_1_header_fields() -> None:
    m = parse_rfc5424(RFC_EX1)
    assert (m.facility, m.severity, m.version) == (4, 2, 1)
    assert m.timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("mymachine.example.com", "su", None, "ID47")
    assert m.structured_data == {}
    assert m.msg == "'su root' failed for lonvick on /dev/pts/8"


def test_rfc_example_2_offset_timestamp_is_converted_to_utc() -> None:
    m = parse_rfc5424(RFC_EX2)
    assert m.timestamp == datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=UTC)
    assert m.procid == "8710"
    assert m.msgid is None


def test_rfc_example_3_structured_data_and_bom() -> None:
    m = parse_rfc5424(RFC_EX3)
    assert m.structured_data == {
        "exampleSDID@32473": {"iut": ["3"], "eventSource": ["Application"], "eventID": ["1011"]}
    }
    assert m.msg == "An application event log entry..."


def test_rfc_example_4_two_sd_elements_no_msg() -> None:
    m = parse_rfc5424(RFC_EX4)
    assert set(m.structured_data) == {"exampleSDID@32473", "examplePriority@32473"}
    assert m.msg is None


def test_sd_escapes_are_unescaped() -> None:
    m = parse_rfc5424(SSHD_FAIL)
    assert m.structured_data["auth@32473"]["note"] == ['quote " and bracket ] kept']


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"Oct 11 22:14:15 mymachine su: 'su root' failed", "expected '<PRI>VERSION '"),
        (b"<192>1 2003-10-11T22:14:15Z h a - - -", "PRI 192 is out of range"),
        (b"<34>2 2003-10-11T22:14:15Z h a - - -", "VERSION must be 1"),
        (b"<34>1 2003-10-11T22:14:15Z h a -", "missing PROCID"),
        (b"<34>1 yesterday h a - - -", "TIMESTAMP 'yesterday' is not RFC 3339"),
        (b"<34>1 2003-10-11T22:14:15 h a - - -", "has no time zone"),
        (b"<34>1 2003-10-11T22:14:15Z h a - - x", "STRUCTURED-DATA must be '-'"),
        (b'<34>1 2003-10-11T22:14:15Z h a - - [id a="1"', "expected ']' closing"),
        (b'<34>1 2003-10-11T22:14:15Z h a - - [id a="1', "unterminated value of id.a"),
        (b"<34>1 2003-10-11T22:14:15Z h a - - [id a=1]", 'must be name="value"'),
        (b"<34>1 2003-10-11T22:14:15Z h a - - -msg", "expected a space between STRUCTURED-DATA and MSG"),
        (b"<34>1 2003-10-11T22:14:15Z h \xff - - - x", "not UTF-8"),
    ],
)
def test_malformed_lines_raise_contract_error_with_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ContractError, match=re.escape(reason)):
        SyslogNormalizer().normalize(_raw(line))


def test_normalizer_maps_auth_failure_to_security_event() -> None:
    (event,) = SyslogNormalizer().normalize(_raw(SSHD_FAIL))
    assert isinstance(event, SecurityEvent)
    assert event.payload.provider == "syslog"
    assert event.payload.action == "AUTH_FAIL"
    assert event.payload.outcome == "failure"
    assert event.payload.principal == "alice"
    assert event.payload.severity == 6
    assert event.payload.resource == "bastion-1"
    assert event.entities.employee == "alice"
    assert event.entities.ip == "203.0.113.7"
    assert event.payload.attributes["app"] == "sshd"
    assert event.payload.attributes["sd.auth@32473.src"] == "203.0.113.7"
    assert event.occurred_at == datetime(2026, 11, 29, 9, 0, 1, 123456, tzinfo=UTC)
    # The event survives the canonical codec round trip (it is a valid contract instance).
    assert decode_event(encode(event)) == event


def test_event_ids_are_stable_and_content_derived() -> None:
    norm = SyslogNormalizer()
    a = norm.normalize(_raw(RFC_EX1))[0].event_id
    assert a == norm.normalize(_raw(RFC_EX1))[0].event_id
    assert a != norm.normalize(_raw(RFC_EX3))[0].event_id


def test_nil_timestamp_falls_back_to_received_at() -> None:
    (event,) = SyslogNormalizer().normalize(_raw(b"<13>1 - host app - - - hello"))
    assert isinstance(event, SecurityEvent)
    assert event.occurred_at == datetime(2026, 11, 29, tzinfo=UTC)
    assert event.payload.message == "hello"


def test_origin_sd_element_is_not_taken_for_the_client_ip() -> None:
    # RFC 5424 7.2: [origin ip=...] is the sending host's own address; the client is in src=.
    line = (
        b'<38>1 2024-01-01T00:00:00.123Z bastion sshd 812 auth_fail [origin ip="10.0.0.5" '
        b'software="rsyslogd"][auth@32473 src="203.0.113.9" user="root" outcome="failure"] Failed password'
    )
    (event,) = SyslogNormalizer().normalize(_raw(line))
    assert isinstance(event, SecurityEvent)
    assert event.entities.ip == "203.0.113.9"
    assert event.payload.attributes["sd.origin.ip"] == "10.0.0.5"


def test_a_repeated_parameter_keeps_every_value() -> None:
    # RFC 5424 6.3.3: an SD-PARAM may repeat in an element; the later one overwrote the first.
    # An SD-ID written twice (which it forbids) adds its parameters to the first element.
    line = (
        b'<38>1 2024-01-01T00:00:00Z h app - - [meta@1 tag="a" tag="b" tag="c"][meta@1 tag="d" '
        b'user="alice"] hi'
    )
    message = parse_rfc5424(line)
    assert message.structured_data == {"meta@1": {"tag": ["a", "b", "c", "d"], "user": ["alice"]}}
    (event,) = SyslogNormalizer().normalize(_raw(line))
    attributes = event.payload.attributes
    assert [
        attributes[k]
        for k in ("sd.meta@1.tag", "sd.meta@1.tag (2)", "sd.meta@1.tag (3)", "sd.meta@1.tag (4)")
    ] == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert event.entities.employee == "alice"


def test_a_parameter_named_like_a_repeat_takes_no_repeats_place() -> None:
    # "a#2" was the name of a's second value: the sender's own a#2 took its place, and the
    # second a was lost.
    line = b'<34>1 2024-01-01T00:00:00Z host app - ID47 [x a#2="evil" a="1" a="2"] m'
    (event,) = SyslogNormalizer().normalize(_raw(line))
    attributes = event.payload.attributes
    assert (attributes["sd.x.a"], attributes["sd.x.a (2)"], attributes["sd.x.a#2"]) == ("1", "2", "evil")


@pytest.mark.parametrize(
    ("params", "ip"),
    [
        (b'src="2001:DB8:0:0::7"', "2001:db8::7"),  # one address, one spelling (intel keys on it)
        (b'src="::ffff:203.0.113.9"', "203.0.113.9"),  # a dual-stack server's IPv4 client
        (b'src=" 203.0.113.9"', "203.0.113.9"),
        (b'addr="bastion.example.com" src="203.0.113.9"', "203.0.113.9"),  # a host name is no IP
        (b'src="unknown" src="198.51.100.4"', "198.51.100.4"),
        (b'src="not-an-ip"', None),
        (b'ip="999.1.1.1"', None),
    ],
)
def test_the_client_ip_is_an_address_in_its_canonical_form(params: bytes, ip: str | None) -> None:
    line = b"<38>1 2024-01-01T00:00:00Z h sshd - auth [auth@32473 " + params + b"] hi"
    (event,) = SyslogNormalizer().normalize(_raw(line))
    assert event.entities.ip == ip
    assert "sd.auth@32473." + params.split(b"=")[0].decode() in event.payload.attributes  # kept as written


@pytest.mark.parametrize(
    ("line", "reason", "at"),
    [
        # The offset counts bytes of the message: "é" (2 bytes) and "€" (3) come before the fault,
        # which is where ``at`` starts (the end of the message for "")
        ("<34>1 2003-10-11T22:14:15Z hé a - - x", "STRUCTURED-DATA must be '-'", "x"),
        ('<34>1 2003-10-11T22:14:15Z h€ a - - [id a="1"', "expected ']' closing", ""),
        ("<34>1 2003-10-11T22:14:15Z h€ a - - -msg", "expected a space between STRUCTURED-DATA", "msg"),
        ("<34>1 2003-10-11T22:14:15Z hé app", "missing APP-NAME", "app"),
        ('<34>1 2003-10-11T22:14:15Z h€ a - - [id a="1" b=2]', 'must be name="value"', "b=2]"),
    ],
)
def test_error_offsets_count_bytes_not_characters(line: str, reason: str, at: str) -> None:
    data = line.encode()
    offset = data.rindex(at.encode()) if at else len(data)
    assert offset != len(line[: line.rindex(at)] if at else line)  # characters and bytes differ here
    with pytest.raises(ContractError, match=re.escape(reason) + rf".*\(at byte {offset}\)"):
        parse_rfc5424(data)


def test_origin_ip_alone_gives_no_client_ip() -> None:
    (event,) = SyslogNormalizer().normalize(_raw(b'<38>1 - relay app - - [origin ip="10.0.0.5"] hi'))
    assert event.entities.ip is None


def test_repeats_of_a_line_without_timestamp_get_distinct_ids() -> None:
    line = b'<38>1 - bastion sshd - auth_fail [auth@32473 user="root" src="203.0.113.9"] Failed password'
    norm = SyslogNormalizer()

    def at(minute: int) -> str:
        rec = RawRecord(
            source="syslog",
            kind="syslog",
            value=line,
            received_at=datetime(2024, 1, 1, 0, minute, tzinfo=UTC),
        )
        return norm.normalize(rec)[0].event_id

    assert at(0) != at(30)
    assert at(0) == at(0)  # a replay of the same raw record still deduplicates


def test_ids_of_timestamped_messages_do_not_depend_on_arrival() -> None:
    # Pinned: the id of a timestamped message is the hash of its bytes alone, as before.
    (event,) = SyslogNormalizer().normalize(_raw(RFC_EX1))
    assert event.event_id == stable_id("syslog", RFC_EX1, prefix="syslog-")


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamp_outside_utc_range_is_a_contract_error(ts: str) -> None:
    with pytest.raises(ContractError, match=r"TIMESTAMP .* outside the years 1-9999 .* \(at byte 6\)"):
        SyslogNormalizer().normalize(_raw(f"<34>1 {ts} host app - - - hi".encode()))


def test_wrong_kind_is_rejected() -> None:
    rec = RawRecord(source="syslog", kind="ws_message", value=RFC_EX1, received_at=datetime.now(UTC))
    with pytest.raises(ContractError, match="kind 'ws_message'"):
        SyslogNormalizer().normalize(rec)


def test_tcp_framing_octet_counting_and_lf_mixed() -> None:
    stream = io.BytesIO(
        b"%d %s" % (len(RFC_EX3), RFC_EX3) + RFC_EX1 + b"\n" + b"%d %s" % (len(RFC_EX4), RFC_EX4)
    )
    assert list(iter_frames(stream)) == [RFC_EX3, RFC_EX1, RFC_EX4]


def test_tcp_framing_stops_on_garbage_and_oversized_counts() -> None:
    assert list(iter_frames(io.BytesIO(RFC_EX1 + b"\nGARBAGE\n" + RFC_EX2 + b"\n"))) == [RFC_EX1]
    assert list(iter_frames(io.BytesIO(b"99999999 x"))) == []
    assert list(iter_frames(io.BytesIO(b"10 short"))) == []


def test_the_tail_of_an_overlong_line_is_not_taken_for_a_message() -> None:
    # A relay forwards a line carrying attacker text past the frame limit: its tail, left in
    # the stream, was read as a message of its own (a forged login of "admin").
    forged = b'<10>1 2026-01-01T00:00:00Z victim sshd - - [x user="admin" outcome="success"] forged'
    long_line = b"<13>1 - relay app - - - ua=" + b"A" * (MAX_FRAME + 10) + forged + b"\n"
    frames = list(iter_frames(io.BytesIO(long_line + RFC_EX1 + b"\n")))
    assert len(frames) == 2
    assert len(frames[0]) == MAX_FRAME + 1
    assert frames[0].startswith(b"<13>1 - relay app")
    assert frames[1] == RFC_EX1


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within deadline")
        time.sleep(0.01)


def test_receiver_publishes_udp_and_tcp_messages_unchanged() -> None:
    sink = MemorySink()
    source = SyslogSource(udp_port=0, tcp_port=0, flush_interval=0.05)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        # Where it listens, as the command line says it (ports of 0: any free ones).
        where = source.listening(10)
        assert where is not None
        ports = {proto: int(port) for proto, port in re.findall(r"(udp|tcp) 127\.0\.0\.1:(\d+)", where)}
        assert set(ports) == {"udp", "tcp"}
        assert 0 not in ports.values()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(RFC_EX1, ("127.0.0.1", ports["udp"]))
        with socket.create_connection(("127.0.0.1", ports["tcp"])) as tcp:
            tcp.sendall(b"%d %s" % (len(RFC_EX3), RFC_EX3) + SSHD_FAIL + b"\n")
        _wait_for(lambda: len(sink.records) == 3)
    finally:
        source.stop()
        thread.join(10)
    assert not thread.is_alive()
    by_value = {r.value: r for r in sink.records}
    assert set(by_value) == {RFC_EX1, RFC_EX3, SSHD_FAIL}
    assert by_value[RFC_EX1].meta["transport"] == "udp"
    assert by_value[SSHD_FAIL].meta["transport"] == "tcp"
    assert all(r.kind == "syslog" and r.source == "syslog" for r in sink.records)


def test_a_silent_tcp_connection_is_closed_after_the_idle_timeout() -> None:
    # Without a timeout, a connection that sent nothing kept its thread for ever.
    source = SyslogSource(udp_port=None, tcp_port=0, tcp_idle_timeout=0.2)
    thread = threading.Thread(target=source.run, args=(MemorySink(),))
    thread.start()
    try:
        assert source.ready.wait(10)
        with socket.create_connection(("127.0.0.1", source.bound["tcp"]), timeout=15) as tcp:
            assert tcp.recv(1) == b""  # closed by the receiver (not: TimeoutError after 15 s)
    finally:
        source.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_tcp_connections_past_the_limit_are_closed_at_once() -> None:
    # A thread per connection and no cap: 300 idle connections were 300 threads.
    sink = MemorySink()
    source = SyslogSource(udp_port=None, tcp_port=0, max_tcp_connections=2, flush_interval=0.05)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        assert source.ready.wait(10)
        address = ("127.0.0.1", source.bound["tcp"])
        with socket.create_connection(address) as first, socket.create_connection(address) as second:
            first.sendall(RFC_EX1 + b"\n")
            second.sendall(SSHD_FAIL + b"\n")
            _wait_for(lambda: len(sink.records) == 2)  # both connections are being served
            with socket.create_connection(address, timeout=15) as third:
                assert third.recv(1) == b""
            assert source.refused == 1
    finally:
        source.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_from_settings_options() -> None:
    from vigil.config import Settings

    source = SyslogSource.from_settings(Settings(), udp_port="off", tcp_port="6514")
    assert (source.udp_port, source.tcp_port, source.host) == (None, 6514, "127.0.0.1")
    limited = SyslogSource.from_settings(Settings(), max_tcp_connections="8", tcp_idle_timeout="60")
    assert (limited.max_tcp_connections, limited.tcp_idle_timeout) == (8, 60.0)


def test_unreachable_kafka_keeps_messages_pending_and_does_not_crash_the_receiver() -> None:
    """A real Kafka client aimed at a port where no broker listens: publishing fails for real."""
    from vigil.config import Settings
    from vigil.sources.sink import KafkaRawSink

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    sink = KafkaRawSink(Settings(kafka_bootstrap=f"127.0.0.1:{dead}"), source_id="syslog-dead", timeout_s=0.5)
    source = SyslogSource(udp_port=0, tcp_port=None, flush_interval=0.05, drain_timeout=1)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            source.run(sink)
        except BaseException as exc:  # the test asserts there is none
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert source.ready.wait(10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(RFC_EX1, ("127.0.0.1", source.bound["udp"]))
        _wait_for(lambda: source.publish_failures >= 2)
        assert thread.is_alive()
    finally:
        source.stop()
        thread.join(30)
    assert errors == []
    assert source.published == 0
    assert source.drained is False
    assert [r.value for r in source._pending] == [RFC_EX1]  # kept, not lost, while it ran
    assert source.last_error is not None
    assert "Kafka" in source.last_error


# --------------------------------------------------------------------------- stopping, buffer bounds


class _Sink(MemorySink):
    """A sink that fails while ``down`` is set (an unreachable broker) and takes ``latency``
    seconds per publish (a Kafka transaction's commit); waiters hear of every attempt."""

    def __init__(self, *, down: bool = False, latency: float = 0.0) -> None:
        super().__init__()
        self.down = threading.Event()
        if down:
            self.down.set()
        self.latency = latency
        self.attempts = 0
        #: The ``timeout`` of every publish, in order.
        self.timeouts: list[float | None] = []
        self.cond = threading.Condition()

    def publish(
        self,
        records: Sequence[RawRecord],
        cursor: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        self.timeouts.append(timeout)
        if self.latency:
            time.sleep(self.latency)  # the work a transaction takes; nothing waits on it
        with self.cond:
            self.attempts += 1
            self.cond.notify_all()
            if self.down.is_set():
                raise ConnectionError("broker unreachable")
            super().publish(records, cursor)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "condition not met within deadline"


def _sized(i: int, size: int) -> bytes:
    """Message ``i``, exactly ``size`` bytes long."""
    head = b"<34>1 2026-11-29T09:00:01Z host app - - - message %06d " % i
    return head + b"x" * (size - len(head))


class _TcpSender(threading.Thread):
    """Sends numbered messages as fast as the receiver takes them, until ``halt`` or until the
    receiver closes the connection (then ``error`` says how the writes failed)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.halt = threading.Event()
        self.sent = 0
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as tcp:
                while not self.halt.is_set():
                    tcp.sendall(_sized(self.sent, 100) + b"\n")
                    self.sent += 1
        except OSError as exc:
            self.error = exc


def test_stop_returns_while_a_tcp_sender_keeps_sending_and_publishes_what_was_received() -> None:
    # The drain ran while the TCP server still took messages: a sender that kept sending refilled
    # the buffer as fast as it emptied and run() never returned (`vigil run` gave up on it).
    sink = _Sink(latency=0.005)
    source = SyslogSource(udp_port=None, tcp_port=0, max_buffered=1000, batch_size=100, flush_interval=0.05)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    assert source.ready.wait(10)
    sender = _TcpSender(source.bound["tcp"])
    sender.start()
    try:
        sink.wait_for(lambda: len(sink.records) >= 1000)  # flowing, the buffer full behind the sink
        published_before = len(sink.records)
        source.stop()
        buffered_at_stop = source._queue.qsize()  # closed to new messages: it can only go down now
        thread.join(10)
        assert not thread.is_alive(), "run() did not return while a sender kept sending"
        sender.join(10)  # the receiver closed the connection: the sender's writes fail
        assert not sender.is_alive()
        assert sender.error is not None
    finally:
        sender.halt.set()
        source.stop()
        sender.join(10)
        thread.join(30)
    assert not thread.is_alive()
    assert not sender.is_alive()
    assert buffered_at_stop > 0
    values = [r.value for r in sink.records]
    # Everything buffered at the stop was published, in order, nothing skipped.
    assert len(values) >= published_before + buffered_at_stop
    assert values == [_sized(i, 100) for i in range(len(values))]
    assert source.drained is True
    assert (source.buffered, source.buffered_bytes, source._pending) == (0, 0, [])


def test_the_buffer_is_bounded_in_bytes_and_udp_past_it_is_dropped_and_counted() -> None:
    # Bounded by count only, 100,000 messages of 64 KiB (6 GiB) could wait for Kafka.
    size = 1000
    bound = 4 * size + size // 2
    sink = _Sink(down=True)
    source = SyslogSource(
        udp_port=0, tcp_port=None, batch_size=1, flush_interval=0.05, max_buffered_bytes=bound
    )
    served_before = _served_drops(source.name)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        assert source.ready.wait(10)
        address = ("127.0.0.1", source.bound["udp"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(_sized(0, size), address)
            sink.wait_for(lambda: sink.attempts >= 1)  # message 0 is the batch being retried
            for i in range(1, 11):
                udp.sendto(_sized(i, size), address)
            _wait_for(lambda: source.buffered + source.dropped == 10)
            assert (source.buffered, source.buffered_bytes, source.dropped) == (4, 4 * size, 6)
            assert source.buffered_bytes <= bound
            sink.down.clear()  # the broker is back: the buffer empties and takes messages again
            sink.wait_for(lambda: len(sink.records) == 5)
            _wait_for(lambda: source.buffered == 0)
            udp.sendto(_sized(11, size), address)
            sink.wait_for(lambda: len(sink.records) == 6)
    finally:
        source.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert [r.value for r in sink.records] == [_sized(i, size) for i in (0, 1, 2, 3, 4, 11)]
    assert source.dropped == 6
    # Served with `vigil source syslog --metrics-port` (a log line every 1,000 drops was all).
    assert _served_drops(source.name) - served_before == 6


def _served_drops(name: str) -> float:
    """The dropped-datagram counter of source ``name`` as the connectors' metrics serve it."""
    value = connector_metrics().get_sample_value("vigil_syslog_dropped_datagrams_total", {"source": name})
    return value or 0.0


def test_tcp_past_the_byte_bound_waits_for_room_then_resumes() -> None:
    size = 1000
    bound = 4 * size + size // 2
    sink = _Sink(down=True)
    source = SyslogSource(
        udp_port=None, tcp_port=0, batch_size=1, flush_interval=0.05, max_buffered_bytes=bound
    )
    peak = [0]
    put = source._queue.put

    def watched_put(item: Any, *, block: bool) -> bool:
        taken = put(item, block=block)
        peak[0] = max(peak[0], source.buffered_bytes)
        return taken

    source._queue.put = watched_put  # type: ignore[method-assign]
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        assert source.ready.wait(10)
        with socket.create_connection(("127.0.0.1", source.bound["tcp"])) as tcp:
            tcp.sendall(b"%d %s" % (size, _sized(0, size)))
            sink.wait_for(lambda: sink.attempts >= 1)  # message 0 is the batch being retried
            tcp.sendall(b"".join(b"%d %s" % (size, _sized(i, size)) for i in range(1, 21)))
            _wait_for(lambda: source._queue.waiting == 1)  # the connection waits for room
            assert (source.buffered, source.buffered_bytes, source.dropped) == (4, 4 * size, 0)
            assert source.published == 0
            sink.down.clear()  # the broker is back: the connection is read again
            sink.wait_for(lambda: len(sink.records) == 21)
    finally:
        source.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert [r.value for r in sink.records] == [_sized(i, size) for i in range(21)]
    assert 0 < peak[0] <= bound
    assert source.dropped == 0


def test_a_broker_back_during_the_drain_gets_what_was_buffered() -> None:
    # Stopping made one attempt to publish what was buffered: a broker blip then lost it all.
    sink = _Sink(down=True)
    source = SyslogSource(udp_port=0, tcp_port=None, batch_size=1, flush_interval=0.05, drain_timeout=30)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        assert source.ready.wait(10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for i in range(3):
                udp.sendto(_sized(i, 200), ("127.0.0.1", source.bound["udp"]))
        sink.wait_for(lambda: sink.attempts >= 1)
        _wait_for(lambda: source.buffered == 2)
        source.stop()
        failed = sink.attempts
        sink.wait_for(lambda: sink.attempts > failed + 1)  # the drain retried, in vain so far
        sink.down.clear()
        thread.join(10)  # returns once drained, not at the deadline
        assert not thread.is_alive()
    finally:
        source.stop()
        thread.join(30)
    assert [r.value for r in sink.records] == [_sized(i, 200) for i in range(3)]
    assert source.drained is True


def test_what_the_drain_deadline_leaves_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sink = _Sink(down=True)
    source = SyslogSource(udp_port=0, tcp_port=None, batch_size=1, flush_interval=0.05, drain_timeout=0.3)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        assert source.ready.wait(10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for i in range(3):
                udp.sendto(_sized(i, 200), ("127.0.0.1", source.bound["udp"]))
        _wait_for(lambda: source.buffered == 2 and sink.attempts >= 1)
        with caplog.at_level("ERROR", logger="vigil.sources.syslog"):
            source.stop()
            thread.join(10)
            assert not thread.is_alive()
    finally:
        source.stop()
        thread.join(30)
    assert source.drained is False
    assert sink.records == []
    # Publishing while running had the sink's own timeouts; the drain's, what was left of its 0.3 s.
    drain = [t for t in sink.timeouts if t is not None]
    assert None in sink.timeouts
    assert drain
    assert all(0 <= t <= 0.3 for t in drain)
    assert drain == sorted(drain, reverse=True)
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "3 messages (600 bytes" in message
    assert "drain_timeout (0.3 s)" in message
    assert "ConnectionError: broker unreachable" in message


def test_from_settings_buffer_options() -> None:
    from vigil.config import Settings

    default = SyslogSource.from_settings(Settings())
    assert (default.max_buffered, default.max_buffered_bytes, default.drain_timeout) == (
        100_000,
        256 * 1024 * 1024,
        20.0,
    )
    source = SyslogSource.from_settings(
        Settings(), max_buffered="50", max_buffered_bytes="1048576", drain_timeout="5"
    )
    assert (source.max_buffered, source.max_buffered_bytes, source.drain_timeout) == (50, 1_048_576, 5.0)


@pytest.mark.parametrize(
    "options",
    [
        {"max_buffered": 0},
        {"max_buffered_bytes": 0},
        {"drain_timeout": -1.0},
        {"drain_timeout": float("nan")},
    ],
)
def test_buffer_bounds_that_bound_nothing_are_refused(options: dict[str, Any]) -> None:
    # max_buffered 0 was "no bound" to the queue.Queue the buffer replaced; taken now it would
    # mean one message at a time, so it is refused, as are bounds that hold nothing.
    with pytest.raises(SourceError, match="syslog: max_buffered and max_buffered_bytes must be at least 1"):
        SyslogSource(udp_port=None, tcp_port=0, **options)


def test_a_port_past_65535_is_named_not_a_traceback() -> None:
    source = SyslogSource(udp_port=99999, tcp_port=None)
    with pytest.raises(
        SourceError, match=r"syslog: cannot listen on 127\.0\.0\.1 \(udp 99999, tcp None\): .*0-65535"
    ):
        source.run(MemorySink())
