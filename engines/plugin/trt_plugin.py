"""TensorRT Python plugin (`tensorrt.plugin`, TensorRT >= 10.8) for RoPEAlignedAttention, AOT-compiled.

`register()` declares `harmony_rt::RoPEAlignedAttention` with a shape/type descriptor, an autotune list
(fp32 and fp16 I/O, several Triton tile configs as tactics) and an `aot_impl` that compiles the Triton
kernel of `triton_kernel.py` to PTX: the engine embeds the PTX, so no Python runs at inference and the
runtime needs neither this module nor Triton.

The ONNX parser maps a node to this plugin when the node's op type is `RoPEAlignedAttention` and it
carries `plugin_namespace="harmony_rt"` and `aot=1` (engines/build.py adds both to a copy of the graph).

AOT constraints honoured here (TensorRT AOT launch ABI): kernel arguments are (inputs..., int32
scalars..., outputs...); Triton's two trailing hidden scratch pointers must be unused (that TensorRT's launch
tolerates them is not documented: NVIDIA's own AOT sample compiles the same way; unverified on a GPU); float
attributes are not passed at run time, so `window` and 1/sqrt(D) are compile-time constants; shared
memory is kept <= 48 KiB (whether TensorRT raises the dynamic shared-memory limit is not documented).

Imports of tensorrt / triton are lazy: this module imports anywhere, `available()` says whether it works.
The `compile_aot` half needs only Triton (not a GPU) and is tested on CPU; the `register` half needs
TensorRT and has NOT been run on the development machines; tests/test_plugin.py checks it against a stand-in
of `tensorrt.plugin` that holds the decorated functions to the documented contract.

No `from __future__ import annotations` here: `tensorrt.plugin` reads the decorated functions' annotations as
objects (`issubclass(annotation, TensorDesc)`, the return types), and string annotations fail its checks.
"""

import importlib.util
import logging
from dataclasses import dataclass

from . import OP_NAME, TRT_PLUGIN_ID, type_combinations

log = logging.getLogger(__name__)

SHARED_MEM_LIMIT = 48 * 1024
KERNEL_INPUTS = ("Q", "K", "V", "COS_Q", "SIN_Q", "COS_K", "SIN_K", "T_Q", "T_K")
KERNEL_SCALARS = ("H", "Lq", "Lk")
KERNEL_OUTPUTS = ("O",)


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# tactic id -> preferred tiles; TensorRT times every tactic at build time and keeps the fastest.
TACTICS: dict[int, TileConfig] = {
    1: TileConfig(64, 64, 4, 2),
    2: TileConfig(64, 32, 4, 2),
    3: TileConfig(128, 32, 8, 2),
}


@dataclass(frozen=True)
class AotKernel:
    """A compiled kernel and what TensorRT needs to launch it."""

    name: str
    ptx: bytes
    arch: int
    tile: TileConfig
    num_warps: int
    shared: int


