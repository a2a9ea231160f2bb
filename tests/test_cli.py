"""The CLI as a user meets it: output files, one-line errors with exit code 2, no partial files,
and no torch in the process."""

import contextlib
import json
import shutil
import subprocess
import sys

import pytest

from harmony_rt.media import probe

PY = sys.executable


def cli(*args, **kw):
    return subprocess.run([PY, "-m", "harmony_rt.cli", *map(str, args)], capture_output=True, text=True, timeout=300,
                          **kw)


def test_generate_writes_mp4_and_never_imports_torch(tiny_bundle, tmp_path):
    out = tmp_path / "o.mp4"
    code = (
        "import sys; from harmony_rt.cli import main\n"
        f"try:\n    main(['generate', 'a red ball bounces twice', '--bundle', {str(tiny_bundle)!r}, '--steps', '3', "
        f"'-o', {str(out)!r}, '--quiet'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\nprint('NO_TORCH')\n"
    )
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "NO_TORCH" in r.stdout
    man = json.loads((tiny_bundle / "manifest.json").read_text())
    seconds = man["sampling"]["seconds"]
    info = probe(out)
    assert info["video"] and info["audio"]
    assert abs(info["video"]["duration"] - seconds) < 1e-6
    assert abs(info["audio"]["duration"] - seconds) < 0.07
    assert out.with_suffix(".wav").is_file()


def _assert_clean_error(r, tmp_path, needle):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*mp4"))


def test_missing_bundle(tmp_path):
    r = cli("generate", "x", "--bundle", tmp_path / "nope", "-o", tmp_path / "o.mp4")
    _assert_clean_error(r, tmp_path, "bundle folder not found")


def test_corrupted_file(tiny_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    with open(b / "denoiser.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    r = cli("generate", "x", "--bundle", b, "-o", tmp_path / "o.mp4")
    _assert_clean_error(r, tmp_path, "sha256 mismatch")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--guidance", "loud"], "unknown guidance mode"),
        (["--steps", "0"], "steps must be"),
        (["--steps", "-2"], "steps must be"),
        (["--seconds", "1000"], "seconds must be"),
        (["--step-cache", "2"], "--step-cache must be"),
        (["--step-cache", "0.1", "--scheduler", "unipc"], "euler scheduler only"),
    ],
)
def test_bad_arguments(tiny_bundle, tmp_path, args, needle):
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "o.mp4", *args)
    _assert_clean_error(r, tmp_path, needle)


def test_unwritable_output(tiny_bundle, tmp_path):
    """A file where -o needs a folder is refused before generating; a missing folder is made (as --stems)."""
    (tmp_path / "f").write_text("x")
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "f" / "sub" / "o.mp4")
    _assert_clean_error(r, tmp_path, f"{tmp_path / 'f'} is not a folder")
    assert (tmp_path / "f").read_text() == "x"
    # a folder no one can make an entry in (root passes os.access: a real mkdir tells), refused before generating
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", "/proc/harmony_rt_none/o.mp4")
    _assert_clean_error(r, tmp_path, "cannot write /proc/harmony_rt_none/o.mp4: folder /proc is not writable")
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "missing_dir" / "o.mp4", "--steps", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "missing_dir").iterdir()) == ["o.mp4", "o.wav"]


@pytest.mark.parametrize("where", ["-o", "-o folder", "--audio", "--bundle", "info"])
def test_a_name_longer_than_the_filesystem_allows_is_a_usage_error(tiny_bundle, tmp_path, where):
    """pathlib's checks raise ENAMETOOLONG: it was an "internal error", exit 1."""
    long = "a" * 300
    args = {"-o": ["-o", tmp_path / f"{long}.mp4"], "-o folder": ["-o", tmp_path / long / "o.mp4"],
            "--audio": ["--audio", tmp_path / f"{long}.wav", "-o", tmp_path / "o.mp4"],
            "--bundle": ["--bundle", tmp_path / long, "-o", tmp_path / "o.mp4"]}.get(where)
    r = cli("info", tmp_path / long) if args is None else cli("generate", "x", "--bundle", tiny_bundle, *args)
    _assert_clean_error(r, tmp_path, "too long")


