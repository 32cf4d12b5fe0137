"""Benchmarks that compare securefl with its baselines in one process.

Run them with ``securefl bench`` (see ``docs/benchmarks.md``); nothing here
is imported by the library itself.
"""
