"""ORT idle-thread policy vs machine load: one denoiser step with no spinning (the runtime's choice on a busy machine),
spinning bounded to 200 us, and ORT's default spinning, with 0, 1 and 2 CPU-bound processes beside.

    python -m bench.spin_matrix --bundle DIR [--bundle DIR ...] [--rounds 20] [--threads 2]

All sessions keep denormals flushed (the runtime's other setting), so they compare in one process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from harmony_rt.bench import OrtStep, Row, denoiser_feeds, format_table, interleave, med, speedup
from harmony_rt.bundle import Bundle, default_bundle_path
from harmony_rt.cpuload import choose_spinning, other_load

VARIANTS = {"no spinning": {"spinning": False}, "spinning at most 200 us": {"spin_us": 200},
            "spinning (ORT default)": {"spinning": True}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    steps = {}
    for path in a.bundle or [default_bundle_path()]:
        b = Bundle.load(path, verify=False)
        f = denoiser_feeds(b)
        steps[path.name] = {k: OrtStep(b, f, a.threads, **v) for k, v in VARIANTS.items()}
    rows = []
    for busy in (0, 1, 2):
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        time.sleep(1.0)
        try:
            load = other_load(0.2)
            auto = "spins" if choose_spinning(a.threads, load=lambda x=load: x) else "sleeps"
            for name, cands in steps.items():
                t = interleave({k: s.run for k, s in cands.items()}, rounds=a.rounds)
                for k in list(VARIANTS)[1:]:
                    rows.append(Row(f"{name}, {busy} busy process(es) beside", "no spinning", med(t["no spinning"]),
                                    baseline=k, base_value=med(t[k]), ratio=speedup(t["no spinning"], t[k]),
                                    note=f"other load {load:.1f} cores: the runtime {auto}"))
        finally:
            for p in procs:
                p.kill()
                p.wait()
        time.sleep(1.0)
    print(format_table(rows))


if __name__ == "__main__":
    main()
