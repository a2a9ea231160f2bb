"""Render a `pytest bench/ --bench-json FILE` run as markdown, or put it into RESULTS.md in place.

    python -m bench.results run.json                      # print the section
    python -m bench.results run.json --update bench/RESULTS.md [--section busy]

The section between the `<!-- bench:begin -->` / `<!-- bench:end -->` markers (`bench:busy:begin` ... with
--section busy) is replaced; the hand-written text around it stays.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harmony_rt.bench import Row, format_table


def markers(section: str = "") -> tuple[str, str]:
    name = f"bench:{section}:" if section else "bench:"
    return f"<!-- {name}begin -->", f"<!-- {name}end -->"


def load_run(path: str) -> dict:
    """A `pytest bench/ --bench-json` file, or SystemExit(2) with one line saying what it is instead."""
    try:
        run = json.loads(Path(path).read_text())
        m = run["info"]["machine"]
        rows = run["rows"]
    except OSError as e:
        raise SystemExit(f"error: cannot read {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path}: not a benchmark run ({type(e).__name__}: {e})") from None
    if "threads" not in m or "options" in run["info"]:  # harmony-rt bench --json: no torch rows, no peak header
        raise SystemExit(f"error: {path} was written by `harmony-rt bench --json`, which prints its own table; "
                         "this renders `pytest bench/ --bench-json` runs")
    if not isinstance(rows, list):
        raise SystemExit(f"error: {path}: not a benchmark run (rows is not a list)")
    return run


def render(run: dict, command: str, section: str = "") -> str:
    info = run["info"]
    m = info["machine"]
    rows = [Row(**{k: float("nan") if v is None else v for k, v in r.items()}) for r in run["rows"]]
    begin, end = markers(section)
    lines = [
        begin,
        f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, "
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
    section = render(load_run(a.run), a.command, a.section)
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
