"""Which modules run compiled, and whether a compiled one is older than its source.

The per-event paths (detectors, the runtime's loop, state and windows, the simulator's
factories; the list is ``COMPILED`` in the Makefile) are compiled by mypyc into C extensions
beside their sources: the same typed Python, checked by the same mypy, at less CPU per event
(docs/benchmarks.md: detection on Kafka 28.9 -> 21 µs).  Python imports an extension before
a source of the same name, so an edited source whose extension was not rebuilt would silently
not run: ``make`` rebuilds them when a source changes, the test suite refuses to start with a
stale one, and the command line warns.  ``make uncompiled`` removes them, and
``VIGIL_COMPILE=0 make ...`` builds without them (the sources run as they are).

``python -m vigil.compiled MODULE.py ...`` (run in ``src``; ``make compile`` does) compiles the
Python modules with mypyc, one C file for each, on every CPU at once: mypyc's own command line
writes them all into one C file (22 MB) that one compiler process takes over four minutes to
build; one file per module built in under two on this 2-core machine, with a quarter less CPU in
all, and ran no slower (the runtime benchmark's engines and the in-memory detection, window and
simulator benchmarks, side by side: issue 3's note of 2026-12-05).

A few modules are written in C (``NATIVE`` in the Makefile, each with a Python twin that runs
when it is not built): ``python -m vigil.compiled SOURCE.c`` builds one beside its source with
the compiler and flags this Python was built with, and the staleness check covers them too.
"""

from __future__ import annotations

import importlib.machinery
import os
import shlex
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent


def extensions(root: Path = _PACKAGE) -> dict[Path, Path]:
    """Each compiled module's extension file under ``root``, by its source file."""
    # One walk of the package (the command line asks at every start); the longest suffix
    # first, so ``x.cpython-311-x86_64-linux-gnu.so`` is x's, not ``x.cpython-311-...``'s.
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    out: dict[Path, Path] = {}
    for ext in root.rglob("*"):
        suffix = next((s for s in suffixes if ext.name.endswith(s)), None)
        if suffix is None:
            continue
        stem = ext.name[: -len(suffix)]
        for source in (ext.with_name(stem + ".py"), ext.with_name(stem + ".c")):
            if source.exists():
                out[source] = ext
                break
    return out


def stale(root: Path = _PACKAGE) -> list[Path]:
    """Sources changed since their extension was built (their edits would not run)."""
    return sorted(src for src, ext in extensions(root).items() if src.stat().st_mtime > ext.stat().st_mtime)


def stale_message(paths: list[Path]) -> str:
    names = ", ".join(str(p.relative_to(_PACKAGE.parent)) for p in paths)
    return (
        f"compiled modules older than their sources: {names}; the old compiled code would run. "
        "Rebuild with `make compile` (or `make uncompiled` to run the sources)."
    )


def build(source: Path) -> Path:
    """Compile a C module's source into the extension beside it (warnings are errors)."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    target = source.with_name(source.stem + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    flags = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-std=c11"]
    include = ["-I" + sysconfig.get_paths()["include"]]
    subprocess.run([*cc, *flags, *include, str(source), "-o", str(target)], check=True)  # noqa: S603
    return target


def build_python(sources: list[str], jobs: int | None = None) -> None:
    """Compile Python modules (paths relative to the working directory, the package's root) with
    mypyc into extensions beside them: one C file per module, ``jobs`` compiler processes at once
    (default: one per CPU this process may use).  The C files go to ``build/``."""
    # Imported here: the command line imports this module at every start, and needs neither.
    from mypyc.build import mypycify
    from setuptools import setup
    from setuptools.command.build_ext import build_ext

    workers = jobs or len(os.sched_getaffinity(0))

    class ParallelBuild(build_ext):  # type: ignore[misc]  # setuptools' command classes are untyped
        """setuptools compiles an extension's C files one after another; mypyc's modules all go
        into one extension, so its files are handed out to ``workers`` compiler processes here."""

        def build_extension(self, ext: Any) -> None:
            compiler = self.compiler
            serial = compiler.compile

            def compile_all(sources: list[str], output_dir: str | None = None, **kw: Any) -> list[str]:
                if len(sources) < 2:
                    return list(serial(sources, output_dir, **kw))
                # One call per file, through setuptools' own compile (its flags, its errors),
                # the largest first so that it does not start last; threads suffice, the work
                # is in the compiler processes they wait for.
                largest_first = sorted(sources, key=os.path.getsize, reverse=True)
                with ThreadPoolExecutor(workers) as pool:
                    objects = pool.map(lambda one: serial([one], output_dir, **kw), largest_first)
                    parts = dict(zip(largest_first, objects, strict=True))
                return [obj for one in sources for obj in parts[one]]

            compiler.compile = compile_all
            try:
                super().build_extension(ext)
            finally:
                compiler.compile = serial

    # As mypyc's own command line does: the working directory first on the path mypy asks this
    # Python for, so that the modules analysed are these, wherever the virtualenv's install points.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    setup(
        name="vigil_compiled",
        ext_modules=mypycify(sources, opt_level="3", debug_level="1", multi_file=True),
        cmdclass={"build_ext": ParallelBuild},
        script_args=["build_ext", "--inplace"],
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    python = [a for a in args if a.endswith(".py")]
    if python:
        build_python(python)
    for arg in args:
        if not arg.endswith(".py"):
            print(f"built {build(Path(arg))}")
