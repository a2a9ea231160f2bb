"""TensorRT backend: runs prebuilt engines from `<bundle>/engines/` with cuda-python device buffers.

Engine files are named `<component>.<precision>.sm<XX>.trt<major.minor>.engine` (`engine_filename`, shared
with `engines/build.py`): an engine only runs on the GPU architecture and TensorRT version it was built
for. Engines whose RoPEAlignedAttention runs through the AOT Triton plugin are self-contained; engines
built with the native IPluginV3 library need that library passed as `plugin_libraries` (never loaded from
the bundle on its own: a bundle is untrusted input and a shared library is code).

Every import of tensorrt / cuda-python is lazy. NOTE: the execution path (TensorRTBackend.run and below)
has not run on the development machines, which have no GPU and no TensorRT.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HarmonyError

log = logging.getLogger(__name__)

ENGINE_DIR = "engines"
ENGINE_INDEX = "engines.json"
PRECISIONS = ("fp16", "fp8")
_ENGINE_RE = re.compile(r"^(?P<component>\w+)\.(?P<precision>\w+)\.sm(?P<sm>\d+)\.trt(?P<trt>\d+\.\d+)\.engine$")

INSTALL_HINT = "pip install tensorrt-cu13 cuda-python (needs an NVIDIA GPU and driver)"


def trt_tag(version: str) -> str:
    """'11.4.0.106' -> '11.4'."""
    parts = str(version).split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise ValueError(f"not a TensorRT version: {version!r}")
    return f"{int(parts[0])}.{int(parts[1])}"


def engine_filename(component: str, precision: str, sm: int | str, trt_version: str) -> str:
    """`<component>.<precision>.sm<XX>.trt<major.minor>.engine`; sm as 90 or '90' (compute capability x10)."""
    if not re.fullmatch(r"\w+", component) or precision not in PRECISIONS:
        raise ValueError(f"bad component {component!r} or precision {precision!r} (one of {PRECISIONS})")
    return f"{component}.{precision}.sm{int(sm)}.trt{trt_tag(trt_version)}.engine"


def parse_engine_filename(name: str) -> dict | None:
    """Inverse of `engine_filename`: {component, precision, sm, trt} or None."""
    m = _ENGINE_RE.match(name)
    return None if m is None else {**m.groupdict(), "sm": int(m["sm"])}


def find_engines(bundle_path: Path, sm: int | None = None, trt: str | None = None,
                 precision: str | None = None) -> dict[str, Path]:
    """{component: engine path} in `<bundle>/engines/`, filtered by sm, TensorRT major.minor, precision."""
    folder = Path(bundle_path) / ENGINE_DIR
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.glob("*.engine")):
        info = parse_engine_filename(p.name)
        if info is None or not p.is_file() or p.is_symlink():
            continue
        if (sm is not None and info["sm"] != sm) or (trt is not None and info["trt"] != trt_tag(trt)):
            continue
        if precision is not None and info["precision"] != precision:
            continue
        found.setdefault(info["component"], p)
    return found


MAX_INDEX_BYTES = 1 << 22


def engine_bytes(path: Path) -> bytes:
    """Engine file `path`'s bytes, checked against the sha256 `harmony-rt build` recorded for it in
    engines.json (a damaged or swapped engine is refused before TensorRT deserializes it). The record lives
    beside the engine, so this guards against corruption and stale copies, not against a hostile bundle:
    build engines yourself, on the GPU they run on. No record (an engine built before records held the
    sha256, or copied without engines.json): a warning, and the engine is loaded."""
    path = Path(path)
    data = path.read_bytes()
    index = path.parent / ENGINE_INDEX
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise ValueError(f"larger than {MAX_INDEX_BYTES} bytes")
        rec = json.loads(index.read_text("utf-8"))["engines"][path.name]
        digest = rec["engine_sha256"]
        if not isinstance(digest, str):
            raise TypeError("engine_sha256 is not a string")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        log.warning("%s: not verified, %s has no sha256 for it (%s: %s); rebuild it to record one: harmony-rt "
                    "build", path.name, index, type(e).__name__, e)
        return data
    if hashlib.sha256(data).hexdigest() != digest.lower():
        raise HarmonyError(f"{path}: sha256 differs from the one harmony-rt build recorded in {ENGINE_INDEX} (the "
                           "engine is damaged or was replaced); rebuild it: harmony-rt build")
    return data


def _cudart():
    from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

    return cudart


def _ok(result):
    """Unpack a cuda-python (err, *values) tuple; raise on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {int(err)} ({getattr(err, 'name', err)})")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_sm(device: int = 0) -> int | None:
    """Compute capability x10 of `device` (e.g. 90), or None without cuda-python, driver or GPU."""
    try:
        cudart = _cudart()
        if _ok(cudart.cudaGetDeviceCount()) <= device:
            return None
        attr = cudart.cudaDeviceAttr
        major = _ok(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device))
        minor = _ok(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device))
        return int(major) * 10 + int(minor)
    except Exception:  # ImportError, no driver, no device
        return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:  # a dotted name imports its parent package, which can fail in many ways
        return False


