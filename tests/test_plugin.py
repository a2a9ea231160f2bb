"""RoPEAlignedAttention: numpy reference, native CPU core (ctypes), CUDA build, Triton kernel, TRT plugin glue.

GPU / TensorRT parts skip with the hardware or software they need.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.plugin import native
from engines.plugin import reference as ref

ARGS = ("q", "k", "v", "cos_q", "sin_q", "cos_k", "sin_k", "t_q", "t_k")
ARCHS = (80, 89, 90)
# (N, H, Lq, Lk, D, window): no window, window, Lq != Lk both ways, window 0 (rows with no key), D = 2
CASES = [
    (1, 2, 5, 7, 8, -1.0),
    (2, 2, 5, 7, 8, 1.0),
    (1, 3, 20, 33, 16, 0.5),
    (2, 1, 9, 4, 6, 1.5),
    (1, 2, 4, 6, 8, 0.0),
    (1, 1, 3, 5, 2, 2.0),
]


def _case(seed, N, H, Lq, Lk, D):
    return ref.random_case(np.random.default_rng(seed), N=N, H=H, Lq=Lq, Lk=Lk, D=D)


def _loop_oracle(c, window):
    """Independent, loop-by-loop float64 evaluation of the op definition (checks the reference itself)."""
    q, k, v = (np.float64(c[n]) for n in ("q", "k", "v"))
    N, H, Lq, D = q.shape
    Lk, h = k.shape[2], D // 2
    out = np.zeros_like(q)

    def rot(x, cos, sin):
        return np.array([x[d] * cos[d] - x[d + h] * sin[d] for d in range(h)]
                        + [x[d + h] * cos[d] + x[d] * sin[d] for d in range(h)])

    for n in range(N):
        for hh in range(H):
            for i in range(Lq):
                qi = rot(q[n, hh, i], c["cos_q"][i], c["sin_q"][i])
                gap = np.abs(np.float64(c["t_q"][i]) - np.float64(c["t_k"]))
                js = [j for j in range(Lk) if window < 0 or gap[j] <= window + 1e-6]
                if not js:
                    continue
                s = np.array([qi @ rot(k[n, hh, j], c["cos_k"][j], c["sin_k"][j]) / math.sqrt(D) for j in js])
                p = np.exp(s - s.max())
                out[n, hh, i] = (p / p.sum()) @ v[n, hh, js]
    return out


# --- numpy reference -------------------------------------------------------------------------------------

@pytest.mark.parametrize("N,H,Lq,Lk,D,window", CASES)
def test_reference_matches_loop_oracle(N, H, Lq, Lk, D, window):
    c = _case(0, N, H, Lq, Lk, D)
    np.testing.assert_allclose(ref.rope_aligned_attention(**c, window=window), _loop_oracle(c, window), atol=1e-6)


def test_reference_fully_masked_rows_are_zero_not_nan():
    c = _case(1, 1, 2, 4, 6, 8)  # t_q = 0,1,2,3; t_k = 0,.67,1.33,2,2.67,3.33
    out = ref.rope_aligned_attention(**c, window=0.0)
    assert np.isfinite(out).all()
    assert np.all(out[:, :, 1] == 0) and np.all(out[:, :, 3] == 0)  # t_q = 1, 3 have no key at distance 0
    assert np.any(out[:, :, 0] != 0)


def test_reference_rotation_is_relative():
    """With 1D rotary tables, rot(q_i).rot(k_j) depends only on the position difference."""
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 8))
    cq, sq = ref.rope_tables(np.array([3.0, 5.0]), 8)
    ck, sk = ref.rope_tables(np.array([1.0, 3.0]), 8)
    a = ref.rotate_half(q, cq[0], sq[0]) @ ref.rotate_half(k, ck[0], sk[0])
    b = ref.rotate_half(q, cq[1], sq[1]) @ ref.rotate_half(k, ck[1], sk[1])
    assert a == pytest.approx(b, abs=1e-5)


def test_reference_rejects_odd_head_dim():
    c = _case(0, 1, 1, 2, 2, 4)
    c["q"] = c["q"][..., :3]
    with pytest.raises(ValueError):
        ref.rope_aligned_attention(**c)


@pytest.mark.parametrize("window", [-1.0, 0.0, 1.0])
def test_reference_half_is_the_reference_with_fp16_roundings(window):
    """The fp16 emulation (what ORT checks fp16 plugin graphs with) stays within fp16 error of the reference."""
    c = _case(6, 2, 2, 20, 33, 16)
    half = ref.rope_aligned_attention_half(**c, window=window)
    exact = ref.rope_aligned_attention(**c, window=window)
    assert half.dtype == np.float16 and half.shape == exact.shape and np.isfinite(half).all()
    err = np.abs(half.astype(np.float64) - exact).max()
    assert 0 < err < 1e-2, err
    masked = np.all(exact == 0, axis=-1)  # rows with no key in the window
    assert np.all(half[masked] == 0) and (window != 0.0 or masked.any())
    c16 = {**c, **{n: c[n].astype(np.float16) for n in ("q", "k", "v")}}
    np.testing.assert_array_equal(ref.rope_aligned_attention_half(**c16, window=window), half)  # fp16 in: same


def test_type_constraints_are_shared():
    """One statement of the plugin's types (engines/plugin/__init__.py) for the TensorRT autotune list, the
    Triton kernel signature and the graphs export writes."""
    from engines.plugin import INPUTS, N_QKV, trt_plugin, type_combinations

    combos = type_combinations()
    assert combos == [("FP32",) * 10, ("FP16",) * 3 + ("FP32",) * 6 + ("FP16",)]
    assert INPUTS == ARGS and N_QKV == 3
    for combo in combos:
        sig = trt_plugin.kernel_signature(combo[0].lower())
        assert [sig[n][1:].upper() for n in (*trt_plugin.KERNEL_INPUTS, *trt_plugin.KERNEL_OUTPUTS)] == list(combo)
    src = Path(trt_plugin.__file__).read_text()
    assert "type_combinations()" in src  # the autotune list is built from it (register() needs TensorRT)


# --- native build (CPU core, CUDA kernel) ----------------------------------------------------------------

def _have_cxx() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++"))


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake to build the native RoPEAlignedAttention libraries")
    if not _have_cxx():
        pytest.skip("needs a C++ compiler (g++ or clang++) to build the native libraries")
    return native.build_native(tmp_path_factory.mktemp("native_build"))


@pytest.fixture(scope="module")
def cuda_lib(build):
    if build.cuda_lib is None:
        pytest.skip("needs nvcc (CUDA toolkit) to build the CUDA kernel library")
    return native.load(build.cuda_lib)


def test_build_log_says_what_was_left_out(build):
    if build.trt_lib is not None:
        pytest.skip("TensorRT headers present: the IPluginV3 library was built")
    if build.cuda_lib is None:
        assert "nvcc not found: building the CPU reference library only" in build.log
    else:
        assert "TensorRT headers not found: building the CUDA kernel and CPU reference only" in build.log


@pytest.mark.parametrize("N,H,Lq,Lk,D,window", CASES)
def test_native_cpu_matches_reference(build, N, H, Lq, Lk, D, window):
    lib = native.load(build.cpu_lib)
    c = _case(3, N, H, Lq, Lk, D)
    out = native.run_native(lib.harmony_rope_attn_cpu, *(c[n] for n in ARGS), window=window)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref.rope_aligned_attention(**c, window=window), atol=1e-5, rtol=0)


def test_native_cpu_rejects_bad_head_dim(build):
    lib = native.load(build.cpu_lib)
    assert lib.harmony_rope_attn_max_head_dim() == 256
    c = _case(0, 1, 1, 2, 3, 4)
    c["q"], c["k"], c["v"] = (np.zeros((1, 1, n, 3), np.float32) for n in (2, 3, 3))
    with pytest.raises(RuntimeError, match="head dim"):
        native.run_native(lib.harmony_rope_attn_cpu, *(c[n] for n in ARGS))


def test_cuda_library_also_exports_cpu_core(cuda_lib):
    c = _case(4, 1, 2, 5, 7, 8)
    out = native.run_native(cuda_lib.harmony_rope_attn_cpu, *(c[n] for n in ARGS), window=1.0)
    np.testing.assert_allclose(out, ref.rope_aligned_attention(**c, window=1.0), atol=1e-5, rtol=0)


def test_cuda_kernel_compiled_for_sm80_89_90(build, cuda_lib):
    found = native.fatbin_archs(build.cuda_lib)
    assert {sm for kind, sm in found if kind == "elf"} == set(ARCHS), found  # SASS for each target
    assert 90 in {sm for kind, sm in found if kind == "ptx"}  # PTX for JIT on newer GPUs
    nvcc_lines = [line for line in build.log.splitlines() if "nvcc" in line and "harmony_rope_attn.dir/" in line]
    assert len(nvcc_lines) == 1 and all(f"sm_{a}" in nvcc_lines[0] for a in ARCHS), nvcc_lines  # one pass, 3 archs
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:  # cross-check with NVIDIA's tool where installed
        listing = subprocess.run([cuobjdump, "--list-elf", str(build.cuda_lib)], capture_output=True, text=True,
                                 check=False).stdout
        assert all(f"sm_{a}" in listing for a in ARCHS), listing


def test_cuda_device_count_does_not_crash(cuda_lib):
    n = cuda_lib.harmony_cuda_device_count()
    assert isinstance(n, int) and n >= -1


def test_cuda_kernel_matches_reference_on_gpu(cuda_lib):
    if cuda_lib.harmony_cuda_device_count() <= 0:
        pytest.skip("needs an NVIDIA GPU (cudaGetDeviceCount found none)")
    for i, (N, H, Lq, Lk, D, window) in enumerate(CASES + [(2, 4, 130, 257, 128, 1.0)]):
        c = _case(10 + i, N, H, Lq, Lk, D)
        out = native.run_native(cuda_lib.harmony_rope_attn_cuda_host, *(c[n] for n in ARGS), window=window)
        np.testing.assert_allclose(out, ref.rope_aligned_attention(**c, window=window), atol=1e-5, rtol=0)


# --- Triton kernel (each mode in its own process: interpreted and compiled Triton do not mix) -------------

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="needs triton (pip install triton) for the Triton kernel")
REPO = Path(__file__).resolve().parents[1]
TRITON_CASES = CASES + [(1, 2, 40, 70, 32, 1.0)]


def _triton_check(*args: str, interpret: bool, timeout: float = 300):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    p = subprocess.run([sys.executable, "-m", "engines.plugin.triton_check", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def interp_results():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch (CPU) for the Triton interpreter")
    # 16-wide tiles so several q and k blocks (and partly masked tail blocks) are exercised
    fp32 = _triton_check("run", "--cases", json.dumps(TRITON_CASES), "--block", "16", interpret=True)
    fp16 = _triton_check("run", "--cases", json.dumps(TRITON_CASES[:3]), "--dtype", "fp16", interpret=True)
    return fp32, fp16


@needs_triton
@pytest.mark.parametrize("i", range(len(TRITON_CASES)), ids=[str(c) for c in TRITON_CASES])
def test_triton_interpreter_matches_reference(interp_results, i):
    r = interp_results[0][i]
    assert r["case"] == list(TRITON_CASES[i]) and r["finite"]
    assert r["max_err"] < 1e-4, r


@needs_triton
def test_triton_interpreter_fp16(interp_results):
    for r in interp_results[1]:
        assert r["dtype"] == "torch.float16" and r["finite"] and r["max_err"] < 1e-2, r


@needs_triton
def test_triton_kernel_on_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU and a CUDA build of torch to run the compiled Triton kernel")
    for r in _triton_check("run", "--cases", json.dumps(TRITON_CASES), "--device", "cuda", "--block", "64",
                           interpret=False):
        assert r["finite"] and r["max_err"] < 1e-4, r


@needs_triton
@pytest.mark.parametrize("dtype,head_dim", [("fp16", 64), ("fp16", 128), ("fp32", 64)])
def test_triton_aot_compiles_to_ptx_for_each_arch(dtype, head_dim):
    """The aot_impl half of the TensorRT plugin: PTX with the AOT launch ABI; compiling needs no GPU."""
    from engines.plugin import trt_plugin

    arch_args = [a for arch in ARCHS for a in ("--arch", str(arch))]
    infos = _triton_check("aot", "--head-dim", str(head_dim), "--dtype", dtype, *arch_args, interpret=False)
    for arch, info in zip(ARCHS, infos, strict=True):
        assert info["target"].startswith(f"sm_{arch}"), info
        # 9 input pointers, 3 int32 scalars, 1 output pointer, then Triton's 2 hidden scratch pointers
        assert info["params"] == ["u64"] * 9 + ["u32"] * 3 + ["u64"] * 3, info
        assert info["shared"] <= trt_plugin.SHARED_MEM_LIMIT


def test_trt_plugin_module_imports_without_tensorrt():
    from engines.plugin import trt_plugin

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: availability is not False by construction")
    assert trt_plugin.available() is False
    assert trt_plugin.kernel_signature("fp16")["Q"] == "*fp16"
    assert list(trt_plugin.kernel_signature("fp32"))[-1] == "O"
    with pytest.raises(ImportError):
        trt_plugin.register()


class _Dim(int):
    """A static dimension as tensorrt.plugin's shape expressions show it (`is_constant`, `constant_value()`)."""

    is_constant = True

    def constant_value(self):
        return int(self)


