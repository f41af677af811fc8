"""Compiled modules: built by ``python -m vigil.compiled`` (one C file per module, on every CPU), and
an extension not built from what its source holds now is reported (its edits would not run)."""

from __future__ import annotations

import importlib.machinery
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vigil.compiled import built_record, compile_in_parallel, digest, extensions, stale


class CompileError(Exception):
    """Stands in for setuptools' (a compiler's failure)."""


def _module(root: Path, name: str, *, built_from: str | None, suffix: str = ".py") -> Path:
    """A module whose extension was built from ``built_from`` (None: no digest recorded)."""
    source = root / f"{name}{suffix}"
    (root / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    if built_from is not None:
        source.write_text(built_from)
        built_record(source).write_text(digest(source) + "\n")
    source.write_text("x = 1\n")
    return source


def test_an_extension_not_built_from_its_source_as_it_is_now_is_stale(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    fresh = _module(tmp_path / "pkg", "fresh", built_from="x = 1\n")
    edited = _module(tmp_path / "pkg", "edited", built_from="x = 0\n")
    unrecorded = _module(tmp_path / "pkg", "unrecorded", built_from=None)  # (not built by vigil.compiled)
    # A module written in C: its .c source counts as a .py one does.
    native = _module(tmp_path / "pkg", "_native", built_from="int x;\n", suffix=".c")
    (tmp_path / "pkg" / "plain.py").write_text("y = 2\n")  # never compiled: not reported
    assert set(extensions(tmp_path)) == {fresh, edited, unrecorded, native}
    # Whatever the files' times say: an edit the build did not see is stale though older.
    now = 1_800_000_000.0
    for path in (tmp_path / "pkg").iterdir():
        os.utime(path, (now if path.suffix in (".py", ".c") else now + 100,) * 2)
    assert stale(tmp_path) == [native, edited, unrecorded]


def test_the_installed_package_has_no_stale_extension() -> None:
    # What the suite checks before it starts (tests/conftest.py), as a test of its own.
    assert stale() == []


def _compile(root: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    """``python -m vigil.compiled`` as ``make compile`` runs it, in ``root``; unoptimised, as
    mypyc's ``MYPYC_OPT_LEVEL`` allows (the suite's other workers share the CPUs)."""
    return subprocess.run(
        [sys.executable, "-m", "vigil.compiled", *modules],
        cwd=root,
        env={**os.environ, "MYPYC_OPT_LEVEL": "0"},
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )


def test_python_modules_compile_into_one_c_file_each_and_run_compiled(tmp_path: Path) -> None:
    (tmp_path / "twice.py").write_text("def double(x: int) -> int:\n    return 2 * x\n")
    (tmp_path / "four.py").write_text(
        "from twice import double\n\n\ndef quadruple(x: int) -> int:\n    return double(double(x))\n"
    )
    done = _compile(tmp_path, "twice.py", "four.py")
    assert done.returncode == 0, done.stdout + done.stderr
    # One C file per module (mypyc's command line writes one for all), each compiled on its own.
    for name in ("twice", "four"):
        assert (tmp_path / "build" / f"__native_{name}.c").is_file(), sorted(os.listdir(tmp_path / "build"))
        assert re.search(rf"-c build/__native_{name}\.c .* -O0 ", done.stdout), done.stdout
    assert set(extensions(tmp_path)) == {tmp_path / "twice.py", tmp_path / "four.py"}
    assert stale(tmp_path) == []  # (the build recorded what it compiled)
    # Put back with its old time, an edit is stale still (compared by times, it passed as built).
    twice, times = tmp_path / "twice.py", (tmp_path / "twice.py").stat()
    twice.write_text("def double(x: int) -> int:\n    return x + x\n")
    os.utime(twice, (times.st_atime, times.st_mtime))
    assert stale(tmp_path) == [twice]
    twice.write_text("def double(x: int) -> int:\n    return 2 * x\n")
    # Imported compiled (an extension before its source), calling across the two modules.
    ran = subprocess.run(
        [sys.executable, "-c", "import four; print(four.quadruple(3), four.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    value, path = ran.stdout.split()
    assert value == "12"
    assert path.endswith(importlib.machinery.EXTENSION_SUFFIXES[0])


def test_a_module_mypyc_rejects_fails_the_build_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "wrong.py").write_text('def count() -> int:\n    return "three"\n')
    done = _compile(tmp_path, "wrong.py")
    assert done.returncode != 0
    assert "wrong.py:2: error: Incompatible return value type" in done.stdout + done.stderr
    assert extensions(tmp_path) == {}


def _sized(root: Path, sizes: dict[str, int]) -> list[str]:
    for name, size in sizes.items():
        (root / name).write_bytes(b"x" * size)
    return [str(root / name) for name in sizes]


def test_files_compile_on_several_workers_largest_first_objects_in_source_order(tmp_path: Path) -> None:
    sources = _sized(tmp_path, {"small.c": 10, "large.c": 1000, "medium.c": 100, "tiny.c": 1})
    lock = threading.Lock()
    started: list[str] = []
    running, most = 0, 0
    both = threading.Barrier(2, timeout=10)

    def compile_one(source: str) -> list[str]:
        nonlocal running, most
        with lock:
            started.append(Path(source).name)
            running += 1
            most = max(most, running)
        if len(started) <= 2:
            both.wait()  # the first two only go on together: both workers busy at once
        with lock:
            running -= 1
        return [source.replace(".c", ".o")]

    objects = compile_in_parallel(compile_one, sources, workers=2)
    assert objects == [s.replace(".c", ".o") for s in sources]
    assert most == 2
    assert started[:2] == ["large.c", "medium.c"] or started[:2] == ["medium.c", "large.c"]
    assert sorted(started) == ["large.c", "medium.c", "small.c", "tiny.c"]


def test_a_failed_file_fails_the_build_with_the_compilers_error(tmp_path: Path) -> None:
    sources = _sized(tmp_path, {"a.c": 1, "b.c": 3, "c.c": 2})
    compiled: list[str] = []

    def compile_one(source: str) -> list[str]:
        if source.endswith("a.c"):
            raise CompileError(f"error: {source}: expected ';'")
        compiled.append(Path(source).name)
        return [source]

    with pytest.raises(CompileError, match=r"a\.c: expected ';'"):
        compile_in_parallel(compile_one, sources, workers=2)
    # a.c, the smallest, started last: the files compiled before it did not hide its failure.
    assert sorted(compiled) == ["b.c", "c.c"]


def test_the_command_line_names_what_it_cannot_build(tmp_path: Path) -> None:
    done = _compile(tmp_path, "notes.txt")
    assert done.returncode == 2
    assert "expected Python modules (.py) and C modules (.c) to build, got: notes.txt" in done.stderr
