"""vigil.stream: the stream runtime.

- :mod:`vigil.stream.base`: what operators see (``Operator``, ``Context``, ``State``, ``StoreSpec``,
  ``RecordBatch`` and ``events_of``);
- :mod:`vigil.stream.app`: ``Application``, the Kafka-backed runtime (batches, checkpoints, guarantees);
- :mod:`vigil.stream.state`: RocksDB state buffered between checkpoints;
- :mod:`vigil.stream.changelog`: changelog topics and restore;
- :mod:`vigil.stream.alignment`: event-time alignment (which input partitions to pause, what to release);
- :mod:`vigil.stream.windows`: event-time windows and aggregations over state;
- :mod:`vigil.stream.vectorised`: a sliding-window count and sum over whole batches (its index in C);
- :mod:`vigil.stream.repartition`: ``group_by`` through a repartition topic;
- :mod:`vigil.stream.table`: ``GlobalTable``, a compacted topic as a local lookup table, read by
  operators as a ``LookupTable`` (its reader, ``TopicFollower``, also feeds lookups kept in a
  shape of their own, like the intel index);
- :mod:`vigil.stream.metrics`: counters for tests, Prometheus metrics for operations.

Nothing is imported here: importing the package has no side effects and pulls in no client library.
"""
