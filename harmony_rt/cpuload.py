"""How busy the CPUs are with other processes, right now: decides ONNX Runtime's idle-thread policy.

ORT's pool threads spin (busy-wait) between parallel regions by default. Measured on two 2-core VMs
(bench/spin_matrix.py, bench/RESULTS.md): with another CPU-bound process beside, spinning made a denoiser
step 1.5-1.9x slower; on an idle machine it made the demo model's step 1.2x (Intel) to 1.5x (AMD) faster.
So the runtime spins only where it has the cores to itself, judged from a short sample of /proc/stat.
"""

from __future__ import annotations

import logging
import os
import time

from .errors import HarmonyError

log = logging.getLogger(__name__)

ENV = "HARMONY_RT_SPINNING"  # on | off | auto (default)


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot, summed over CPUs (None without /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]  # steal counts: on a VM it is another guest using our core
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def other_load(window: float = 0.04, sleep=time.sleep) -> float | None:
    """Cores' worth of CPU that other processes used over the next `window` seconds (0.0 = nothing else
    runs, 1.0 = one core busy elsewhere); this process's own threads are subtracted. None where the OS
    does not say (no /proc/stat). Resolution is the kernel's tick (10 ms per CPU): enough to tell an idle
    machine from one with a CPU-bound neighbour."""
    b0, o0, w0 = _busy_seconds(), _own_seconds(), time.perf_counter()
    if b0 is None:
        return None
    sleep(window)
    b1, o1, w1 = _busy_seconds(), _own_seconds(), time.perf_counter()
    if b1 is None:
        return None
    return max(0.0, (b1 - b0) - (o1 - o0)) / max(w1 - w0, 1e-3)


def env_override() -> bool | None:
    """`HARMONY_RT_SPINNING`: True (on), False (off) or None (auto / unset); HarmonyError for anything else."""
    env = os.environ.get(ENV, "auto").strip().lower()
    if env in ("1", "on", "true", "yes"):
        return True
    if env in ("0", "off", "false", "no"):
        return False
    if env not in ("", "auto"):
        raise HarmonyError(f"{ENV}={env!r}: use on, off or auto")
    return None


def choose_spinning(threads: int | None, cores: int | None = None, load=other_load) -> bool:
    """Spin when the cores our threads need are free: other processes' load at most the cores our pool
    leaves unused (threads None = ORT's default, one per core), with half a core of slack for noise.
    `HARMONY_RT_SPINNING=on|off` overrides the measurement."""
    forced = env_override()
    if forced is not None:
        return forced
    cores = cores or os.cpu_count() or 1
    used = min(threads or cores, cores)
    busy = load()
    if busy is None:
        log.debug("no CPU load reading; ORT threads will not spin")
        return False
    spin = busy <= max(0.5, cores - used - 0.5)
    log.info("other processes use %.1f of %d cores: ORT pool threads %s", busy, cores,
             "spin between tasks" if spin else "sleep between tasks")
    return spin
