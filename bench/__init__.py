"""Benchmarks: `pytest bench/` (see conftest.py) and helper scripts; nothing here is a correctness test."""
