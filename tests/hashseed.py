"""Run a Python snippet in a fresh interpreter with a given ``PYTHONHASHSEED``.

Determinism that must hold across processes (stable ids, seeded simulation streams) cannot be
checked inside one process: Python's ``hash()`` of a str is salted per process, so code that
leans on it agrees with itself but not with the next run.  The child imports the same ``vigil``
package as the test process (its directory leads ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import vigil

_VIGIL_ROOT = str(Path(vigil.__file__).resolve().parent.parent)


def run_with_hash_seed(code: str, seed: str, timeout: float = 60.0) -> str:
    """Standard output of ``code`` run by this interpreter with ``PYTHONHASHSEED=seed``."""
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = seed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_VIGIL_ROOT, env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"child with PYTHONHASHSEED={seed} failed:\n{done.stderr}"
    return done.stdout
