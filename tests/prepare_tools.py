"""Fetches what the integration tests run, once, before the test workers start.

    .venv/bin/python -m tests.prepare_tools

The Kafka jars (Maven, into ``.vigil/kafka-dist``) and the anvil Ethereum node (npm, into
``.vigil/tools/anvil``).  Each test worker would otherwise fetch what is missing itself, on a
fresh clone several at once into the same places: Maven 3.8's local repository and an npm prefix
are not safe to write from two processes at a time.  Already there, each is a quick check.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.sources.anvil import anvil_binary

from vigil.hub.broker import LocalBroker

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    # (The integration tests' broker fixture reads the jars from the same place.)
    jars = LocalBroker(home=REPO / ".vigil", dist_root=REPO / ".vigil" / "kafka-dist").ensure_jars()
    print(f"Kafka jars: {jars}")
    print(f"anvil: {anvil_binary()}")


if __name__ == "__main__":
    main()
