"""Vigil: real-time threat intelligence and fraud detection on Apache Kafka.

The package is laid out along the data's path:

    events  <- hub <- stream <- {sources, detect} <- sinks <- {api, cli}

``events`` holds the typed contracts, ``hub`` talks to Kafka, ``stream`` is the
runtime, ``sources`` and ``detect`` are stream applications, ``sinks`` act on
what detection decides.  The simulator (``sim``) knows only ``events`` and ``hub``.
"""

__version__ = "0.1.0"
