"""Application defaults that follow from the guarantee (no broker: nothing here connects)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import load_settings
from vigil.errors import ConfigError
from vigil.stream.app import AT_LEAST_ONCE_CHECKPOINT_S, EXACTLY_ONCE_CHECKPOINT_S, Application
from vigil.stream.base import Guarantee


@pytest.mark.parametrize(
    ("guarantee", "expected"),
    [("exactly_once", EXACTLY_ONCE_CHECKPOINT_S), ("at_least_once", AT_LEAST_ONCE_CHECKPOINT_S)],
)
def test_checkpoint_interval_defaults_by_guarantee(
    tmp_path: Path, guarantee: Guarantee, expected: float
) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    app = Application(settings, name="a", inputs=["in"], operators=[], guarantee=guarantee)
    assert app.checkpoint_interval_s == expected
    # Exactly-once outputs wait for the checkpoint; at-least-once ones do not, so it may be long.
    assert EXACTLY_ONCE_CHECKPOINT_S < 1 <= AT_LEAST_ONCE_CHECKPOINT_S
    explicit = Application(
        settings, name="b", inputs=["in"], operators=[], guarantee=guarantee, checkpoint_interval_s=0.7
    )
    assert explicit.checkpoint_interval_s == 0.7


def test_a_non_positive_checkpoint_interval_fails_by_name(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(ConfigError, match="checkpoint_interval_s > 0"):
        Application(settings, name="a", inputs=["in"], operators=[], checkpoint_interval_s=0)


@pytest.mark.parametrize("young", [0, -5])
def test_a_non_positive_gc_young_fails_by_name(tmp_path: Path, young: int) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", home=tmp_path)
    with pytest.raises(
        ConfigError, match=f"gc_young must be a positive number of objects or None; got {young}"
    ):
        Application(settings, name="a", inputs=["in"], operators=[], gc_young=young)
