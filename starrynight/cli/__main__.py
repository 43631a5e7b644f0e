"""``python -m starrynight.cli``: the same as the ``starrynight`` console script."""

from starrynight.cli.main import console

console()
