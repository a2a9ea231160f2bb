"""End-to-end `generate` on the shipped bundle (or a random tiny one while none is shipped), by stage."""

from __future__ import annotations

from harmony_rt.bench import generate_rows
from harmony_rt.bundle import default_bundle_path


def test_generate_stages(tiny, threads, report):
    path = default_bundle_path()
    label = "default bundle"
    if not (path / "manifest.json").is_file():
        path, label = tiny.bundle_path, "tiny (random init; no default bundle)"
    for row in generate_rows(path, label, 2, threads):
        report(row)
