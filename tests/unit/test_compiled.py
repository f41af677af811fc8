"""Compiled modules: an extension older than its source is reported (its edits would not run)."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

from vigil.compiled import extensions, stale


def _module(root: Path, name: str, *, source_age: float, ext_age: float, suffix: str = ".py") -> Path:
    source = root / f"{name}{suffix}"
    source.write_text("x = 1\n")
    ext = root / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    ext.write_bytes(b"")
    now = 1_800_000_000.0
    os.utime(source, (now - source_age, now - source_age))
    os.utime(ext, (now - ext_age, now - ext_age))
    return source


def test_an_extension_older_than_its_source_is_stale(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    fresh = _module(tmp_path / "pkg", "fresh", source_age=100, ext_age=10)
    edited = _module(tmp_path / "pkg", "edited", source_age=10, ext_age=100)
    # A module written in C: its .c source counts as a .py one does.
    native = _module(tmp_path / "pkg", "_native", source_age=10, ext_age=100, suffix=".c")
    (tmp_path / "pkg" / "plain.py").write_text("y = 2\n")  # never compiled: not reported
    assert set(extensions(tmp_path)) == {fresh, edited, native}
    assert stale(tmp_path) == [native, edited]


def test_the_installed_package_has_no_stale_extension() -> None:
    # What the suite checks before it starts (tests/conftest.py), as a test of its own.
    assert stale() == []
