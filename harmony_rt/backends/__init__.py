"""Inference backends. `make_backend` picks one by name: auto | ort | tensorrt."""

from __future__ import annotations

from ..errors import HarmonyError
from .base import Backend

TENSORRT_PRECISIONS = (None, "fp16", "fp8")  # what engines are built in (engines/build.py)
MAX_THREADS = 1024  # CPU threads a backend may be given: more only exhausts memory (ORT makes every thread up front)


def make_backend(name: str, bundle, **kw) -> Backend:
    """auto: TensorRT when it is usable for this bundle and precision, else ONNX Runtime."""
    if name in ("auto", "ort"):
        if name == "auto" and kw.get("precision") in TENSORRT_PRECISIONS:
            try:
                from .tensorrt import TensorRTBackend, tensorrt_available

                if tensorrt_available(bundle):
                    return TensorRTBackend(bundle, **kw)
            except ImportError:
                pass
        from .ort import OrtBackend

        return OrtBackend(bundle, **kw)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(bundle, **kw)
    raise HarmonyError(f"unknown backend {name!r} (expected auto, ort or tensorrt)")


__all__ = ["Backend", "make_backend"]
