"""Suite-wide conventions: tests under ``tests/integration`` are marked ``integration``, and the
suite does not start when a compiled module is older than its source (``vigil.compiled``)."""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).parent / "integration"


def pytest_sessionstart(session: pytest.Session) -> None:
    from vigil.compiled import stale, stale_message

    old = stale()
    if old:
        pytest.exit(stale_message(old), returncode=3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
