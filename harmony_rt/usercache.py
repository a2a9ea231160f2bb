"""The runtime's per-user cache folder: guidance split decisions (splitstore) and file digests (digests).

`$HARMONY_RT_CACHE` if set (`off`, `0`, `false`, `no` or empty: no cache; `~` expanded, a relative path
fixed against the folder of its first use), else `$XDG_CACHE_HOME/harmony-rt`,
else `~/.cache/harmony-rt` (none when neither gives an absolute path). Everything kept there is an
optimisation: deleting it only costs measuring or hashing again. `read_store` / `write_store` are the one
way its JSON files are read and written: best effort, bounded, atomic.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MAX_STORE_BYTES = 4 << 20  # a larger file is ignored (and replaced on the next write)
_FIXED: dict[str, Path] = {}  # HARMONY_RT_CACHE values made absolute


def cache_dir() -> Path | None:
    env = os.environ.get("HARMONY_RT_CACHE")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "false", "no"):
            return None
        # "~/x" expanded; a relative path is taken from the folder of its first use, not each later one
        return _FIXED.setdefault(env, Path(env).expanduser().absolute())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):  # no HOME and no passwd entry: "~" stays "~"; never cache in the cwd
        return None
    return Path(base) / "harmony-rt"


def read_store(path: Path) -> dict:
    """The JSON object in cache file `path`; {} when it is missing, not a regular file, larger than
    MAX_STORE_BYTES, or anything but a JSON object (also deeply nested or not UTF-8: logged at debug level)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_STORE_BYTES:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError, MemoryError) as e:  # ValueError: JSON, UTF-8
        log.debug("cache file %s unreadable (%s): starting afresh", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def write_store(path: Path, data: dict, max_entries: int) -> None:
    """Write `data` to cache file `path` atomically, dropping its oldest (first) entries beyond
    `max_entries`; an unwritable folder is logged at debug level, not raised."""
    from .bundle import atomic_write_bytes  # bundle -> digests -> this module

    while len(data) > max_entries:
        data.pop(next(iter(data)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    except OSError as e:
        log.debug("cache file %s not written (%s)", path, e)