def test_an_interrupt_inside_an_import_is_an_interrupt():
    """A Ctrl-C while onnxruntime imports reaches the CLI as ImportError("initialization failed") caused by the
    KeyboardInterrupt: exit 130, as any Ctrl-C, not "internal error", exit 1."""
    import click
    from click.testing import CliRunner

    from harmony_rt.cli import handle_errors

    @click.command()
    @handle_errors
    def cmd():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 130 and r.output.strip() == "error: interrupted", r.output


def test_generate_threads_reach_onnx_runtime(tiny_bundle, tmp_path, monkeypatch):
    """--threads N: every ORT session of the run is made with N intra-op threads; without it ORT chooses."""
    from click.testing import CliRunner

    from harmony_rt.backends.ort import OrtBackend
    from harmony_rt.cli import main

    seen = []
    options = OrtBackend.options

    def spy(self):
        so = options(self)
        seen.append(so.intra_op_num_threads)
        return so

    monkeypatch.setattr(OrtBackend, "options", spy)
    for threads, want in (("1", {1}), (None, {0})):
        seen.clear()
        out = tmp_path / f"t{threads}.mp4"
        args = ["generate", "x", "--bundle", str(tiny_bundle), "--steps", "1", "-o", str(out), "--quiet"]
        r = CliRunner().invoke(main, args + (["--threads", threads] if threads else []))
        assert r.exit_code == 0, r.output
        assert out.is_file()
        assert seen and set(seen) == want, seen


def test_generate_fit_reaches_the_pipeline_and_lists_media_fits(tiny_bundle, tmp_path, monkeypatch):
    """--fit crop reaches generate_batch; its choices are media.FITS (the CLI spells them out so that --help
    does not import PyAV); a choice not in it is a usage error."""
    from click.testing import CliRunner

    from harmony_rt import media
    from harmony_rt.cli import generate, main
    from harmony_rt.pipeline import Pipeline

    assert tuple(next(p for p in generate.params if p.name == "fit").type.choices) == media.FITS
    seen = []
    real = Pipeline.generate_batch
    monkeypatch.setattr(Pipeline, "generate_batch",
                        lambda self, *a, **k: seen.append((k["fit"], k["start"])) or real(self, *a, **k))
    args = ["generate", "x", "--bundle", str(tiny_bundle), "--steps", "1", "--quiet"]
    for extra, want in ((["--fit", "crop", "--start", "0.5"], "crop"), ([], "stretch")):
        r = CliRunner().invoke(main, args + ["-o", str(tmp_path / f"{want}.mp4")] + extra)
        assert r.exit_code == 0, r.output
    assert seen == [("crop", 0.5), ("stretch", 0.0)]  # --start too
    r = CliRunner().invoke(main, args + ["-o", str(tmp_path / "z.mp4"), "--fit", "zoom"])
    assert r.exit_code == 2 and "--fit" in r.output


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_generate_rejects_bad_threads(tiny_bundle, tmp_path, value):
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "o.mp4", "--threads", value)
    assert r.returncode == 2 and "--threads" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1  # one line, as every other error
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.parametrize("args, needle", [
    ((), "Missing argument 'PROMPT' (see harmony-rt generate --help)"),
    (("x", "--s-v", "nan"), "--s-v must be a number"),  # the flag, not the library's argument name s_v
    (("x", "--num-samples", "0"), "--num-samples must be an integer"),
    (("x", "--sample", "-1"), "--sample must be an integer"),
])
def test_usage_errors_are_one_line_naming_the_flag(tmp_path, args, needle):
    r = cli("generate", *args, "-o", tmp_path / "o.mp4")
    assert r.returncode == 2 and r.stderr == f"error: {r.stderr[7:]}" and r.stderr.count("\n") == 1
    assert needle in r.stderr


def test_usage_error_exit_2(tmp_path):
    r = cli("generate")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_info_on_bundle(tiny_bundle):
    r = cli("info", tiny_bundle)
    assert r.returncode == 0 and "denoiser" in r.stdout


def test_info_checks_every_file(tiny_bundle, tmp_path):
    """`info` hashes every file, tokenizers included (generate hashes only what it runs)."""
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    tok = b / "tokenizer_text.json"
    tok.write_text(tok.read_text() + " ")  # still valid JSON, other bytes
    _assert_clean_error(cli("info", b), tmp_path, "tokenizer_text.json: sha256 mismatch")


