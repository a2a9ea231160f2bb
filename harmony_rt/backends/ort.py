"""ONNX Runtime backend: one InferenceSession per component (CUDA provider when present, else CPU).

`precision` picks a component's variant graph (fp16, int8, int8-dynamic, fp8: see the manifest's
`variants`) where the bundle has one and the fp32 main graph otherwise. Plugin graphs (variants flagged
`plugin`, custom RoPEAlignedAttention nodes) are for TensorRT and never chosen here.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..contract import ComponentSpec
from ..cpuload import choose_spinning, env_override
from ..errors import BundleError, HarmonyError

log = logging.getLogger(__name__)

_NP = {"float32": "tensor(float)", "int64": "tensor(int64)", "float16": "tensor(float16)"}


def default_providers() -> list[str]:
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def check_io(session: ort.InferenceSession, spec: ComponentSpec, where: str) -> None:
    """Refuse a graph whose inputs / outputs disagree with the contract (names, types, ranks, fixed dims)."""
    sides = (("input", session.get_inputs(), spec.inputs), ("output", session.get_outputs(), spec.outputs))
    for kind, got, want in sides:
        if [g.name for g in got] != [w.name for w in want]:
            raise BundleError(f"{where}: graph {kind}s {[g.name for g in got]} != manifest {[w.name for w in want]}")
        for g, w in zip(got, want):
            if g.type != _NP.get(w.dtype) or len(g.shape) != len(w.shape):
                raise BundleError(f"{where}: {kind} {g.name} is {g.type}{g.shape}, "
                                  f"manifest says {w.dtype}{list(w.shape)}")
            for gd, wd in zip(g.shape, w.shape):
                if isinstance(wd, int) and isinstance(gd, int) and gd != wd:
                    raise BundleError(f"{where}: {kind} {g.name} has shape {g.shape}, manifest says {list(w.shape)}")


def _first_line(e: Exception) -> str:
    """ORT's message for one line: its first line (the rest is its own context), at most 300 characters."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class OrtBackend:
    """Runs bundle components with ONNX Runtime. `run` is thread-safe (ORT sessions are)."""

    name = "ort"

    def __init__(self, bundle: Bundle, providers: list[str] | None = None, threads: int | None = None,
                 precision: str | None = None, spinning: bool | None = None):
        self.bundle = bundle
        self.spinning = spinning  # None: decided from the CPU load when the first session is made
        if spinning is None:
            env_override()  # a bad HARMONY_RT_SPINNING is refused here, not at the first generate
        self.providers = providers or default_providers()
        self.threads = threads
        self.precision = precision
        self.graph_precision = {name: self._pick(name) for name in bundle.manifest["components"]}
        if precision is not None and precision not in self.graph_precision.values():
            have = sorted({p for n in self.graph_precision for p in self._runnable(n)})
            raise HarmonyError(f"the bundle {bundle.path} has no {precision} graphs for ONNX Runtime "
                               f"(has {', '.join(have)})")
        for name, prec in self.graph_precision.items():  # bytes checked now, not after a denoising loop
            bundle.component_path(name, prec)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def _runnable(self, component: str) -> list[str]:
        comp = self.bundle.manifest["components"][component]
        plugin = {k for k, v in (comp.get("variants") or {}).items() if isinstance(v, dict) and v.get("plugin")}
        return [p for p in self.bundle.precisions(component) if p not in plugin]

    def _pick(self, component: str) -> str:
        """The precision whose graph runs `component`: the requested one where present, else the main graph's."""
        main = self.bundle.precisions(component)[0]
        if self.precision is None or self.precision == main:
            return main
        if self.precision in self._runnable(component):
            log.info("%s: %s graph", component, self.precision)
            return self.precision
        log.info("%s: no %s graph, using the %s graph", component, self.precision, main)
        return main

    def options(self) -> ort.SessionOptions:
        """Session settings, each kept because it measured faster (bench/RESULTS.md):
        - all graph optimizations (Gelu, SkipLayerNorm fusions; ONNX Attention runs as one kernel);
        - denormals flushed to zero: a masked softmax (GLDI's window, padded captions) leaves probabilities
          near 1e-38 that become denormal, and the following MatMul then runs several times slower on x86
          (one masked attention 2.3x, whole steps 1.06-1.27x); flushing changes values below 1.2e-38 only;
        - pool threads spin between tasks only where the cores are free (harmony_rt.cpuload: other
          processes' load sampled once, when the first session is made; `spinning=` or
          HARMONY_RT_SPINNING=on|off override it). With another CPU-bound process beside, ORT's default
          spinning was 1.5-1.9x slower on both VMs measured; on an idle machine it was 1.2x (Intel) and 1.5x
          (AMD) faster on the demo model (bench/spin_matrix.py, bench/RESULTS.md)."""
        if self.spinning is None:
            self.spinning = choose_spinning(self.threads)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.threads:
            so.intra_op_num_threads = self.threads
        # ORT's own error lines (colour codes, several lines) only under --debug: failures are raised as one line
        so.log_severity_level = 3 if log.isEnabledFor(logging.DEBUG) else 4
        return so

    def has(self, component: str) -> bool:
        return component in self.bundle.manifest["components"]

    def session(self, component: str) -> ort.InferenceSession:
        with self._lock:
            sess = self._sessions.get(component)
            if sess is None:
                path = self.bundle.component_path(component, self.graph_precision.get(component))
                so = self.options()
                try:
                    sess = ort.InferenceSession(str(path), so, providers=self.providers)
                except Exception as e:  # ORT raises its own exception types for corrupt / truncated graphs
                    raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({_first_line(e)})") from None
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
        try:
            outs = sess.run(names, feeds)
        except Exception as e:
            if not type(e).__module__.startswith("onnxruntime"):  # ours (a wrong feed): a bug, not the bundle's
                raise
            # a graph that loaded and matches the contract, failing on the inputs its manifest sized (an edited
            # manifest or tokenizer, a damaged graph run with --no-verify), or memory: one line, not ORT's log
            path = self.bundle.component_path(component, self.graph_precision.get(component))
            raise BundleError(f"{path}: ONNX Runtime failed running {component} ({_first_line(e)})") from None
        return dict(zip(names, outs))
