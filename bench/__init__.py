"""Benchmarks: `pytest bench/` (see conftest.py) and helper scripts; nothing here is a correctness test."""

import harmony_rt  # noqa: F401  (first: onnxruntime's telemetry off unless the user chose, harmony_rt/__init__.py)
