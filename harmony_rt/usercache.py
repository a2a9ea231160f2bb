"""The runtime's per-user cache folder: guidance split decisions (splitstore) and file digests (digests).

`$HARMONY_RT_CACHE` if set (`off`, `0`, `false`, `no` or empty: no cache), else `$XDG_CACHE_HOME/harmony-rt`,
else `~/.cache/harmony-rt` (none when neither gives an absolute path). Everything kept there is an
optimisation: deleting it only costs measuring or hashing again.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    env = os.environ.get("HARMONY_RT_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "false", "no") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):  # no HOME and no passwd entry: "~" stays "~"; never cache in the cwd
        return None
    return Path(base) / "harmony-rt"
