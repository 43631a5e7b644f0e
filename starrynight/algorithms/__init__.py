"""Pure image-analysis functions: numpy arrays and plain values in, arrays and values out.

No I/O, no paths, no Dagster, no click: this is what a module author writes and tests.
"""
