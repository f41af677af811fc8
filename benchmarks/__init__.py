"""Vigil's benchmarks: ``python -m benchmarks.run <name>|all`` (see benchmarks/run.py)."""