def missing_requirements(bundle) -> list[str]:
    """What stops the TensorRT backend from running this bundle here (empty list: nothing)."""
    if not _has_module("tensorrt"):
        return [f"the tensorrt package ({INSTALL_HINT})"]
    if not _has_module("cuda.bindings"):
        return [f"cuda-python ({INSTALL_HINT})"]
    if not find_engines(bundle.path):
        return [f"TensorRT engines in {Path(bundle.path) / ENGINE_DIR} (build them: harmony-rt build)"]
    sm = gpu_sm()
    if sm is None:
        return ["an NVIDIA GPU with a working driver (cudaGetDeviceCount found none)"]
    try:
        import tensorrt as trt
    except Exception as e:  # e.g. bindings without libnvinfer
        return [f"a working tensorrt install ({type(e).__name__}: {e}; {INSTALL_HINT})"]
    if not find_engines(bundle.path, sm=sm, trt=trt.__version__):
        return [(f"engines built for this GPU (sm{sm}) and TensorRT {trt_tag(trt.__version__)} "
                 f"in {Path(bundle.path) / ENGINE_DIR} (harmony-rt build)")]
    return []


def tensorrt_available(bundle) -> bool:
    """True when tensorrt + cuda-python import, a GPU is present and the bundle has engines for its SM."""
    try:
        return not missing_requirements(bundle)
    except Exception as e:  # never let a probe break backend selection
        log.debug("TensorRT probe failed: %s", e)
        return False


@dataclass
class _Buffer:
    ptr: int = 0
    nbytes: int = 0


@dataclass
class _Runner:
    """One engine: its execution context, stream, device buffers and captured CUDA graphs (under `lock`)."""

    engine: object
    context: object
    stream: object
    inputs: list[str]
    outputs: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    buffers: dict[str, _Buffer] = field(default_factory=dict)
    graphs: dict[tuple, object] = field(default_factory=dict)  # input shapes -> cudaGraphExec_t
    warm: set = field(default_factory=set)  # input shapes run once since the last reallocation
    uncapturable: set = field(default_factory=set)  # input shapes whose capture failed: plain enqueues only (kept
    # across reallocations: what failed was the engine's enqueue under capture, not its buffers)
    last: tuple | None = None  # input shapes of the context's last enqueue


def _no_graph(r: _Runner, key: tuple, why: str) -> None:
    """Shapes `key` of `r` run as plain enqueues from now on (this run's outputs came from the plain enqueue
    before the capture)."""
    r.uncapturable.add(key)
    log.warning("TensorRT: no CUDA graph for input shapes %s: %s; plain enqueues for them", key, why)


