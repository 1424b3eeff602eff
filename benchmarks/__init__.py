"""Benchmarks for saner_kernels (DESIGN.md section 5): ``python -m benchmarks.run`` and ``pytest benchmarks/``.

Not part of the test run (``pytest tests``); nothing here is imported by the package.
"""
