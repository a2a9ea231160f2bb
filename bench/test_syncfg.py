"""SyncCFG execution: all guidance branches in one batched call vs one call per branch vs auto."""

from __future__ import annotations

from harmony_rt.bench import guidance_rows


def test_guidance_split(model, rounds, threads, report):
    for row in guidance_rows(model.bundle, model.label, max(3, rounds // 2 + 1), threads):
        report(row)
