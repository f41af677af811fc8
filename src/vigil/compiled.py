"""Which modules run compiled, and whether a compiled one is older than its source.

The per-event paths (detectors, the runtime's loop, state and windows, the simulator's
factories; the list is ``COMPILED`` in the Makefile) are compiled by mypyc into C extensions
beside their sources: the same typed Python, checked by the same mypy, at less CPU per event
(docs/benchmarks.md: detection on Kafka 28.9 -> 21 µs).  Python imports an extension before
a source of the same name, so an edited source whose extension was not rebuilt would silently
not run: ``make`` rebuilds them when a source changes, the test suite refuses to start with a
stale one, and the command line warns.  ``make uncompiled`` removes them, and
``VIGIL_COMPILE=0 make ...`` builds without them (the sources run as they are).

A few modules are written in C (``NATIVE`` in the Makefile, each with a Python twin that runs
when it is not built): ``python -m vigil.compiled SOURCE.c`` builds one beside its source with
the compiler and flags this Python was built with, and the staleness check covers them too.
"""

from __future__ import annotations

import importlib.machinery
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

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


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"built {build(Path(arg))}")
