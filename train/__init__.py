"""PyTorch training of the Harmony / Unison model."""

import harmony_rt  # noqa: F401  (first: onnxruntime's telemetry off unless the user chose, harmony_rt/__init__.py)