def test_closed_stdout_stops_quietly(tiny_bundle):
    """`harmony-rt info | head -1`: the reader going away ends the command as SIGPIPE would, with no error."""
    proc = subprocess.Popen([PY, "-m", "harmony_rt.cli", "info", str(tiny_bundle)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and err == "", err


def test_stems_refused_up_front(tiny_bundle, tmp_path):
    """--stems on a one-stream bundle, or naming a file, is refused before generating (it wrote nothing)."""
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "o.mp4", "--stems", tmp_path / "s")
    _assert_clean_error(r, tmp_path, "--stems needs a Unison bundle")
    (tmp_path / "f").write_text("")
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "o.mp4", "--stems", tmp_path / "f")
    _assert_clean_error(r, tmp_path, "not a folder")
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "o.mp4", "--stems", tmp_path / "f" / "sub")
    _assert_clean_error(r, tmp_path, "f is not a folder")
    r = cli("generate", "x", "--bundle", tiny_bundle, "-o", tmp_path / "o.mp4", "--stems", tmp_path / "s",
            "--audio", tmp_path / "f")  # A2V: the sound is given, there is nothing to split
    _assert_clean_error(r, tmp_path, "with --audio the sound is given")
    assert not (tmp_path / "s").exists()


def test_size_row_without_torch_compares_nothing(monkeypatch):
    """In a runtime-only venv `harmony-rt bench` states torch is absent instead of a 1.00x 'comparison'."""
    from harmony_rt import bench

    monkeypatch.setattr(bench, "installed_sizes", lambda: {"runtime": {"harmony-rt": 1e6, "numpy": 5e7}, "torch": {}})
    (row,) = bench.size_rows()
    assert row.baseline == "" and "torch is not installed" in row.note
    assert "torch is not installed" in bench.format_table([row])
    monkeypatch.setattr(bench, "installed_sizes", lambda: {"runtime": {"numpy": 1e8}, "torch": {"torch": 7e8}})
    (row,) = bench.size_rows()
    assert row.ratio == pytest.approx(8.0)


def test_bench_command_prints_a_table_and_writes_json(tiny_bundle, tmp_path):
    """`harmony-rt bench --quick`: the runtime-only suite runs on a bundle and states the machine's load."""
    import json

    from click.testing import CliRunner

    from harmony_rt.cli import main

    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", "--bundle", str(tiny_bundle), "--quick", "--rounds", "1",
                                  "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "other processes at start" in r.output and "| group" in r.output
    assert "ratio = baseline / harmony-rt: > 1 means harmony-rt is faster" in r.output  # the legend
    run = json.loads(out.read_text())
    assert any("fresh process (2 each" in row["note"] for row in run["rows"])  # how few processes it rests on
    groups = {row["group"] for row in run["rows"]}
    assert any("step" in g for g in groups) and any("SyncCFG" in g for g in groups), groups
    assert all(row["value"] > 0 for row in run["rows"])
    assert "other_load" in run["info"]["machine"]
    r = CliRunner().invoke(main, ["bench", "--bundle", str(tiny_bundle), "--quick", "--frames", "100000"])
    assert r.exit_code == 2 and "--frames 100000" in r.output and "at most" in r.output, r.output  # not an OOM


def test_bench_cold_start_rows_run_with_the_default_threads(tiny_bundle):
    """`harmony-rt bench` without --threads crashed (internal error, no table): its cold-start processes were
    given threads=0, which the pipeline refuses (the --quick runs the tests made skip those rows)."""
    from harmony_rt import bench
    from harmony_rt.errors import HarmonyError

    rows = bench.cold_rows(tiny_bundle, "tiny", None)
    assert rows and all(r.value > 0 for r in rows if r.value == r.value)
    with pytest.raises(HarmonyError, match="^the cold-start process exited 1: .*bundle folder not found") as e:
        bench.cold_start(tiny_bundle / "nowhere", threads=None)
    assert e.value.exit_code == 1


def test_build_without_onnx_says_which_extra(tiny_bundle, monkeypatch):
    """A runtime-only install (`pip install .`) has no onnx, which engine building needs for graph surgery."""
    import importlib.util

    from click.testing import CliRunner

    from harmony_rt.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    r = CliRunner().invoke(main, ["build", str(tiny_bundle), "--dry-run"])
    assert r.exit_code == 2 and "pip install '.[engines]'" in r.output and r.output.count("\n") == 1


