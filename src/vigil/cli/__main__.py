"""``python -m vigil.cli``: the same as the ``vigil`` console script."""

from vigil.cli import main

main()