def _stand_in_tensorrt():
    """`tensorrt` + `tensorrt.plugin` as far as register() uses them: the decorators keep each function."""
    import types

    trt, trtp = types.ModuleType("tensorrt"), types.ModuleType("tensorrt.plugin")
    trt.float16, trt.float32, trt.plugin = "float16", "float32", trtp

    class TensorDesc:
        def __init__(self, shape=(), dtype="float32"):
            self.shape_expr, self.dtype = [_Dim(d) for d in shape], dtype

        def like(self):
            return TensorDesc(self.shape_expr, self.dtype)

    class AutoTuneCombination:
        def __init__(self, io_types):
            self.io_types, self.ids = io_types, []

        def tactics(self, ids):
            self.ids = list(ids)

    class SymExprs(tuple):
        pass

    class SymIntExprs(SymExprs):
        @classmethod
        def from_tuple(cls, items):
            return cls(items)

    trtp.TensorDesc, trtp.AutoTuneCombination, trtp.SymExprs, trtp.SymIntExprs = (
        TensorDesc, AutoTuneCombination, SymExprs, SymIntExprs)
    trtp.KernelLaunchParams = type("KernelLaunchParams", (), {})
    trtp.SymInt32 = int
    trtp.cdiv = lambda a, b: -(-a // b)
    trtp.kept = {}
    for kind in ("register", "autotune", "aot_impl"):
        setattr(trtp, kind, lambda pid, kind=kind: lambda f: trtp.kept.setdefault((kind, pid), f))
    return trt, trtp


def _is_str_or_bytes(a):
    import types
    import typing

    if typing.get_origin(a) in (typing.Union, types.UnionType):
        return all(x in (str, bytes) for x in typing.get_args(a))
    return a in (str, bytes)


def test_trt_plugin_functions_meet_the_tensorrt_plugin_contract(monkeypatch):
    """register() against a stand-in of tensorrt.plugin, holding each decorated function to what the real
    decorators check (TensorRT's tensorrt/plugin/_validate.py): annotations are objects, not strings (a module
    with `from __future__ import annotations` fails `issubclass(annotation, TensorDesc)`), the tensors then
    the attributes in the registered order, an autotune return of list[AutoTuneCombination], an aot_impl
    return of (str | bytes, str | bytes, KernelLaunchParams, SymExprs); then runs them on a [2, 8, 100, 64]
    query against 300 keys (the kernel's compile replaced: it needs a GPU to pick its target)."""
    import inspect
    import typing

    from engines.plugin import INPUTS, TRT_PLUGIN_ID, trt_plugin, type_combinations

    trt, trtp = _stand_in_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(trt_plugin, "_registered", False)
    compiled = []

    def compile_aot(head_dim, window, dtype, tactic):
        compiled.append((head_dim, window, dtype, tactic))
        return trt_plugin.AotKernel("rope_attn_fwd", b"// ptx", 90, trt_plugin.TACTICS[tactic], 4, 1024)

    monkeypatch.setattr(trt_plugin, "compile_aot", compile_aot)
    trt_plugin.register()
    desc, tune, aot = (trtp.kept[(k, TRT_PLUGIN_ID)] for k in ("register", "autotune", "aot_impl"))

    sig = inspect.signature(desc)
    assert tuple(sig.parameters) == (*INPUTS, "window")
    for name, p in sig.parameters.items():
        assert p.annotation is (float if name == "window" else trtp.TensorDesc), (name, p.annotation)
    assert sig.return_annotation is trtp.TensorDesc
    sig = inspect.signature(tune)
    assert tuple(sig.parameters) == (*INPUTS, "window", "outputs")
    assert sig.parameters["window"].annotation is float
    assert typing.get_origin(sig.return_annotation) is list
    assert all(issubclass(a, trtp.AutoTuneCombination) for a in typing.get_args(sig.return_annotation))
    sig = inspect.signature(aot)
    assert tuple(sig.parameters) == (*INPUTS, "window", "outputs", "tactic")
    assert sig.parameters["window"].annotation is float and sig.parameters["tactic"].annotation is int
    assert all(p.annotation is trtp.TensorDesc for n, p in sig.parameters.items() if n in INPUTS)
    ret = typing.get_args(sig.return_annotation)
    assert typing.get_origin(sig.return_annotation) is tuple and len(ret) == 4, sig.return_annotation
    assert _is_str_or_bytes(ret[0]) and _is_str_or_bytes(ret[1])
    assert issubclass(ret[2], trtp.KernelLaunchParams) and issubclass(ret[3], trtp.SymExprs)

    q, k = trtp.TensorDesc((2, 8, 100, 64), "float16"), trtp.TensorDesc((2, 8, 300, 64), "float16")
    tables = [trtp.TensorDesc((300, 64))] * 6
    assert desc(q, k, k, *tables, 1.0).shape_expr == [2, 8, 100, 64]
    combos = tune(q, k, k, *tables, 1.0, [q])
    assert [c.io_types for c in combos] == [", ".join(t) for t in type_combinations()]
    assert all(c.ids == sorted(trt_plugin.TACTICS) for c in combos)
    name, ptx, launch, extra = aot(q, k, k, *tables, 1.0, [q], 3)
    assert compiled == [(64, 1.0, "fp16", 3)] and (name, ptx) == (b"rope_attn_fwd", b"// ptx")
    block_m = trt_plugin.TACTICS[3].block_m
    assert (launch.grid_x, launch.grid_y, launch.block_x) == (-(-100 // block_m), 16, 128)
    assert launch.shared_mem == 1024 and tuple(extra) == (8, 100, 300) and isinstance(extra, trtp.SymIntExprs)
    trt_plugin.register()  # idempotent: nothing registered twice
    assert len(trtp.kept) == 3


def _plugin_graph(c, window):
    """A one-node ONNX graph: the custom op, marked for TensorRT's parser as engines/build.py does; q, k, v and
    the output take c["q"]'s type (fp32 or fp16), the tables are fp32."""
    from onnx import TensorProto, helper

    from engines import graphs
    from engines.plugin import OP_DOMAIN, OP_NAME

    act = TensorProto.FLOAT16 if c["q"].dtype == np.float16 else TensorProto.FLOAT
    node = helper.make_node(OP_NAME, list(ARGS), ["out"], domain=OP_DOMAIN, window=float(window))
    ins = [helper.make_tensor_value_info(n, act if n in ("q", "k", "v") else TensorProto.FLOAT, c[n].shape)
           for n in ARGS]
    out = helper.make_tensor_value_info("out", act, c["q"].shape)
    model = helper.make_model(helper.make_graph([node], "g", ins, [out]),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(OP_DOMAIN, 1)])
    graphs.mark_plugin_nodes(model, aot=True)
    return model


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_trt_plugin_engine_matches_reference(dtype):
    """Parse -> build (AOT Triton inside the engine) -> run, against the reference (fp16: q, k, v, out in fp16,
    tables fp32, the fp16-plugin graph's types). Needs the full GPU stack."""
    from engines.plugin import trt_plugin
    from harmony_rt.backends import tensorrt as rt

    if not trt_plugin.available():
        pytest.skip("needs TensorRT >= 10.8 (tensorrt.plugin) and triton: pip install tensorrt-cu13 triton")
    if rt.gpu_sm() is None:
        pytest.skip("needs an NVIDIA GPU and cuda-python (pip install cuda-python)")
    import tensorrt as trt

    trt_plugin.register()
    trt_plugin.register()  # idempotent
    cudart = rt._cudart()
    c, window = _case(20, 2, 2, 37, 61, 64), 1.0
    if dtype == "fp16":
        c.update({n: c[n].astype(np.float16) for n in ("q", "k", "v")})
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(_plugin_graph(c, window).SerializeToString())
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    ctx = engine.create_execution_context()
    out = np.empty_like(c["q"])
    ptrs = []
    try:
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, arr in [*((n, np.ascontiguousarray(c[n])) for n in ARGS), ("out", out)]:
            ptr = rt._ok(cudart.cudaMalloc(arr.nbytes))
            ptrs.append(ptr)
            ctx.set_tensor_address(name, int(ptr))
            if name != "out":
                rt._ok(cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, h2d))
        assert ctx.execute_async_v3(0)
        rt._ok(cudart.cudaDeviceSynchronize())
        rt._ok(cudart.cudaMemcpy(out.ctypes.data, ptrs[-1], out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
    finally:
        for ptr in ptrs:
            cudart.cudaFree(ptr)
    if dtype == "fp16":
        assert out.dtype == np.float16
        np.testing.assert_allclose(out.astype(np.float32), ref.rope_aligned_attention_half(**c, window=window),
                                   atol=1e-2, rtol=0)
    else:
        np.testing.assert_allclose(out, ref.rope_aligned_attention(**c, window=window), atol=1e-4, rtol=0)
