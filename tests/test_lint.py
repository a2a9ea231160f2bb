"""ruff (pyflakes, pycodestyle errors, import order) is clean over the project's Python code."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("harmony_rt", "engines", "export", "tests", "bench", "train")


def test_ruff_clean():
    pytest.importorskip("ruff", reason="needs ruff (the [test] extra)")
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "E,F,I", "--output-format", "concise",
         *PATHS],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, f"ruff check --select E,F,I found problems:\n{r.stdout}{r.stderr}"
