"""The compiled build: mypyc's command line against ``python -m vigil.compiled``, side by side.

    python -m benchmarks.run build

mypyc's command line writes every module of a group into one C file (22 MB for Vigil's hot
paths), which one compiler process builds; ``python -m vigil.compiled`` (what ``make compile``
runs) writes one C file per module and compiles them on every CPU.  mypyc's documentation warns
that one file per module may cost run-time speed (no inlining across files), so both builds
are measured twice over, from copies of ``src`` in a scratch directory:

1. the build: wall time and the CPU of every process it ran (mypy's analysis, the compilers),
   one after the other on an otherwise idle machine;
2. the code each build made, in turns, each round in a fresh process pinned to one CPU (the best
   round of each kept): the detection operator over a simulated day in memory (the detectors),
   a sliding window over 50,000 keys and over a hot key (the windows), the simulator's
   generation; and, on a local broker, the runtime benchmark's engines (the runtime's loop, its
   state): the bare consumer (the floor) and the velocity rule, vectorised and record by record,
   CPU µs an event (``benchmarks.runtime``'s own measure).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WAYS = {
    "one_file": "mypyc's command line (one C file)",
    "per_module": "python -m vigil.compiled (a file per module)",
}
PROBES = {
    "detect_us": "detection in memory (the shipped rules)",
    "window_many_us": "sliding window, 50,000 keys",
    "window_hot_us": "sliding window, one hot key (5,000 events)",
    "sim_cpu_us": "simulator generation (CPU)",
}
ENGINES = {
    "floor": "the floor (consume + decode), CPU",
    "vectorised": "the velocity rule vectorised, CPU",
    "record": "the velocity rule record by record, CPU",
}


def _makefile_list(name: str) -> list[str]:
    """The Makefile's list ``name`` (its continued lines too), relative to ``src``: one list,
    where ``make`` reads it."""
    found = re.search(rf"^{name} := ((?:.*\\\n)*.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no `{name} :=` list in the Makefile")
    return [p.removeprefix("src/") for p in found.group(1).replace("\\", " ").split()]


def compiled_modules() -> list[str]:
    """The Python modules ``make compile`` compiles."""
    return _makefile_list("COMPILED")


def _native_modules() -> list[str]:
    return _makefile_list("NATIVE")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _build(src: Path, way: str) -> dict[str, Any]:
    bin_dir = Path(sys.executable).parent
    modules = compiled_modules()
    command = (
        [str(bin_dir / "mypyc"), *modules]
        if way == "one_file"
        else [sys.executable, "-m", "vigil.compiled", *modules]
    )
    started, cpu = time.perf_counter(), _children_cpu_s()
    done = subprocess.run(command, cwd=src, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - started, _children_cpu_s() - cpu
    if done.returncode:
        raise RuntimeError(f"{way} build failed in {src}:\n{(done.stdout + done.stderr)[-3000:]}")
    c_files = list((src / "build").rglob("*.c"))
    # The C module (the same build both ways, not timed).
    subprocess.run(
        [sys.executable, "-m", "vigil.compiled", *_native_modules()], cwd=src, check=True, capture_output=True
    )
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "c_files": len(c_files),
        "largest_c_mb": round(max(f.stat().st_size for f in c_files) / 1e6, 1),
    }


def probe(quick: bool) -> dict[str, float]:
    """In the process ``_probe`` starts: the in-memory measures of the build on ``sys.path``."""
    from benchmarks import detect, sim, windows
    from vigil.detect.rules.validate import load_rules
    from vigil.sim import SimConfig

    events = 30_000 if quick else 100_000
    d = detect.in_memory(load_rules([REPO / "rules"]), events)
    generated = sim._generation(SimConfig(seed=3, customers=2000, events=events))
    return {
        "detect_us": 1e6 * d["seconds"] / d["events"],
        "window_many_us": windows._many(events * 3, running=False),
        "window_hot_us": windows._hot(5_000, events // 2, running=True),
        "sim_cpu_us": generated["generate_cpu_us_per_event"],
    }


def _env(src: Path) -> dict[str, str]:
    # The tree's src first: its vigil (and extensions) before the install's.
    return {**os.environ, "PYTHONPATH": str(src)}


def _probe(src: Path, cpu: int, quick: bool) -> dict[str, float]:
    code = (
        f"import json, os, sys; os.sched_setaffinity(0, {{{cpu}}}); "
        "import vigil.stream.windows as w; "
        f"assert w.__file__.startswith({str(src)!r}) and not w.__file__.endswith('.py'), w.__file__; "
        f"from benchmarks.build import probe; print(json.dumps(probe({quick!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(src), capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"probe in {src} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _engines(
    trees: dict[str, Path], rounds: int, quick: bool, work: Path
) -> dict[str, dict[str, list[float]]]:
    from benchmarks.broker import bench_broker
    from benchmarks.runtime import Bench, fill
    from vigil.config import load_settings

    n = 200_000 if quick else 600_000
    cpu = max(os.sched_getaffinity(0))
    bootstrap, broker = bench_broker(work / "broker-home")
    settings = load_settings(kafka_bootstrap=bootstrap, home=work / "home")
    bench = Bench(settings, work / "engines", cpu, broker)
    (work / "engines").mkdir()
    out: dict[str, dict[str, list[float]]] = {way: {k: [] for k in ENGINES} for way in trees}
    saved = os.environ.get("PYTHONPATH")
    try:
        src = bench.topic("input")
        fill(settings, src, 0, n)
        for r in range(rounds):
            for way, tree in trees.items() if r % 2 == 0 else reversed(trees.items()):
                os.environ["PYTHONPATH"] = str(tree)  # the engine's process imports this build
                for key, cfg in (
                    ("floor", {}),
                    ("vectorised", {"batch": True, "guarantee": "at_least_once"}),
                    ("record", {"guarantee": "at_least_once"}),
                ):
                    label = f"{key}-{way}-{r}"
                    engine = "floor" if key == "floor" else "vigil"
                    output = bench.topic(f"{label}-alerts") if engine != "floor" else None
                    one = bench.engine(engine, label, input=src, output=output, target=n, **cfg)
                    out[way][key].append(one["cpu_us_per_event"])
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        if broker is not None:
            broker.stop()
    return out


def run(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 5
    work = Path(tempfile.mkdtemp(prefix="vigil-bench-build-"))
    cpu = max(os.sched_getaffinity(0))
    result: dict[str, Any] = {
        "modules": len(compiled_modules()),
        "rounds": rounds,
        "cpu_pinned": cpu,
        "cpus": os.cpu_count(),
    }
    try:
        trees: dict[str, Path] = {}
        for way in WAYS:
            tree = work / way / "src"
            shutil.copytree(
                REPO / "src",
                tree,
                ignore=shutil.ignore_patterns("*.so", "build", "__pycache__", ".mypy_cache", "*.egg-info"),
            )
            shutil.copy(REPO / "pyproject.toml", tree.parent)  # mypy's (and so mypyc's) settings
            trees[way] = tree
        result["build"] = {way: _build(tree, way) for way, tree in trees.items()}
        probes: dict[str, dict[str, list[float]]] = {way: {k: [] for k in PROBES} for way in WAYS}
        for r in range(rounds):
            for way in WAYS if r % 2 == 0 else reversed(WAYS):  # either first in turn
                for key, value in _probe(trees[way], cpu, quick).items():
                    probes[way][key].append(round(value, 3))
        result["probes"] = probes
        result["engines"] = _engines(trees, rounds + 1 if not quick else 2, quick, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    build = result["build"]
    one, per = build["one_file"], build["per_module"]
    lines = [
        "## Compiled build: one C file, or one per module on every CPU",
        "",
        f"The {result['modules']} modules `make compile` compiles, from copies of `src`, built one way "
        f"then the other on {result['cpus']} CPUs; then the code each build made, in turns "
        f"({result['rounds']} rounds in memory, each a fresh process pinned to CPU {result['cpu_pinned']}; "
        "the engines on a local broker, as `benchmarks.runtime` runs them), the best round of each kept.",
        "",
        "| build | wall | CPU (all processes) | C files | largest C file |",
        "|---|---:|---:|---:|---:|",
    ]
    for way, label in WAYS.items():
        b = build[way]
        size = f"{b['largest_c_mb']} MB"
        lines.append(f"| {label} | {b['wall_s']:.0f} s | {b['cpu_s']:.0f} s | {b['c_files']} | {size} |")
    lines += [
        "",
        f"A file per module: {one['wall_s'] / per['wall_s']:.2f}x faster to build, "
        f"{per['cpu_s'] / one['cpu_s']:.2f} of the CPU.",
        "",
        "| µs an event (lower is better), best round | one C file | per module | ratio | medians ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for group, names in (("probes", PROBES), ("engines", ENGINES)):
        for key, label in names.items():
            one_rounds, per_rounds = result[group]["one_file"][key], result[group]["per_module"][key]
            a, b = min(one_rounds), min(per_rounds)
            median = statistics.median(per_rounds) / statistics.median(one_rounds)
            lines.append(f"| {label} | {a:.2f} | {b:.2f} | {b / a:.2f} | {median:.2f} |")
    lines += [
        "",
        "A ratio above 1 would be the per-module build's cost at run time. The floor runs no compiled "
        "code: its ratio is what this shared machine's noise alone gives between the two sets of rounds "
        "(every round of each is in `benchmarks/results/build.json`).",
    ]
    return "\n".join(lines) + "\n"
