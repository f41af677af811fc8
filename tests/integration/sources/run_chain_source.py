"""Run a chain connector into Kafka until killed (the kill-and-restart tests' subject).

    python tests/integration/sources/run_chain_source.py ethereum|bitcoin URL TOPIC SOURCE_ID BOOTSTRAP HOME

Bitcoin's RPC password comes from the environment (``BTC_RPC_PASSWORD``), never argv.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

from vigil.config import load_settings
from vigil.sources.bitcoin import BitcoinSource
from vigil.sources.chain import ChainFollower
from vigil.sources.ethereum import EthereumSource
from vigil.sources.sink import KafkaRawSink

#: anvil's chain id (run as a script, this file cannot import tests.integration.sources.anvil).
ANVIL_CHAIN_ID = 31337


def main() -> None:
    kind, url, topic, source_id, bootstrap, home = sys.argv[1:7]
    settings = load_settings(kafka_bootstrap=bootstrap, home=Path(home))
    fast = timedelta(milliseconds=50)
    source: ChainFollower
    if kind == "ethereum":
        source = EthereumSource(
            url,
            chain_id=ANVIL_CHAIN_ID,
            source_id=source_id,
            confirmations=0,
            start_block=0,
            poll_interval=fast,
            batch_blocks=3,
        )
    else:
        auth = ("vigil", os.environ["BTC_RPC_PASSWORD"])
        source = BitcoinSource(
            url,
            auth=auth,
            source_id=source_id,
            confirmations=0,
            start_height=50000,
            poll_interval=fast,
            batch_blocks=1,
        )
    sink = KafkaRawSink(settings, source_id=source_id, topic_for=lambda _record: topic)
    print("running", flush=True)
    source.run(sink)


if __name__ == "__main__":
    main()
