"""ONNX Runtime backend: one InferenceSession per component (CUDA provider when present, else CPU)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..contract import ComponentSpec
from ..errors import BundleError

log = logging.getLogger(__name__)

_NP = {"float32": "tensor(float)", "int64": "tensor(int64)", "float16": "tensor(float16)"}


def default_providers() -> list[str]:
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def check_io(session: ort.InferenceSession, spec: ComponentSpec, where: str) -> None:
    """Refuse a graph whose inputs / outputs disagree with the contract (names, types, ranks, fixed dims)."""
    for kind, got, want in (("input", session.get_inputs(), spec.inputs), ("output", session.get_outputs(), spec.outputs)):
        if [g.name for g in got] != [w.name for w in want]:
            raise BundleError(f"{where}: graph {kind}s {[g.name for g in got]} != manifest {[w.name for w in want]}")
        for g, w in zip(got, want):
            if g.type != _NP.get(w.dtype) or len(g.shape) != len(w.shape):
                raise BundleError(f"{where}: {kind} {g.name} is {g.type}{g.shape}, manifest says {w.dtype}{list(w.shape)}")
            for gd, wd in zip(g.shape, w.shape):
                if isinstance(wd, int) and isinstance(gd, int) and gd != wd:
                    raise BundleError(f"{where}: {kind} {g.name} has shape {g.shape}, manifest says {list(w.shape)}")


class OrtBackend:
    """Runs bundle components with ONNX Runtime. `run` is thread-safe (ORT sessions are)."""

    name = "ort"

    def __init__(self, bundle: Bundle, providers: list[str] | None = None, threads: int | None = None):
        self.bundle = bundle
        self.providers = providers or default_providers()
        self.threads = threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        return so

    def has(self, component: str) -> bool:
        return component in self.bundle.manifest["components"]

    def session(self, component: str) -> ort.InferenceSession:
        with self._lock:
            sess = self._sessions.get(component)
            if sess is None:
                path = self.bundle.component_path(component)
                try:
                    sess = ort.InferenceSession(str(path), self.options(), providers=self.providers)
                except Exception as e:  # ORT raises its own exception types for corrupt / truncated graphs
                    msg = str(e).strip().splitlines()[0][:300]
                    raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({msg})") from None
                check_io(sess, self.bundle.specs[component], str(path))
                self._sessions[component] = sess
                log.debug("loaded %s with %s", path.name, sess.get_providers())
            return sess

    def load_all(self) -> None:
        for name in self.bundle.manifest["components"]:
            self.session(name)

    def run(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.session(component)
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, feeds)
        return dict(zip(names, outs))