class TensorRTBackend:
    """Runs bundle components with TensorRT engines. Thread-safe: one context per engine behind a lock
    (an execution context must not be enqueued from two threads at once; per-thread contexts would multiply
    activation memory).

    precision: "fp16" | "fp8" | None (None: fp8 engines where built, else fp16, per component).
    cuda_graphs: capture one CUDA graph per input-shape set and replay it (saves launch overhead).
    """

    name = "tensorrt"

    def __init__(self, bundle, precision: str | None = None, cuda_graphs: bool = False,
                 plugin_libraries: list[str] | None = None, device: int = 0, **_ignored):
        missing = missing_requirements(bundle)
        if missing:
            raise HarmonyError("TensorRT backend unavailable: needs " + "; ".join(missing))
        if precision is not None and precision not in PRECISIONS:
            raise HarmonyError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
        import tensorrt as trt

        self._trt = trt
        self._cudart = _cudart()
        self.bundle = bundle
        self.cuda_graphs = cuda_graphs
        self.device = device
        _ok(self._cudart.cudaSetDevice(device))
        self.sm = gpu_sm(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        for lib in plugin_libraries or ():
            trt.get_plugin_registry().load_library(str(lib))
        self._runtime = trt.Runtime(self._logger)
        self.precision = precision
        self._engines = self._pick_engines(precision)
        self._runners: dict[str, _Runner] = {}
        self._lock = threading.Lock()

    def _pick_engines(self, precision: str | None) -> dict[str, Path]:
        trt_version = self._trt.__version__
        if precision is not None:
            return find_engines(self.bundle.path, self.sm, trt_version, precision)
        picked = find_engines(self.bundle.path, self.sm, trt_version, "fp16")
        picked.update(find_engines(self.bundle.path, self.sm, trt_version, "fp8"))
        return picked

    def has(self, component: str) -> bool:
        return component in self._engines

    def _runner(self, component: str) -> _Runner:
        with self._lock:
            r = self._runners.get(component)
            if r is not None:
                return r
            path = self._engines.get(component)
            if path is None:
                raise HarmonyError(f"{self.bundle.path}: no TensorRT engine for {component!r} (sm{self.sm})")
            engine = self._runtime.deserialize_cuda_engine(engine_bytes(path))
            if engine is None:
                raise HarmonyError(f"{path}: TensorRT {self._trt.__version__} could not load this engine; an engine "
                                   "loads only on the TensorRT version and GPU model that built it (rebuild it here: "
                                   "harmony-rt build)")
            trt = self._trt
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            spec = self.bundle.specs[component]
            if sorted(inputs) != sorted(t.name for t in spec.inputs):
                raise HarmonyError(f"{path}: engine inputs {inputs} disagree with the contract")
            stream = _ok(self._cudart.cudaStreamCreateWithFlags(self._cudart.cudaStreamNonBlocking))
            r = _Runner(engine, engine.create_execution_context(), stream, inputs, outputs)
            self._runners[component] = r
            log.info("loaded TensorRT engine %s", path.name)
            return r

    def _ensure(self, r: _Runner, name: str, nbytes: int) -> int:
        buf = r.buffers.setdefault(name, _Buffer())
        if buf.nbytes < nbytes:  # grow-only; recorded graphs hold old addresses, so drop them
            if buf.ptr:
                _ok(self._cudart.cudaFree(buf.ptr))
            buf.ptr, buf.nbytes = int(_ok(self._cudart.cudaMalloc(max(nbytes, 256)))), max(nbytes, 256)
            self._drop_graphs(r)
        return buf.ptr

    def _drop_graphs(self, r: _Runner) -> None:
        for g in r.graphs.values():
            self._cudart.cudaGraphExecDestroy(g)
        r.graphs.clear()
        r.warm.clear()

    def run(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cudart = self._trt, self._cudart
        _ok(cudart.cudaSetDevice(self.device))  # per thread: a caller's thread may be on another device
        r = self._runner(component)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with r.lock:
            host = {}
            for name in r.inputs:
                if name not in feeds:
                    raise HarmonyError(f"{component}: missing input {name!r}")
                host[name] = np.ascontiguousarray(feeds[name], dtype=trt.nptype(r.engine.get_tensor_dtype(name)))
                if not r.context.set_input_shape(name, host[name].shape):
                    raise HarmonyError(f"{component}: input {name} shape {host[name].shape} is outside the engine's "
                                       "optimization profile (rebuild with larger --max-frames / --max-batch)")
            for name, arr in host.items():
                ptr = self._ensure(r, name, arr.nbytes)
                r.context.set_tensor_address(name, ptr)
                _ok(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, r.stream))
            results = {}
            for name in r.outputs:
                shape = tuple(r.context.get_tensor_shape(name))
                results[name] = np.empty(shape, trt.nptype(r.engine.get_tensor_dtype(name)))
                r.context.set_tensor_address(name, self._ensure(r, name, results[name].nbytes))
            self._execute(r, tuple(a.shape for a in host.values()))
            for name, arr in results.items():
                _ok(cudart.cudaMemcpyAsync(arr.ctypes.data, r.buffers[name].ptr, arr.nbytes, d2h, r.stream))
            _ok(cudart.cudaStreamSynchronize(r.stream))
        return {n: a.astype(np.float32) if a.dtype == np.float16 else a for n, a in results.items()}

    def _execute(self, r: _Runner, key: tuple) -> None:
        """Enqueue one run of `r` for input shapes `key`, from a captured CUDA graph where there is one. A graph
        replays only while the context's shapes stay those it was captured with: after other shapes the context
        has been reconfigured, so the first run back is a plain enqueue (as TensorRT asks after any change)."""
        cudart = self._cudart
        graph = r.graphs.get(key)
        if graph is not None and r.last == key:
            _ok(cudart.cudaGraphLaunch(graph, r.stream))
            return
        if not r.context.execute_async_v3(int(r.stream)):
            raise HarmonyError("TensorRT enqueue failed (see the TensorRT log above)")
        r.last = key
        if not self.cuda_graphs or graph is not None or key in r.uncapturable:
            return
        if key not in r.warm:  # TensorRT needs one plain enqueue after a shape change before capture
            r.warm.add(key)
            return
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _ok(cudart.cudaStreamBeginCapture(r.stream, mode))
        try:
            ok = r.context.execute_async_v3(int(r.stream))
        except Exception as e:  # the outputs came from the plain enqueue above: only the capture is lost
            ok = False
            log.debug("TensorRT: enqueue under capture raised %r", e)
        finally:  # the capture ends whatever the enqueue did: the stream must leave capture mode
            err, g = cudart.cudaStreamEndCapture(r.stream)
        if int(err) != 0:  # invalidated (e.g. by a synchronizing call inside the enqueue): no graph was made
            return _no_graph(r, key, f"the capture failed (CUDA error {int(err)}, {getattr(err, 'name', err)})")
        try:
            if not ok:
                return _no_graph(r, key, "the captured enqueue failed")
            err, exe = cudart.cudaGraphInstantiate(g, 0)
            if int(err) != 0:
                return _no_graph(r, key, f"instantiating it failed (CUDA error {int(err)})")
            r.graphs[key] = exe
            log.debug("captured a CUDA graph for shapes %s", key)
        finally:
            _ok(cudart.cudaGraphDestroy(g))

    def close(self) -> None:
        """Free device buffers, graphs and streams (also safe to skip: process exit frees them)."""
        with self._lock:
            for r in self._runners.values():
                with r.lock:
                    self._drop_graphs(r)
                    for b in r.buffers.values():
                        if b.ptr:
                            self._cudart.cudaFree(b.ptr)
                    r.buffers.clear()
                    self._cudart.cudaStreamDestroy(r.stream)
            self._runners.clear()
