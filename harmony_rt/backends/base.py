"""What every backend (ONNX Runtime, TensorRT) offers the pipeline."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Runs bundle components by name. Must be safe to call from several threads at once."""

    name: str

    def run(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one component on numpy inputs (names from the contract); return its outputs by name."""
        ...

    def has(self, component: str) -> bool:
        """Whether the bundle holds this component."""
        ...