def available() -> bool:
    """True when tensorrt.plugin and triton are importable (checked without importing them)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "triton")) and (
            importlib.util.find_spec("tensorrt.plugin") is not None
        )
    except Exception:  # finding tensorrt.plugin imports tensorrt, which can fail in many ways
        return False


def kernel_signature(dtype: str) -> dict[str, str]:
    """Triton signature of `rope_attn_fwd` for q/k/v/out of `dtype` ("fp32" | "fp16"), runtime args only."""
    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"unsupported dtype {dtype!r} (fp32 or fp16)")
    sig = {n: f"*{dtype}" if n in ("Q", "K", "V") else "*fp32" for n in KERNEL_INPUTS}
    sig.update({n: "i32" for n in KERNEL_SCALARS})
    sig["O"] = f"*{dtype}"
    return sig


def _fits(tile: TileConfig) -> list[TileConfig]:
    """`tile` then smaller variants to try when shared memory exceeds the limit."""
    out, t = [tile], tile
    while True:
        if t.num_stages > 1:
            t = TileConfig(t.block_m, t.block_n, t.num_warps, 1)
        elif t.block_n > 16:
            t = TileConfig(t.block_m, t.block_n // 2, t.num_warps, t.num_stages)
        elif t.block_m > 16:
            t = TileConfig(t.block_m // 2, t.block_n, max(1, t.num_warps // 2), t.num_stages)
        else:
            return out
        out.append(t)


def compile_aot(head_dim: int, window: float, dtype: str, arch: int | None = None, tactic: int = 1,
                ptx_version: int | None = None) -> AotKernel:
    """Compile the Triton kernel to PTX for sm_`arch` (None: the current GPU). Needs Triton, not a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget

    from .triton_kernel import kernel_constants, rope_attn_fwd

    if tactic not in TACTICS:
        raise ValueError(f"unknown tactic {tactic} (known: {sorted(TACTICS)})")
    target = GPUTarget("cuda", int(arch), 32) if arch is not None else triton.runtime.driver.active.get_current_target()
    sig = kernel_signature(dtype)
    for tile in _fits(TACTICS[tactic]):
        consts = kernel_constants(head_dim, window, dtype == "fp32", tile.block_m, tile.block_n)
        src = triton.compiler.ASTSource(fn=rope_attn_fwd, signature={**sig, **{k: "constexpr" for k in consts}},
                                        constexprs=consts)
        opts = {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
        if ptx_version is not None:
            opts["ptx_version"] = ptx_version
        k = triton.compile(src, target=target, options=opts)
        md = k.metadata
        if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):  # Triton >= 3.3 / 3.4
            raise RuntimeError("Triton kernel needs scratch memory, which TensorRT AOT launches cannot provide")
        if md.num_ctas != 1 or getattr(md, "launch_cooperative_grid", False) or getattr(md, "launch_pdl", False):
            raise RuntimeError("Triton kernel needs a launch feature TensorRT AOT plugins do not support")
        if md.shared <= SHARED_MEM_LIMIT:
            log.debug("RoPEAlignedAttention AOT: D=%d %s sm_%s tactic %d -> %s, %d B shared",
                      head_dim, dtype, target.arch, tactic, tile, md.shared)
            return AotKernel(md.name, k.asm["ptx"].encode(), int(target.arch), tile, md.num_warps, md.shared)
    raise RuntimeError(f"no tile configuration of tactic {tactic} fits {SHARED_MEM_LIMIT} B of shared memory "
                       f"(D={head_dim}, {dtype})")


_registered = False


def register() -> None:
    """Register the plugin with TensorRT's plugin registry (idempotent). Needs tensorrt + triton.

    Never run on the development machines (no TensorRT there).
    """
    global _registered
    if _registered:
        return
    import numpy as np
    import tensorrt as trt
    import tensorrt.plugin as trtp

    @trtp.register(TRT_PLUGIN_ID)
    def _desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, cos_q: trtp.TensorDesc,
              sin_q: trtp.TensorDesc, cos_k: trtp.TensorDesc, sin_k: trtp.TensorDesc, t_q: trtp.TensorDesc,
              t_k: trtp.TensorDesc, window: float) -> trtp.TensorDesc:
        return q.like()  # [N, H, Lq, D], q's dtype

    @trtp.autotune(TRT_PLUGIN_ID)
    def _autotune(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, window: float,
                  outputs) -> list[trtp.AutoTuneCombination]:
        combos = []
        for types in type_combinations():  # q, k, v alike, 4 tables + 2 positions (always FP32), out as q
            c = trtp.AutoTuneCombination(", ".join(types))
            c.tactics(sorted(TACTICS))
            combos.append(c)
        return combos

    @trtp.aot_impl(TRT_PLUGIN_ID)
    def _aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, cos_q: trtp.TensorDesc,
             sin_q: trtp.TensorDesc, cos_k: trtp.TensorDesc, sin_k: trtp.TensorDesc, t_q: trtp.TensorDesc,
             t_k: trtp.TensorDesc, window: float, outputs,
             tactic: int) -> tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        d = q.shape_expr[3]
        if not d.is_constant:
            raise ValueError(f"{OP_NAME}: the head dimension must be static in the graph")
        dtype = "fp16" if q.dtype == trt.float16 else "fp32"
        ker = compile_aot(int(d.constant_value()), float(np.float32(window)), dtype, tactic=int(tactic))
        N, H, Lq, Lk = q.shape_expr[0], q.shape_expr[1], q.shape_expr[2], k.shape_expr[2]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(Lq, ker.tile.block_m)  # q blocks
        launch.grid_y = trtp.SymInt32(N * H)  # one program per (n, h)
        launch.block_x = ker.num_warps * 32
        launch.shared_mem = ker.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (H, Lq, Lk)])
        return ker.name.encode(), ker.ptx, launch, extra

    _registered = True
    log.info("registered TensorRT plugin %s (AOT Triton)", TRT_PLUGIN_ID)
