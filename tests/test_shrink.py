"""export.shrink: the shipped-bundle step (fp16-stored weights, fp32 compute) keeps outputs and verifies."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")

from export.shrink import FP16_STORAGE_TOLERANCE, _example_feeds, shrink_bundle  # noqa: E402
from harmony_rt.bundle import Bundle  # noqa: E402


def test_shrink_stores_fp16_weights_within_tolerance(tiny_bundle, tmp_path):
    import onnxruntime as ort

    out = shrink_bundle(tiny_bundle, tmp_path / "small")
    manifest = json.loads((out / "manifest.json").read_text())
    src = Bundle.load(tiny_bundle)
    small = Bundle.load(out).verify_all()  # every sha256
    for name, comp in manifest["components"].items():
        assert comp["weight_storage"] == "fp16" and comp["weight_storage_max_abs_err"] <= FP16_STORAGE_TOLERANCE
        assert "variants" not in comp
        a, b = src.component_path(name), small.component_path(name)
        assert b.stat().st_size < a.stat().st_size
        feeds = _example_feeds(src, name, seed=3)  # other inputs than the check inside shrink used
        ra = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"]).run(None, feeds)
        rb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"]).run(None, feeds)
        for x, y in zip(ra, rb):
            assert x.shape == y.shape and np.all(np.isfinite(y))
            assert float(np.abs(x - y).max()) <= FP16_STORAGE_TOLERANCE, name


def test_shrink_never_replaces_a_folder_of_other_files_and_errors_are_one_line(tiny_bundle, tmp_path):
    """-o replaced whatever folder it named (a user's folder of files went with it); bad arguments were
    tracebacks with exit 0 / 1."""
    import subprocess
    import sys

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    for args, needle in (([str(tiny_bundle), "-o", str(mine)], "is not a bundle (no manifest.json); refusing"),
                         ([str(tmp_path / "nope"), "-o", str(tmp_path / "out")], "bundle folder not found"),
                         ([str(tiny_bundle), "-o", str(tiny_bundle)], "overlap")):
        r = subprocess.run([sys.executable, "-m", "export.shrink", *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
    assert (mine / "thesis.txt").read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
