"""sha256 digests of bundle files, remembered across processes while a file stays unchanged.

`Bundle.load` checks every file against the manifest's sha256. Hashing runs at ~0.5 GB/s here (0.5 s for
the 282 MB bench-large bundle; a 20 GB model would take ~40 s), and every `harmony-rt generate` process
paid it. A digest is reused only while the file's (device, inode, size, mtime, ctime) are those it was
computed under: writing the file, renaming another over it or resetting its mtime with utime all change
its ctime, which user space cannot set back. As git does for its index, a file changed less than
`RACY_S` seconds before it was hashed is not remembered (a same-size rewrite inside the file system's
timestamp granularity could otherwise keep its stamps), nor one that changed while it was being hashed.

Location: `$HARMONY_RT_CACHE/digests.json` (harmony_rt.usercache); `HARMONY_RT_CACHE=off` disables it.
Best effort: an unreadable or unwritable file only means hashing again (logged at debug level).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from .usercache import cache_dir

log = logging.getLogger(__name__)

FILE = "digests.json"
MAX_ENTRIES = 1024  # oldest dropped beyond this
RACY_S = 2.0


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class DigestCache:
    """`sha256(path)` that reuses digests stored in `store` (a JSON file; None: no store, always hash).
    Call `save()` to write what was learned."""

    def __init__(self, store: Path | None):
        self.store = store
        self._entries: dict[str, list] | None = None
        self._added: dict[str, list] = {}
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> "DigestCache":
        d = cache_dir()
        return cls(None if d is None else d / FILE)

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            self._entries = {}
            if self.store is not None:
                try:
                    data = json.loads(self.store.read_text())
                    if isinstance(data, dict):
                        self._entries = data
                except (OSError, ValueError) as e:
                    if not isinstance(e, FileNotFoundError):
                        log.debug("digest cache %s unreadable (%s): hashing again", self.store, e)
        return self._entries

    def sha256(self, path: Path) -> str:
        """The file's sha256 hex digest; from the store when its stamps are unchanged since it was hashed."""
        key = str(Path(path).resolve())
        before = os.stat(path)
        stamp = _stamp(before)
        with self._lock:
            entry = self._load().get(key) if self.store is not None else None
        if isinstance(entry, list) and len(entry) == 6 and entry[:5] == stamp and isinstance(entry[5], str):
            return entry[5]
        digest = sha256_file(path)
        settled = time.time() - max(before.st_mtime, before.st_ctime) >= RACY_S
        if self.store is not None and settled and _stamp(os.stat(path)) == stamp:
            with self._lock:
                entries = self._load()
                entries.pop(key, None)
                entries[key] = self._added[key] = [*stamp, digest]
        return digest

    def save(self) -> None:
        """Write the store (atomically) if `sha256` learned anything; merges with what other processes wrote."""
        if self.store is None or not self._added:
            return
        from .bundle import atomic_write_bytes  # bundle imports this module

        with self._lock:
            self._entries = None
            merged = self._load()
            for k, v in self._added.items():
                merged.pop(k, None)
                merged[k] = v
            while len(merged) > MAX_ENTRIES:
                merged.pop(next(iter(merged)))
            self._added = {}
            try:
                self.store.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(self.store, json.dumps(merged).encode())
            except OSError as e:
                log.debug("digest cache %s not written (%s)", self.store, e)
