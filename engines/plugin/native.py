"""Build and load the native RoPEAlignedAttention libraries (CMakeLists.txt at the repo root) with ctypes."""

from __future__ import annotations

import ctypes
import logging
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_LIB = "harmony_rope_attn_cpu"
CUDA_LIB = "harmony_rope_attn"
TRT_LIB = "harmony_rope_attn_trt"
STATUS = {0: "ok", 1: "head dim must be even, 2..256", 2: "sizes must be positive", 3: "unsupported dtype"}

_FATBIN_MAGIC = 0xBA55ED50
_FLOAT_P = ctypes.POINTER(ctypes.c_float)


@dataclass
class NativeBuild:
    """Where a CMake build went and what it produced (paths are None when a target was not built)."""

    build_dir: Path
    log: str
    cpu_lib: Path | None
    cuda_lib: Path | None
    trt_lib: Path | None


def lib_file(build_dir: Path, target: str) -> Path | None:
    for name in (f"lib{target}.so", f"lib{target}.dylib", f"{target}.dll"):
        p = Path(build_dir) / name
        if p.is_file():
            return p
    return None


def build_native(build_dir: Path, source_dir: Path = REPO_ROOT, jobs: int = 2, timeout: float = 300) -> NativeBuild:
    """Configure + build the native targets; raise RuntimeError with the log tail on failure."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise FileNotFoundError("cmake not found")
    build_dir = Path(build_dir)
    logs = []
    for cmd in (
        [cmake, "-S", str(source_dir), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"],
        [cmake, "--build", str(build_dir), "-j", str(jobs), "--verbose"],
    ):
        log.info("running %s", " ".join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        logs.append(p.stdout + p.stderr)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{''.join(logs)[-4000:]}")
    return NativeBuild(build_dir, "".join(logs), lib_file(build_dir, CPU_LIB), lib_file(build_dir, CUDA_LIB),
                       lib_file(build_dir, TRT_LIB))


def load(path: Path) -> ctypes.CDLL:
    """Load a built library and declare the argument types of the symbols it exports."""
    lib = ctypes.CDLL(str(path))
    f, i, fp = ctypes.c_float, ctypes.c_int, _FLOAT_P
    row_args = [fp] * 10 + [i] * 5 + [f]
    for name in ("harmony_rope_attn_cpu", "harmony_rope_attn_cuda_host"):
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = row_args, i
    if hasattr(lib, "harmony_cuda_device_count"):
        lib.harmony_cuda_device_count.argtypes, lib.harmony_cuda_device_count.restype = [], i
    return lib


def run_native(fn, q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, window: float = -1.0) -> np.ndarray:
    """Call `harmony_rope_attn_cpu` / `harmony_rope_attn_cuda_host` on numpy arrays; return out [N,H,Lq,D]."""
    arrs = [np.ascontiguousarray(a, np.float32) for a in (q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k)]
    N, H, Lq, D = arrs[0].shape
    Lk = arrs[1].shape[2]
    out = np.empty((N, H, Lq, D), np.float32)
    ptrs = [a.ctypes.data_as(_FLOAT_P) for a in arrs + [out]]
    status = fn(*ptrs, N, H, Lq, Lk, D, float(window))
    if status != 0:
        raise RuntimeError(f"native RoPEAlignedAttention failed: {STATUS.get(status, f'CUDA error {status - 1000}')}")
    return out


def fatbin_archs(path: Path) -> list[tuple[str, int]]:
    """(kind, sm) of every image in the CUDA fat binaries embedded in a library: kind "elf" (SASS) or "ptx".

    Reads the fatbin container headers directly (what `cuobjdump --list-elf/--list-ptx` lists), so no
    CUDA tool is needed.
    """
    data = Path(path).read_bytes()
    found, off = [], 0
    while (off := data.find(struct.pack("<I", _FATBIN_MAGIC), off)) >= 0:
        _, version, hsize, fsize = struct.unpack_from("<IHHQ", data, off)
        if version != 1 or hsize != 16 or off + hsize + fsize > len(data):
            off += 4
            continue
        p, end = off + hsize, off + hsize + fsize
        while p + 32 <= end:
            kind, _, ehsize, psize = struct.unpack_from("<HHIQ", data, p)
            sm = struct.unpack_from("<I", data, p + 28)[0]
            if kind in (1, 2):
                found.append(("ptx" if kind == 1 else "elf", sm))
            if ehsize == 0:
                break
            p += ehsize + psize
        off = end
    return found
