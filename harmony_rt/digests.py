"""sha256 digests of bundle files, remembered across processes while a file stays unchanged.

A bundle's files are checked against the manifest's sha256 before they are used (harmony_rt.bundle). Hashing a
file runs at 1.1-1.3 GB/s on the AMD dev VM when it is in the page cache and 0.3 GB/s when it is read from
disk (0.2-1 s for the 282 MB bench-large denoiser; a 20 GB model would take 15-70 s), and every `harmony-rt
generate` process paid it. A digest is reused only while the file's (device, inode, size, mtime, ctime) are
those it was computed under: writing the file or resetting its mtime with utime changes its ctime, which user
space cannot set back on local file systems, and a file renamed over it has another inode. As git does for its
index, a file changed less than `RACY_S` seconds before hashing began is not remembered (a same-size rewrite
inside the file system's timestamp granularity could otherwise keep its stamps), nor one whose stamps changed
while it was being hashed. A stored digest that disagrees with the manifest is never trusted: the file is
hashed again before it is refused.

Known limit: where stamps can repeat for different contents (file system images built with fixed mtimes
and inode numbers, some FUSE / network file systems), a file corrupted in a way that keeps every stamp
would pass on a stored digest; there, `HARMONY_RT_CACHE=off` hashes every time.

Location: `$HARMONY_RT_CACHE/digests.json` (harmony_rt.usercache); `HARMONY_RT_CACHE=off` disables it.
Best effort: an unreadable or unwritable file only means hashing again (logged at debug level).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from .usercache import cache_dir, read_store, write_store

FILE = "digests.json"
MAX_ENTRIES = 1024  # least recently used dropped beyond this
RACY_S = 2.0


def _hash(f, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return _hash(f, chunk)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class DigestCache:
    """`sha256(path)` / `matches(path, digest)` that reuse digests stored in `store` (a JSON file; None: no
    store, always hash). Call `save()` to write what was learned."""

    def __init__(self, store: Path | None):
        self.store = store
        self._entries: dict[str, list] | None = None
        self._added: dict[str, list] = {}  # learned here: written by save()
        self._reused: set[str] = set()  # read from the store: moved to its end by save() when in its older half
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> DigestCache:
        d = cache_dir()
        return cls(None if d is None else d / FILE)

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            self._entries = read_store(self.store) if self.store is not None else {}
        return self._entries

    def _digest(self, path: Path, reuse: bool = True) -> tuple[str, bool]:
        """(sha256 hex digest, whether it came from the store). Stamps are taken from the open file (fstat:
        no path swap between stat and read, and fresh attributes on NFS)."""
        key = str(Path(path).resolve())
        now = time.time()
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            stamp = _stamp(before)
            if reuse and self.store is not None:
                with self._lock:
                    entry = self._load().get(key)
                    hit = (isinstance(entry, list) and len(entry) == 6 and entry[:5] == stamp
                           and isinstance(entry[5], str))
                    if hit:
                        self._reused.add(key)
                if hit:
                    return entry[5], True
            digest = _hash(f)
            after = _stamp(os.fstat(f.fileno()))
        settled = now - max(before.st_mtime, before.st_ctime) >= RACY_S
        if self.store is not None and settled and after == stamp:
            with self._lock:
                entries = self._load()
                entries.pop(key, None)
                entries[key] = self._added[key] = [*stamp, digest]
        return digest, False

    def sha256(self, path: Path) -> str:
        """The file's sha256 hex digest; from the store when its stamps are unchanged since it was hashed."""
        return self._digest(path)[0]

    def matches(self, path: Path, expected: str) -> bool:
        """Whether the file's sha256 is `expected`. A stored digest that disagrees is not trusted: the file
        is hashed again (a store can be stale where stamps repeat, e.g. a file system image rebuilt with
        fixed mtimes), so a wrong store never refuses a good file."""
        digest, stored = self._digest(path)
        if digest == expected or not stored:
            return digest == expected
        with self._lock:
            self._reused.discard(str(Path(path).resolve()))
        return self._digest(path, reuse=False)[0] == expected

    def _stale_reuse(self) -> bool:
        """Whether a digest reused here is within MAX_ENTRIES // 2 new entries of being dropped."""
        if not self._reused or self._entries is None:
            return False
        older = list(self._entries)[: max(0, len(self._entries) - MAX_ENTRIES // 2)]
        return not self._reused.isdisjoint(older)

    def save(self) -> None:
        """Write the store (atomically) if `sha256` learned anything, or reused a digest near eviction (so a
        bundle in daily use is not dropped for files hashed since); merges with what other processes wrote.
        Most processes write nothing."""
        if self.store is None:
            return
        with self._lock:
            if not self._added and not self._stale_reuse():
                self._reused.clear()
                return
            merged = read_store(self.store)
            for k in self._reused:  # most recently used last
                if k in merged and k not in self._added:
                    merged[k] = merged.pop(k)
            for k, v in self._added.items():
                merged.pop(k, None)
                merged[k] = v
            self._entries, self._added, self._reused = None, {}, set()
            write_store(self.store, merged, MAX_ENTRIES)