def test_outputs_are_checked_before_generating(tiny_bundle, tmp_path):
    """The .wav beside the output, the OUT_i names and stems are refused up front when they would overwrite an
    input or hit a folder, so no half of a pair or batch is written."""
    voice = tmp_path / "speech.wav"
    sf_bytes = b"RIFF not really a wav"  # never read: refused before
    voice.write_bytes(sf_bytes)
    r = cli("generate", "x", "--bundle", tiny_bundle, "--steps", "1", "--audio", voice, "-o", tmp_path / "speech.mp4")
    _assert_clean_error(r, tmp_path, "it is the --audio input")
    assert voice.read_bytes() == sf_bytes
    batch = tmp_path / "batch"
    (batch / "n_1.mp4").mkdir(parents=True)
    r = cli("generate", "x", "--bundle", tiny_bundle, "--steps", "1", "--num-samples", "3", "-o", batch / "n.mp4")
    assert r.returncode == 2 and "n_1.mp4: it is a folder" in r.stderr
    assert [p.name for p in batch.iterdir()] == ["n_1.mp4"]  # n_0.mp4 was not written
    (tmp_path / "x.wav").mkdir()
    r = cli("generate", "x", "--bundle", tiny_bundle, "--steps", "1", "-o", tmp_path / "x.mp4")
    _assert_clean_error(r, tmp_path, "x.wav: it is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch", "speech.wav", "x.wav"]


