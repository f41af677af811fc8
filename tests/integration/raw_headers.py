"""Produce a record whose header names are any bytes, as producers other than the Python client
can (Java's, librdkafka's own): confluent-kafka turns a header name into ``str`` before sending,
so tests reach the librdkafka it bundles through ctypes (``rd_kafka_produceva``)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import confluent_kafka
from confluent_kafka import Consumer, TopicPartition

from vigil.config import Settings

# rd_kafka_vtype_t (rdkafka.h)
_VTYPE_TOPIC, _VTYPE_PARTITION, _VTYPE_VALUE, _VTYPE_KEY, _VTYPE_MSGFLAGS, _VTYPE_HEADER = 1, 3, 4, 5, 7, 9
#: RD_KAFKA_MSG_F_COPY: librdkafka copies the value (without it, it keeps a pointer to the
#: buffer, which ctypes frees before the record is sent).
_MSG_F_COPY = 2


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Union(ctypes.Union):
    # (Padded past the largest member: the C union is at least this large.)
    _fields_ = [
        ("cstr", ctypes.c_char_p),
        ("i32", ctypes.c_int32),
        ("mem", _Mem),
        ("header", _Header),
        ("_pad", ctypes.c_char * 64),
    ]


class _VU(ctypes.Structure):
    _fields_ = [("vtype", ctypes.c_int), ("u", _Union)]


def _library() -> ctypes.CDLL:
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        msg = f"no librdkafka bundled with confluent-kafka in {libs}"
        raise FileNotFoundError(msg)
    lib = ctypes.CDLL(str(found[0]))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    return lib


def produce_with_raw_headers(
    settings: Settings,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[bytes, bytes | None]]]],
    partition: int = 0,
) -> None:
    """Send ``(key, value, headers)`` records to ``topic[partition]``, header names as given;
    raises unless the partition's end moved on by as many records (none refused on the way)."""
    bootstrap = settings.kafka_bootstrap
    if bootstrap is None:
        msg = "produce_with_raw_headers needs a broker's address (kafka_bootstrap)"
        raise ValueError(msg)
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "raw-headers", "enable.auto.commit": False}
    )
    try:
        before = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1]
        _produce_all(bootstrap, topic, records, partition)
        after = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1]
    finally:
        reader.close()
    if after - before != len(records):
        msg = f"{topic}[{partition}] grew by {after - before} records, not the {len(records)} sent"
        raise RuntimeError(msg)


def _produce_all(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[bytes, bytes | None]]]],
    partition: int,
) -> None:
    lib = _library()
    err = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    for name, value in ((b"bootstrap.servers", bootstrap.encode()), (b"enable.idempotence", b"true")):
        if lib.rd_kafka_conf_set(conf, name, value, err, len(err)) != 0:
            msg = f"rd_kafka_conf_set {name!r}: {err.value!r}"
            raise RuntimeError(msg)
    handle = lib.rd_kafka_new(0, conf, err, len(err))  # 0: RD_KAFKA_PRODUCER
    if not handle:
        msg = f"rd_kafka_new: {err.value!r}"
        raise RuntimeError(msg)
    try:
        for key, value, headers in records:
            _send(lib, handle, topic, partition, key, value, headers)
        code = lib.rd_kafka_flush(handle, 30_000)
        if code:
            msg = f"rd_kafka_flush: error {code} (records not delivered in 30 s)"
            raise RuntimeError(msg)
    finally:
        lib.rd_kafka_destroy(handle)


def _send(
    lib: ctypes.CDLL,
    handle: int,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[bytes, bytes | None]],
) -> None:
    keep: list[ctypes.Array[ctypes.c_char]] = []  # alive until produceva has copied them
    vus: list[_VU] = []

    def vu(vtype: int) -> _VU:
        v = _VU()
        v.vtype = vtype
        vus.append(v)
        return v

    def buffer(data: bytes) -> int | None:
        b = ctypes.create_string_buffer(data, len(data))
        keep.append(b)
        return ctypes.cast(b, ctypes.c_void_p).value

    vu(_VTYPE_TOPIC).u.cstr = topic.encode()
    vu(_VTYPE_PARTITION).u.i32 = partition
    vu(_VTYPE_MSGFLAGS).u.i32 = _MSG_F_COPY
    for vtype, data in ((_VTYPE_VALUE, value), (_VTYPE_KEY, key)):
        if data is not None:
            v = vu(vtype)
            v.u.mem.ptr, v.u.mem.size = buffer(data), len(data)
    for name, hval in headers:
        v = vu(_VTYPE_HEADER)
        v.u.header.name = ctypes.cast(buffer(name + b"\0"), ctypes.c_char_p)
        v.u.header.val = None if hval is None else buffer(hval)
        v.u.header.size = 0 if hval is None else len(hval)
    array = (_VU * len(vus))(*vus)
    error = lib.rd_kafka_produceva(handle, array, len(vus))
    if error:
        msg = f"rd_kafka_produceva: {lib.rd_kafka_error_string(error)!r}"
        raise RuntimeError(msg)
