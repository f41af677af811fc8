"""Which modules run compiled, and whether a compiled one was not built from its source as it is now.

The per-event paths (detectors, the runtime's loop, state and windows, the simulator's
factories; the list is ``COMPILED`` in the Makefile) are compiled by mypyc into C extensions
beside their sources: the same typed Python, checked by the same mypy, at less CPU per event
(docs/benchmarks.md: detection on Kafka 28.9 -> 21 µs).  Python imports an extension before
a source of the same name, so an edited source whose extension was not rebuilt would silently
not run: ``make`` rebuilds them when a source changes, the test suite refuses to start with a
stale one, and the command line warns.  Stale is judged by contents, not files' times: the build
records each source's digest as it read it (``.NAME.py.built`` beside it), so a source edited
while the build ran, or put back with an older time (``cp -p``, ``tar x``, rsync), is stale
too; compared by times, both passed as built (found in review, 2026-12-06).  ``make
uncompiled`` removes them, and ``VIGIL_COMPILE=0 make ...`` builds without them (the sources
run as they are).

``python -m vigil.compiled MODULE.py ...`` (run in ``src``; ``make compile`` does) compiles the
Python modules with mypyc in one group, as mypyc's own command line does, but with a C file for
each module (and for mypyc's runtime) compiled on every CPU at once: the command line writes
them all into one C file (22 MB), which one compiler process builds while the other CPUs idle
(253-274 s in all on this 2-core VM, the machine of docs/benchmarks.md); a file per module on two
compilers took 99-114 s, with 0.66-0.73 of the CPU, and the code ran no slower (``make bench``:
docs/benchmarks.md, "Compiled build").

A few modules are written in C (``NATIVE`` in the Makefile, each with a Python twin that runs
when it is not built): ``python -m vigil.compiled SOURCE.c`` builds one beside its source with
the compiler and flags this Python was built with, and the staleness check covers them too.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import shlex
import subprocess
import sys
import sysconfig
from collections.abc import Callable
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


def digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def built_record(source: Path) -> Path:
    """Where the build records the digest of ``source`` it compiled."""
    return source.with_name(f".{source.name}.built")


def stale(root: Path = _PACKAGE) -> list[Path]:
    """Sources whose extension was not built from what they hold now (their edits would not
    run), or not by this module's build (no digest recorded)."""
    out: list[Path] = []
    for source in extensions(root):
        try:
            recorded = built_record(source).read_text().strip()
        except OSError:
            recorded = ""
        if recorded != digest(source):
            out.append(source)
    return sorted(out)


def stale_message(paths: list[Path]) -> str:
    names = ", ".join(str(p.relative_to(_PACKAGE.parent)) for p in paths)
    return (
        f"compiled modules not built from their sources as they are now: {names}; the old compiled "
        "code would run. Rebuild with `make compile` (or `make uncompiled` to run the sources)."
    )


def build(source: Path) -> Path:
    """Compile a C module's source into the extension beside it (warnings are errors)."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    target = source.with_name(source.stem + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    flags = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-std=c11"]
    include = ["-I" + sysconfig.get_paths()["include"]]
    subprocess.run([*cc, *flags, *include, str(source), "-o", str(target)], check=True)  # noqa: S603
    return target


def compile_in_parallel(
    compile_one: Callable[[str], list[str]], sources: list[str], workers: int
) -> list[str]:
    """``compile_one`` over ``sources`` in ``workers`` threads; the objects in the sources' order.

    The largest source starts first (a 3 MB module started last would leave the other compilers
    idle at the end); threads suffice, the work is in the compiler processes they wait for.  At
    the first failure the sources still queued are cancelled, and it is raised once the ones
    already running end (not after every source queued before it).
    """
    # Imported here, as the build's other imports: the command line imports this module at start.
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    largest_first = sorted(sources, key=os.path.getsize, reverse=True)
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(compile_one, one): one for one in largest_first}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            failed.result()  # raises it
        objects = {futures[f]: f.result() for f in futures}
    return [obj for one in sources for obj in objects[one]]


def build_python(sources: list[str], jobs: int | None = None) -> None:
    """Compile Python modules (paths relative to the working directory, the package's root) with
    mypyc into extensions beside them, as mypyc's own command line does (its ``MYPYC_OPT_LEVEL``,
    ``MYPYC_DEBUG_LEVEL`` variables too), but one C file per module and ``jobs`` compiler processes
    at once (default: one per CPU this process may use).  The C files go to ``build/``.

    Run it as ``python -m vigil.compiled`` from the package's root (the directory holding ``vigil``).
    """
    # Imported here: the command line imports this module at every start, and needs neither.
    from mypyc.build import mypycify
    from setuptools import setup
    from setuptools.command.build_ext import build_ext

    workers = jobs or len(os.sched_getaffinity(0))
    # mypy takes its package path from ``sys.path`` less the first entry (with ``-m``, the working
    # directory), and an editable install of another checkout there then supplied the modules not
    # named here: compiling a copy of ``src`` (as benchmarks/build.py does), mypy failed ("Cannot
    # determine type").  mypyc's command line puts the working directory on ``PYTHONPATH`` alike.
    here = os.getcwd()
    if here not in sys.path[1:]:
        sys.path.insert(1, here)

    class ParallelBuild(build_ext):  # type: ignore[misc]  # setuptools' command classes are untyped
        """setuptools compiles an extension's C files one after another; mypyc puts all its
        modules' files (and its runtime's) into one extension, so they go to several compilers."""

        def build_extension(self, ext: Any) -> None:
            compiler = self.compiler
            serial = compiler.compile

            def compile_all(sources: list[str], output_dir: str | None = None, **kw: Any) -> list[str]:
                # Each file through setuptools' own compile (its flags, its errors).
                def one(source: str) -> list[str]:
                    return list(serial([source], output_dir, **kw))

                return compile_in_parallel(one, sources, workers)

            compiler.compile = compile_all
            try:
                super().build_extension(ext)
            finally:
                compiler.compile = serial

    setup(
        name="vigil_compiled",
        ext_modules=mypycify(
            sources,
            opt_level=os.getenv("MYPYC_OPT_LEVEL", "3"),
            debug_level=os.getenv("MYPYC_DEBUG_LEVEL", "1"),
            # (mypyc's one-file-per-module mode fails with one module in a package: nothing to split.)
            multi_file=len(sources) > 1,
        ),
        cmdclass={"build_ext": ParallelBuild},
        script_args=["build_ext", "--inplace"],
    )


def main(args: list[str]) -> int:
    if args == ["--stale"]:  # (the Makefile's check: a stale extension is rebuilt whatever the times)
        print("\n".join(str(p) for p in stale()))
        return 0
    python = [a for a in args if a.endswith(".py")]
    native = [a for a in args if a.endswith(".c")]
    other = [a for a in args if not a.endswith((".py", ".c"))]
    if other or not args:
        print(
            f"expected Python modules (.py) and C modules (.c) to build, got: {' '.join(other) or 'nothing'}",
            file=sys.stderr,
        )
        return 2
    # Read before the build: a source edited while it runs is then stale, not taken as built.
    digests = {source: digest(Path(source)) for source in python + native}
    if python:
        build_python(python)
    for source in native:
        print(f"built {build(Path(source))}")
    for source, value in digests.items():
        built_record(Path(source)).write_text(value + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
