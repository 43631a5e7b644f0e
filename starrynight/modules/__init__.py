"""Processing steps: each reads its inputs through the storage layer, calls
:mod:`starrynight.algorithms`, and writes its outputs atomically into the workspace.

Every step is reachable as a Python function (here), a ``starrynight`` CLI command
(:mod:`starrynight.cli`) and a pipecraft node that runs that command.
"""
