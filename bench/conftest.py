"""Benchmark fixtures: random-init models (cached bundles), the torch baselines, and the results table.

    pytest bench/                       # all suites; prints the table at the end
    pytest bench/ --bench-json out.json # also write rows + machine info
    pytest bench/ --bench-rounds 9      # more interleaved rounds (default 5)
    pytest bench/ --bench-busy 1        # with 1 CPU-bound process running beside (a machine in use)
    HARMONY_BENCH_THREADS=1 pytest bench/test_step.py   # every engine on 1 thread (default 2)

Nothing here asserts a time: benchmarks report, tests/ checks correctness.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

THREADS = int(os.environ.get("HARMONY_BENCH_THREADS", "2"))  # intra-op threads of every engine
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))  # the numpy matmul peak uses as many (if not yet loaded)
# a fresh user cache (harmony_rt.usercache): "first generate" rows include the split measuring, as on first use
os.environ["HARMONY_RT_CACHE"] = _CACHE = tempfile.mkdtemp(prefix="harmony-rt-bench-cache-")

from harmony_rt.bench import Row, check_json_target, format_table, machine, matmul_peak, run_json  # noqa: E402
from harmony_rt.bundle import atomic_write_bytes  # noqa: E402
from harmony_rt.errors import HarmonyError  # noqa: E402

from .models import LARGE, TINY, random_bundle, random_checkpoint  # noqa: E402

_ROWS: list[Row] = []
_INFO: dict = {}


def pytest_addoption(parser):
    g = parser.getgroup("harmony-rt bench")
    g.addoption("--bench-rounds", type=int, default=5, help="interleaved rounds per comparison")
    g.addoption("--bench-json", default=None, help="write the rows and machine info to this JSON file")
    g.addoption("--bench-busy", type=int, default=0, help="CPU-bound processes to run beside the benchmarks")


def pytest_configure(config):
    """Options checked before any benchmark runs (a bad --bench-json path was found after the whole run)."""
    if config.getoption("--bench-rounds") < 1:
        raise pytest.UsageError("--bench-rounds must be >= 1")
    if config.getoption("--bench-busy") < 0:
        raise pytest.UsageError("--bench-busy must be >= 0")
    if THREADS < 1:
        raise pytest.UsageError(f"HARMONY_BENCH_THREADS={THREADS}: must be >= 1")
    out = config.getoption("--bench-json")
    if out:
        try:
            check_json_target(Path(out))
        except HarmonyError as e:
            raise pytest.UsageError(str(e).replace("--json", "--bench-json", 1)) from None


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)  # the run's private user cache


def pytest_sessionstart(session):
    _INFO["machine"] = {**machine(), "threads": THREADS}


@pytest.fixture(scope="session", autouse=True)
def busy(request):
    """--bench-busy N: N processes spinning on a core for the whole run (what "the machine is in use" means
    here, reproducibly)."""
    n = request.config.getoption("--bench-busy")
    _INFO["machine"]["busy_processes"] = n
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    yield n
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture(scope="session")
def rounds(request) -> int:
    return request.config.getoption("--bench-rounds")


@pytest.fixture(scope="session")
def threads() -> int:
    return THREADS


@pytest.fixture(scope="session")
def report():
    """report(row) adds a row to the end-of-run table."""
    return _ROWS.append


def _record_peak(flops_per_s: float) -> None:
    _INFO["matmul_peak_gflops"] = max(_INFO.get("matmul_peak_gflops", 0.0), round(flops_per_s / 1e9, 1))


@pytest.fixture(scope="session")
def record_peak():
    """record_peak(flop_per_s): keep the highest numpy matmul peak seen in this run (table header)."""
    return _record_peak


@pytest.fixture(scope="session")
def peak() -> float:
    """The numpy fp32 matmul peak of this machine at the start of the run (FLOP/s)."""
    p = matmul_peak(threads=THREADS)
    _record_peak(p)
    return p


class Model:
    """A random-init model of a registry size: its checkpoint (torch) and exported bundle (ORT)."""

    def __init__(self, label: str, size: str, overrides: dict):
        self.label, self.size, self.overrides = label, size, overrides
        self.checkpoint = random_checkpoint(size, overrides)
        self.bundle_path = random_bundle(size, overrides)

    @property
    def bundle(self):
        from harmony_rt.bundle import Bundle

        return Bundle.load(self.bundle_path, verify=False)


@pytest.fixture(scope="session")
def tiny() -> Model:
    return Model("tiny", *TINY)


@pytest.fixture(scope="session")
def large() -> Model:
    return Model(f"{LARGE[0]}", *LARGE)


@pytest.fixture(scope="session", params=["tiny", "large"])
def model(request) -> Model:
    return request.getfixturevalue(request.param)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    _INFO["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    m = _INFO["machine"]
    tr = terminalreporter
    tr.section("harmony-rt benchmarks")
    tr.write_line(f"{m['cpu']}, {m['cores']} cores, load {m['load']} -> {m['load_after']}, threads {THREADS}, "
                  f"{config.getoption('--bench-rounds')} rounds, {m.get('busy_processes', 0)} busy processes beside, "
                  f"onnxruntime {m['onnxruntime']}")
    tr.write_line(format_table(_ROWS))
    out = config.getoption("--bench-json")
    if out:
        _INFO["rounds"] = config.getoption("--bench-rounds")
        atomic_write_bytes(Path(out), run_json(_INFO, _ROWS).encode())
        logging.getLogger(__name__).info("wrote %s", out)
