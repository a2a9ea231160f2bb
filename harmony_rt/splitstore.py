"""Guidance split decisions kept on disk, so a new process does not measure them again.

`GuidedDenoiser` measures batched vs sequential on a shape's first real steps (harmony_rt.guidance); that
costs 1-3 % of a Pipeline's first generation of the shape (bench/RESULTS.md), which every `harmony-rt
generate` process would pay. The store keeps each decision under a key of everything it depends on: the
denoiser graph (sha256), backend, providers, precision, threads, the CPU, the onnxruntime version, the
guidance mode and the input shapes. A stale decision costs at most the gap between the two splits, and
deleting the file (or a new runtime version) measures again.

Location: `$HARMONY_RT_CACHE/guidance-splits.json` (harmony_rt.usercache); `HARMONY_RT_CACHE=off` disables
it. Best effort: an unreadable or unwritable file only means measuring again (logged at debug level);
writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
from pathlib import Path

from .usercache import cache_dir, read_store, write_store

FILE = "guidance-splits.json"
MAX_ENTRIES = 256  # oldest dropped beyond this


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


class SplitStore:
    """get / put of split decisions for one (graph, backend, settings) context."""

    def __init__(self, path: Path, context: dict):
        self.path = Path(path)
        self.context = {**context, "cpu": cpu_model() or platform.processor() or platform.machine(),
                        "cores": os.cpu_count()}
        self._lock = threading.Lock()

    @classmethod
    def default(cls, context: dict) -> "SplitStore | None":
        d = cache_dir()
        return None if d is None else cls(d / FILE, context)

    def _key(self, key: tuple) -> str:
        text = json.dumps([self.context, repr(key)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: tuple) -> str | None:
        entry = read_store(self.path).get(self._key(key))
        split = entry.get("split") if isinstance(entry, dict) else None
        return split if split in ("batched", "sequential") else None

    def put(self, key: tuple, split: str, seconds: dict[str, float]) -> None:
        with self._lock:
            data = read_store(self.path)
            data.pop(self._key(key), None)
            data[self._key(key)] = {"split": split, **{f"{k}_s": round(v, 6) for k, v in seconds.items()}}
            write_store(self.path, data, MAX_ENTRIES)
