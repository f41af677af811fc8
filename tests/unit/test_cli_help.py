"""What the commands' help says matches what they do."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from vigil.hub.redrive import INPUT_TOPIC


def test_redrive_help_names_every_input_topic_it_writes() -> None:
    # detect.routed, which redrive writes without --allow-topic, was missing from the list.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")} | {"COLUMNS": "400"}
    out = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "dlq", "redrive", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out.stdout).split())
    listed = re.search(r"by default only stages' inputs: ([^)]*)\)", text)
    assert listed is not None, text
    names = [name.strip() for name in listed[1].split(",")][:3]
    assert names == ["raw.<source>", "events.<domain>", "detect.routed"]
    for name in ("raw.coinbase", "events.identity", "detect.routed", "demo-1.detect.routed"):
        assert INPUT_TOPIC.fullmatch(name)
