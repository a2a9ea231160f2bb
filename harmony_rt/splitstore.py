"""Guidance split decisions kept on disk, so a new process does not measure them again.

`GuidedDenoiser` measures batched vs sequential on a shape's first real steps (harmony_rt.guidance); that
costs 1-3 % of a Pipeline's first generation of the shape (bench/RESULTS.md), which every `harmony-rt
generate` process would pay. The store keeps each decision under a key of everything it depends on: the
denoiser graph (sha256), backend, providers, precision, threads, the CPU, the onnxruntime version, the
guidance mode and the input shapes. A stale decision costs at most the gap between the two splits, and
deleting the file (or a new runtime version) measures again.

Location: `$HARMONY_RT_CACHE/guidance-splits.json` (harmony_rt.usercache); `HARMONY_RT_CACHE=off` disables
it. Best effort: an unreadable or unwritable file only means measuring again (logged at debug level);
writes are atomic. A put re-reads the file and merges its entry under an exclusive flock on
`guidance-splits.json.lock` beside it, so processes putting at once keep each other's entries; readers
take no lock. Where no lock can be had (no flock on the filesystem, held past LOCK_WAIT_S) it goes
ahead unlocked, as before: logged at debug level, never raised.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: puts are unlocked
    fcntl = None

from .usercache import cache_dir, read_store, write_store

FILE = "guidance-splits.json"
MAX_ENTRIES = 256  # oldest dropped beyond this
LOCK_WAIT_S = 10.0  # a put waits this long for another process's put, then goes ahead unlocked

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<path>.lock` for the block (other processes' puts wait); where none can be
    had the block runs unlocked, logged at debug level. The lock file stays: removing it would let two
    processes lock different files."""
    lock = path.with_name(path.name + ".lock")
    fd = None
    try:
        if fcntl is None:
            raise OSError(errno.ENOSYS, "no fcntl.flock on this platform")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        deadline, pause = time.monotonic() + LOCK_WAIT_S, 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # another process's put: its read-merge-write takes milliseconds
                if time.monotonic() >= deadline:
                    raise OSError(errno.ETIMEDOUT, f"still held by another process after {LOCK_WAIT_S:g} s")
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
    except OSError as e:
        log.debug("cache file %s: no lock on %s (%s): writing unlocked", path, lock, e)
        if fd is not None:
            os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the flock


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
        with self._lock, _file_lock(self.path):  # re-read under the lock: merge, never drop, others' puts
            data = read_store(self.path)
            data.pop(self._key(key), None)
            data[self._key(key)] = {"split": split, **{f"{k}_s": round(v, 6) for k, v in seconds.items()}}
            write_store(self.path, data, MAX_ENTRIES)
