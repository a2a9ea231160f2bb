"""Where a denoiser step's time goes, by model source line: ORT's profiler joined with the exporter's
per-node stack traces (`pkg.torch.onnx.stack_trace` metadata). Nodes ORT fused or created have no trace
and are grouped by op type."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import onnx

from harmony_rt.bench import OrtStep

_FRAME = re.compile(r'File "[^"]*/(\w+\.py)", line (\d+), in (\w+)\n\s*(.*)')


def source_lines(path: Path) -> dict[str, str]:
    """node name -> 'file.py:line code' of the innermost model frame that made it."""
    m = onnx.load(str(path), load_external_data=False)
    out = {}
    for n in m.graph.node:
        md = {p.key: p.value for p in n.metadata_props}
        frames = _FRAME.findall(md.get("pkg.torch.onnx.stack_trace", ""))
        if frames:
            f, line, _, code = frames[-1]
            out[n.name] = f"{f}:{line} {code.strip()[:50]}"
    return out


def time_by_line(step: OrtStep, path: Path, runs: int = 3) -> list[tuple[str, float]]:
    """[(source line, share of kernel time)] over the last runs-1 profiled runs of `step` (made with profile=...)."""
    where = source_lines(path)
    for _ in range(runs):
        step.run()
    prof = Path(step.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink(missing_ok=True)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in runs[1:]]
    acc: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if any(a <= e["ts"] <= b for a, b in spans):
            name = e["name"][: -len("_kernel_time")]
            acc[where.get(name, f"(fused by ORT) {e['args'].get('op_name', '?')}")] += e["dur"]
    total = sum(acc.values()) or 1
    return [(k, v / total) for k, v in acc.most_common()]
