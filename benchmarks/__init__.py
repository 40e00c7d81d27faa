"""Measured comparisons for miragic-nb: ``python -m benchmarks [--quick]`` prints a table.

Every figure is a ratio against a baseline measured in the same run, on the built-in emulator
over loopback. Results also go to ``benchmarks/results/`` (git-ignored) as JSON and markdown.
"""