def test_undecodable_bytes_in_a_prompt_or_output_name(tiny_bundle, tmp_path):
    base = [PY, "-m", "harmony_rt.cli", "generate", "--bundle", str(tiny_bundle), "--steps", "1"]
    r = subprocess.run(base + [b"a\xffb", "-o", str(tmp_path / "o.mp4")], capture_output=True, text=True, timeout=300)
    _assert_clean_error(r, tmp_path, "prompt is not valid UTF-8")
    r = subprocess.run(base + ["x", "-o", bytes(tmp_path) + b"/b\xff.mp4"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "not valid UTF-8" in r.stderr and not list(tmp_path.iterdir())


def test_sigterm_exits_143_and_leaves_nothing(tiny_bundle, tmp_path):
    """kill / timeout / docker stop send SIGTERM: cleaned up like Ctrl-C, one line, exit 128 + 15."""
    import fcntl
    import os
    import pty
    import signal
    import struct
    import termios
    import threading
    import time

    out = tmp_path / "o.mp4"
    term, stderr = pty.openpty()  # a terminal: the progress bar is drawn (not into a pipe)
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns (a new pty has 0)
    p = subprocess.Popen([PY, "-m", "harmony_rt.cli", "generate", "x", "--bundle", str(tiny_bundle), "--steps", "1000",
                          "-o", str(out)], stderr=stderr,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # as under nohup
    os.close(stderr)
    started, err = threading.Event(), []

    def read():
        with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
            while ch := os.read(term, 1024).decode(errors="replace"):
                err.append(ch)
                if "%|" in "".join(err[-2:]):  # the progress bar: the command is running
                    started.set()

    threading.Thread(target=read, daemon=True).start()
    assert started.wait(120), "".join(err)
    p.send_signal(signal.SIGHUP)  # ignored, as the process was started ignoring it
    time.sleep(1.0)
    assert p.poll() is None, "".join(err)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 143
    assert "error: terminated (SIGTERM)" in "".join(err)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_stdout_is_one_line_not_an_internal_error(tiny_bundle):
    with open("/dev/full", "w") as full:
        r = subprocess.run([PY, "-m", "harmony_rt.cli", "info", str(tiny_bundle)], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=300)
    assert r.returncode == 1 and r.stderr == "error: cannot write to standard output: No space left on device\n"


def test_two_outputs_on_one_path_are_refused(tiny_bundle, tmp_path):
    """-o speech.mp4 --stems DIR: the wav beside the mp4 would also be the speech stem."""
    r = cli("generate", "x", "--bundle", tiny_bundle, "--steps", "1", "-o", tmp_path / "speech.mp4",
            "--stems", tmp_path)
    _assert_clean_error(r, tmp_path, "speech.wav twice")


def test_main_embedded_without_standalone_mode_returns(tiny_bundle, capsys):
    from harmony_rt.cli import main

    assert main(["info", str(tiny_bundle)], standalone_mode=False) is None  # click's contract: no SystemExit
    assert "verified sha256" in capsys.readouterr().out


def test_a_closed_stdout_is_an_error_not_silence(tiny_bundle):
    import os

    r = subprocess.run([PY, "-m", "harmony_rt", "info", str(tiny_bundle)], stderr=subprocess.PIPE, text=True,
                       timeout=300, preexec_fn=lambda: os.close(1))  # as `harmony-rt info ... >&-`
    assert r.returncode == 1 and r.stderr == "error: cannot write to standard output: it is closed\n"


def test_a_closed_stderr_does_not_stop_a_generation(tiny_bundle, tmp_path):
    """As a daemon runs it (`2>&-`): the progress bar had nowhere to go and the run ended in silence, exit 1."""
    import os

    out = tmp_path / "o.mp4"
    r = subprocess.run([PY, "-m", "harmony_rt", "generate", "a red ball", "--bundle", str(tiny_bundle), "--steps", "2",
                        "-o", str(out)], stdout=subprocess.PIPE, text=True, timeout=300,
                       preexec_fn=lambda: os.close(2))
    assert r.returncode == 0 and r.stdout.startswith(f"wrote {out}"), r.stdout
    assert out.is_file() and out.with_suffix(".wav").is_file()


def test_one_sample_of_a_batch_is_remade_by_seed_and_sample(tiny_bundle, tmp_path):
    """`--num-samples 2` writes o_0 / o_1; `--seed S --sample 1` remakes o_1 alone, and says which it is."""
    import soundfile as sf

    base = ("generate", "a red ball", "--bundle", tiny_bundle, "--steps", "2", "--seed", "5", "--quiet")
    r = cli(*base, "--num-samples", "2", "-o", tmp_path / "o.mp4")
    assert r.returncode == 0 and "seed 5 sample 1)" in r.stdout, r.stdout
    r = cli(*base, "--sample", "1", "-o", tmp_path / "one.mp4")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("seed 5 sample 1)"), r.stdout
    a, b = sf.read(tmp_path / "o_1.wav")[0], sf.read(tmp_path / "one.wav")[0]
    assert a.shape == b.shape and abs(a - b).max() < 1e-3
    # a run split in two by --sample: the second half is o_1 (it was named o_0 / o_1 from 0, overwriting)
    split = tmp_path / "split"
    r = cli(*base, "--sample", "1", "--num-samples", "2", "-o", split / "o.mp4")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in split.iterdir()) == ["o_1.mp4", "o_1.wav", "o_2.mp4", "o_2.wav"]
    assert abs(sf.read(split / "o_1.wav")[0] - a).max() < 1e-3


def test_ctrl_c_while_the_cli_is_still_importing_is_one_line():
    code = ("import sys\n"
            "class Interrupt:  # a Ctrl-C arriving while click is imported\n"
            "    def find_spec(self, name, *a):\n"
            "        if name == 'click':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['harmony-rt', 'info', '.']\n"
            "from harmony_rt.__main__ import run\n"
            "run()\n")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr, r.stdout) == (130, "error: interrupted\n", "")


def test_generate_reads_precision_names_in_any_case(tmp_path):
    """export reads --precision FP16 as fp16; generate refused it as an unknown "FP16" graph."""
    r = cli("generate", "x", "-o", tmp_path / "o.mp4", "--precision", "FP16", "--steps", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no fp16 graphs" in r.stderr and "FP16" not in r.stderr, r.stderr


def test_the_wrote_line_is_one_line_whatever_the_name(tiny_bundle, tmp_path):
    """A newline in an output's name was printed raw: the "wrote" line split in two (errors escaped it)."""
    r = cli("generate", "x", "--bundle", tiny_bundle, "--steps", "1", "-o", tmp_path / "take\n2.mp4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "take\\n2.mp4" in r.stdout, r.stdout
    assert (tmp_path / "take\n2.mp4").is_file()


def test_notes_are_said_once_and_on_one_line_each(tiny_bundle, tmp_path):
    """An unknown caption word is said before the run (as its warning was) and once for a batch (every clip
    carries the notes); a note naming a file with a newline in its name stays one line."""
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "take\n1.wav"
    sf.write(wav, np.zeros((44100, 2), np.float32) + 0.1, 44100)  # stereo at another rate: two notes on it
    r = cli("generate", "a zyzzyva ball", "--bundle", tiny_bundle, "--steps", "1", "--num-samples", "2",
            "--audio", wav, "-o", tmp_path / "o.mp4")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert all(ln.startswith("note: ") for ln in lines), lines
    assert sum("unknown token(s) the model has never seen: zyzzyva" in ln for ln in lines) == 1, lines
    assert any("take\\n1.wav" in ln and "mono" in ln for ln in lines), lines
    assert len(lines) == len(set(lines))


def test_progress_lines_where_stderr_is_a_log(tiny_bundle, tmp_path, monkeypatch):
    """stderr not a terminal (a log file, `2>&1 | tee`): no tqdm bar, a plain "step i/N" line at most every
    _StepLines.every seconds, none for the last step (the "wrote" line follows); --quiet: none."""
    from click.testing import CliRunner

    from harmony_rt import cli

    monkeypatch.setattr(cli._StepLines, "every", 0.0)
    args = ["generate", "x", "--bundle", str(tiny_bundle), "--steps", "3"]
    r = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "a.mp4")])
    assert r.exit_code == 0, r.output
    steps = [ln for ln in r.stderr.splitlines() if ln.startswith("step ")]
    assert [s.split(",")[0] for s in steps] == ["step 1/3", "step 2/3"], r.stderr
    assert "s left" in steps[0] and "\r" not in r.stderr and "%|" not in r.stderr
    r = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "b.mp4"), "--quiet"])
    assert r.exit_code == 0 and "step " not in r.stderr, r.stderr


