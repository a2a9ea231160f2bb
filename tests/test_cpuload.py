"""The CPU-load probe that decides ONNX Runtime's idle-thread policy (harmony_rt.cpuload)."""

import os
import subprocess
import sys
import time

import pytest

from harmony_rt.cpuload import ENV, choose_spinning, other_load
from harmony_rt.errors import HarmonyError


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat (elsewhere the probe says None)")
def test_other_load_sees_a_busy_neighbour_and_not_itself():
    """A CPU-bound child shows as about one core; this process's own busy loop does not count."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = max(other_load(0.2) for _ in range(3))
    finally:
        child.kill()
        child.wait()
    assert busy is not None and busy > 0.6, busy

    def spin_here(seconds):  # burn our own CPU while the probe samples
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    # this process busy vs idle, back to back: other processes' load (a busy CI machine) cancels out
    own = min(other_load(0.2, sleep=spin_here) - other_load(0.2) for _ in range(3))
    assert own < 0.6, own


@pytest.mark.parametrize(
    "load, threads, cores, spin",
    [
        (0.0, 2, 2, True),  # idle 2-core machine, our pool takes both cores
        (0.4, None, 2, True),  # noise below half a core
        (1.0, 2, 2, False),  # one CPU-bound neighbour on 2 cores
        (1.0, None, 2, False),
        (3.0, 8, 16, True),  # 8 free cores left for a pool of 8
        (9.0, 8, 16, False),
        (1.0, 16, 16, False),
    ],
)
def test_spin_only_where_the_cores_are_free(monkeypatch, load, threads, cores, spin):
    monkeypatch.delenv(ENV, raising=False)
    assert choose_spinning(threads, cores, load=lambda: load) is spin


def test_no_reading_means_no_spinning(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert choose_spinning(2, 2, load=lambda: None) is False


@pytest.mark.parametrize("value, spin", [("on", True), ("1", True), ("off", False), ("0", False)])
def test_environment_overrides_the_measurement(monkeypatch, value, spin):
    monkeypatch.setenv(ENV, value)
    assert choose_spinning(2, 2, load=lambda: 0.0 if not spin else 2.0) is spin


def test_bad_environment_value_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(HarmonyError, match=ENV):
        choose_spinning(2, 2, load=lambda: 0.0)


@pytest.mark.parametrize("spinning", [True, False])
def test_ort_sessions_get_the_decision(tiny_bundle, spinning):
    from harmony_rt.backends.ort import OrtBackend
    from harmony_rt.bundle import Bundle

    be = OrtBackend(Bundle.load(tiny_bundle), spinning=spinning)
    so = be.options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")


def test_ort_backend_decides_once(tiny_bundle, monkeypatch):
    """Auto: the load is sampled when the first session's options are made, then kept."""
    from harmony_rt.backends import ort as ort_backend
    from harmony_rt.bundle import Bundle

    calls = []
    monkeypatch.setattr(ort_backend, "choose_spinning", lambda threads: calls.append(threads) or True)
    be = ort_backend.OrtBackend(Bundle.load(tiny_bundle), threads=2)
    be.load_all()
    assert calls == [2] and be.spinning is True


def test_cli_bad_spinning_env_exits_2(tiny_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from harmony_rt.cli import main

    monkeypatch.setenv(ENV, "sometimes")
    out = tmp_path / "x.mp4"
    r = CliRunner().invoke(main, ["generate", "x", "--bundle", str(tiny_bundle), "--steps", "1", "-o", str(out)])
    assert r.exit_code == 2 and ENV in r.output and "Traceback" not in r.output
    assert "cannot load" not in r.output  # a settings error, not a bundle error
    assert not out.exists()
