"""Render a `pytest bench/ --bench-json FILE` run as markdown, or put it into RESULTS.md in place.

    python -m bench.results run.json                      # print the section
    python -m bench.results run.json --update bench/RESULTS.md [--section busy]

The section between the `<!-- bench:begin -->` / `<!-- bench:end -->` markers (`bench:busy:begin` ... with
--section busy) is replaced; the hand-written text around it stays.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from harmony_rt.bench import Row, format_table


def markers(section: str = "") -> tuple[str, str]:
    name = f"bench:{section}:" if section else "bench:"
    return f"<!-- {name}begin -->", f"<!-- {name}end -->"


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")


def render(run: dict, command: str, section: str = "") -> str:
    info = run["info"]
    m = info["machine"]
    rows = [Row(**r) for r in run["rows"]]
    begin, end = markers(section)
    lines = [
        begin,
        f"Machine: {lscpu_model() or m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, "
        f"numpy {m['numpy']}, Python {m['python']}.",
        f"Load average (1, 5, 15 min) at start {m['load']}, at end {m.get('load_after')}; other processes' load at "
        f"start {m.get('other_load', 'n/a')} cores (the runtime's threads spin only where that leaves them their "
        "cores, harmony_rt.cpuload); "
        f"{m.get('busy_processes', 0)} CPU-bound process(es) started beside the benchmarks (--bench-busy).",
        f"Highest numpy fp32 matmul peak (2048^3, {m.get('threads', 'n/a')} threads) seen in this run: "
        f"{info.get('matmul_peak_gflops', 'n/a')} GFLOP/s.",
        f"Command: `{command}`",
        "",
        format_table(rows),
        end,
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--update", default=None, help="RESULTS.md to update in place")
    ap.add_argument("--command", default="pytest bench/ --bench-json run.json", help="the command that made the run")
    ap.add_argument("--section", default="", help="which marked section of the file to replace")
    a = ap.parse_args(argv)
    section = render(json.loads(Path(a.run).read_text()), a.command, a.section)
    begin, end = markers(a.section)
    if a.update is None:
        sys.stdout.write(section + "\n")
        return
    path = Path(a.update)
    text = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + section + tail)


if __name__ == "__main__":
    main()
