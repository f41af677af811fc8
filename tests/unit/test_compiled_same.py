"""The compiled modules compute what their sources do: the simulator's events (both paths),
detection's alerts and decisions over them, and the runtime benchmark's rule record by record
(the windows and state) and a batch at a time (the C sliding index and its Python twin), run
once on the extensions and once on a copy of the sources with none, compared byte for byte.
(mypyc compiles the same typed Python, but not always to the same behaviour: CI runs the
compiled build only, and ``VIGIL_COMPILE=0`` runs the sources; found in review, 2026-12-06.)"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.compiled import extensions

SRC = Path(__file__).resolve().parents[2] / "src"
REPO = SRC.parent

_RUN = """
import hashlib, json, pathlib, sys
import vigil.detect.engine as engine, vigil.sim.factory as factory
from benchmarks.runtime import BatchVelocityRule, VelocityRule, make_event
from vigil.detect.eval import _Run
from vigil.detect.engine import DetectOperator, RuleSet
from vigil.detect.intel import IntelIndex
from vigil.detect.rules.validate import load_rules
from vigil.events.codec import encode
from vigil.sim import SimConfig, Simulation
from vigil.testing import run_operators

out = {"engine": engine.__file__, "factory": factory.__file__}
config = SimConfig(seed=11, customers=150, events=8_000)
out["canonical"] = hashlib.sha256(b"".join(encode(e) for e in Simulation(config).canonical())).hexdigest()
native = hashlib.sha256()
for topic, record in Simulation(config).native():
    native.update(topic.encode() + repr(record).encode())
out["native"] = native.hexdigest()
rules = load_rules(sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")))
run = _Run.simulate(seed=7, events=20_000, customers=300, data_dir=None, attack_rate=1.0)
detect = DetectOperator(RuleSet(rules, IntelIndex()))
done = run_operators([detect], [*run.intel(), *run.stream], batch_size=2000, checkpoints=False)
for topic in ("alerts", "decisions"):
    emitted = done.emitted(topic)
    out[topic] = [len(emitted), hashlib.sha256(b"".join(encode(a) for a in emitted)).hexdigest()]
payments = [make_event(i) for i in range(30_000)]
for rule in (VelocityRule("velocity", len(payments)), BatchVelocityRule("velocity", len(payments))):
    emitted = run_operators([rule], payments, batch_size=500).emitted("velocity")
    out[rule.id] = [len(emitted), hashlib.sha256(b"".join(encode(a) for a in emitted)).hexdigest()]
print(json.dumps(out))
"""


def _run(src: Path) -> dict[str, object]:
    # (The repository's root after the sources: the benchmark's rule, benchmarks.runtime.)
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{REPO}"}
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(REPO / "rules")],
        env=env,
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_compiled_modules_compute_what_their_sources_do(tmp_path: Path) -> None:
    if not extensions():
        pytest.skip("no compiled modules (VIGIL_COMPILE=0): the sources are what runs")
    pure = tmp_path / "src"
    shutil.copytree(
        SRC / "vigil", pure / "vigil", ignore=shutil.ignore_patterns("*.so", ".*.built", "__pycache__")
    )
    compiled, sources = _run(SRC), _run(pure)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    assert str(compiled.pop("engine")).endswith(suffix)
    assert str(compiled.pop("factory")).endswith(suffix)
    assert str(sources.pop("engine")).endswith("engine.py")
    assert str(sources.pop("factory")).endswith("factory.py")
    for what in ("alerts", "velocity.v1", "velocity-batch.v1"):
        assert compiled[what][0] > 0, what  # type: ignore[index]  # (something to compare)
    assert compiled == sources
