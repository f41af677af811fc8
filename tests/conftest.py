"""Suite-wide conventions: tests under ``tests/integration`` are marked ``integration``, the
suite does not start when a compiled module was not built from its source as it is now
(``vigil.compiled``), and property tests have no per-example deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

_INTEGRATION = Path(__file__).parent / "integration"

# Property tests judge answers, not speed: on a shared two-core machine running the broker
# beside the suite, one example descheduled past hypothesis's 200 ms deadline failed the run.
settings.register_profile("vigil", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vigil")


def pytest_sessionstart(session: pytest.Session) -> None:
    from vigil.compiled import stale, stale_message

    old = stale()
    if old:
        pytest.exit(stale_message(old), returncode=3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