def test_bench_review_mends(tiny_bundle, tmp_path):
    """--json could replace the measured bundle's manifest, a device or a symlink; --rounds had no bound; the
    JSON held bare NaN; bench.results took a `harmony-rt bench` file and printed the renderer's CPU; a bad
    --bench-json path was found after the whole pytest run."""
    import json
    import math
    from pathlib import Path

    from click.testing import CliRunner

    from harmony_rt import bench
    from harmony_rt.cli import main

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (tmp_path / "link.json").symlink_to(tmp_path / "elsewhere.json")
    for target, why in ((b / "manifest.json", "inside the bundle"), (tmp_path / "link.json", "not a plain file"),
                        (Path("/dev/null"), "not a plain file")):
        r = CliRunner().invoke(main, ["bench", "--bundle", str(b), "--quick", "--json", str(target)])
        assert r.exit_code == 2 and why in r.output, r.output
    assert json.loads((b / "manifest.json").read_text())["format_version"]
    r = CliRunner().invoke(main, ["bench", "--rounds", "99999999999"])
    assert r.exit_code == 2 and "--rounds" in r.output
    text = bench.run_json({"machine": {}}, [bench.Row("g", "m", 1.0)])
    assert "NaN" not in text and json.loads(text)["rows"][0]["ratio"] is None
    assert math.isnan(bench.Row("g", "m", 1.0).ratio)

    from bench.results import load_run, render

    cli_run = tmp_path / "cli.json"
    cli_run.write_text(bench.run_json({"machine": {"cpu": "X"}, "options": {}}, [bench.Row("g", "m", 1.0)]))
    with pytest.raises(SystemExit, match="written by `harmony-rt bench --json`"):
        load_run(str(cli_run))
    with pytest.raises(SystemExit, match="cannot read"):
        load_run(str(tmp_path / "none.json"))
    m = {"cpu": "Recorded CPU 9000", "cores": 2, "onnxruntime": "1", "numpy": "2", "python": "3", "load": [0, 0, 0],
         "threads": 2}
    run = json.loads(bench.run_json({"machine": m}, [bench.Row("g", "m", 1.0)]))
    assert "Machine: Recorded CPU 9000, 2 cores" in render(run, "pytest bench/")
    r = subprocess.run([sys.executable, "-m", "pytest", "bench/test_syncfg.py", "--co", "-q", "-p", "no:cacheprovider",
                        "--bench-json", str(tmp_path / "missing" / "x.json")], capture_output=True, text=True)
    assert r.returncode == 4 and "--bench-json" in r.stderr and "existing, writable folder" in r.stderr, r.stderr
