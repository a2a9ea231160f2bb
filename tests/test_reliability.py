"""Embedding in an app: one pipeline shared by threads, inputs refused at the boundary with HarmonyError,
and outputs (mp4, bundles, checkpoints) that a SIGKILL leaves old, absent or complete -- never half-written."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from harmony_rt.bundle import Bundle
from harmony_rt.errors import HarmonyError, MediaError
from harmony_rt.media import probe
from harmony_rt.pipeline import Pipeline

PY = sys.executable


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle, backend="ort")  # split="auto": the default an app gets


# ------------------------------------------------------------------------------------------------ threads

JOBS = [dict(prompt=p, seed=s, guidance=g) for p, s, g in [
    ("a red ball bounces twice", 0, "sync"), ("two knocks on a door", 1, "sync"), ("rain on a roof", 2, "cfg"),
    ("a bell rings", 3, "sync+cfg"), ("a red ball bounces twice", 4, "none"), ("waves", 5, "sync"),
    ("a dog barks", 6, "sync"), ("two knocks on a door", 7, "cfg"), ("a car passes", 8, "sync"),
    ("wind", 9, "sync+cfg"), ("a bell rings", 10, "sync"), ("footsteps", 11, "none"),
]]


def _run(pipe, job):
    r = pipe.generate(job["prompt"], seed=job["seed"], guidance=job["guidance"], steps=2, seconds=1.0, speech="hi")
    return r.frames, r.audio


def test_batched_and_sequential_guidance_are_bit_identical(tiny_bundle):
    """Why threads can share split="auto": on ORT CPU the denoiser gives the same bits for a row whatever the
    batch (measured here), so the auto split's choice does not change results. Other backends may differ
    (GPU kernels pick algorithms by batch size): there, fix split="batched" or "sequential" for bit-exactness."""
    outs = []
    for split in ("batched", "sequential"):
        p = Pipeline.from_bundle(tiny_bundle, backend="ort", split=split)
        outs.append(_run(p, JOBS[3]))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def test_one_pipeline_many_threads_equals_serial(pipe):
    for job in JOBS:  # warm-up: sessions load, the auto split measures each input shape once
        _run(pipe, job)
    serial = [_run(pipe, job) for job in JOBS]
    with ThreadPoolExecutor(max_workers=4) as ex:  # 4 threads x 3 generations each
        threaded = list(ex.map(lambda job: _run(pipe, job), JOBS))
    for job, (f1, a1), (f2, a2) in zip(JOBS, serial, threaded):
        assert np.array_equal(f1, f2) and np.array_equal(a1, a2), job
    assert not np.array_equal(serial[0][1], serial[4][1])  # the jobs really differ


def test_cancel_in_one_thread_does_not_disturb_another(pipe):
    ref = _run(pipe, JOBS[0])

    def cancelled():
        with pytest.raises(HarmonyError, match="cancelled after 1 of 2 steps"):
            pipe.generate("wind", steps=2, seconds=1.0, progress=lambda d, t: d < 1)
        return True

    with ThreadPoolExecutor(max_workers=2) as ex:
        a, b = ex.submit(cancelled), ex.submit(_run, pipe, JOBS[0])
        assert a.result()
        assert np.array_equal(b.result()[0], ref[0]) and np.array_equal(b.result()[1], ref[1])


# ------------------------------------------------------------------------------------------------ validation

_G = dict(fps=8.0, height=32, width=32, sample_rate=16000)  # the tiny geometry


@pytest.mark.parametrize("kw,needle", [
    (dict(prompt="word " * 200), "caption is too long"),
    (dict(speech="a" * 500), "transcript is too long"),
    (dict(prompt=7), "prompt must be a string"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(steps="2"), "steps must be an integer"),
    (dict(seed=True), "seed must be an integer"),
    (dict(seed=2**64), "seed must be an integer"),
    (dict(cfg_scale=float("inf")), "cfg_scale must be a number"),
    (dict(s_a=-1.0), "s_a must be a number"),
    (dict(seconds=0.01), "seconds must be a number"),
    (dict(seconds="1"), "seconds must be a number"),
    (dict(guidance=3), "unknown guidance mode"),
    (dict(scheduler=["euler"]), "unknown scheduler"),
    (dict(audio=np.zeros(16000, np.float32), video=np.zeros((8, 32, 32, 3), np.uint8)), "at most one of audio"),
    (dict(ref_audio=np.zeros(100, np.float32)), "reference audio must be 0.5-10 s"),
    (dict(audio=np.full(16000, np.nan, np.float32)), "NaN"),
    (dict(audio=np.full(16000, 300.0, np.float32)), r"in \[-1, 1\], got a peak of 300"),
    (dict(video=np.zeros((8, 32, 32, 3), np.uint8), image=np.zeros((32, 32, 3), np.uint8)), "video .V2A. and image"),
    (dict(prompt="a\udcff"), "prompt is not valid UTF-8"),
    (dict(speech="\ud800"), "speech is not valid UTF-8"),
    (dict(ref_audio=np.full(16000, -1.5, np.float32)), "peak of 1.5"),
    (dict(ref_audio=np.zeros(16000, np.float32)), "reference audio is silent .* all zeros"),
    (dict(ref_audio=np.full(16000, 5e-4, np.float32)), "reference audio is silent .* -66 dBFS"),
])
def test_bad_arguments_are_harmony_errors(pipe, kw, needle):
    kw = {"prompt": "a red ball", "steps": 1, "seconds": 0.5, **kw}
    with pytest.raises(HarmonyError, match=needle) as ei:
        pipe.generate_batch(kw.pop("prompt"), **kw)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("arg", ["audio", "video", "image", "ref_audio"])
def test_unreadable_or_wrong_kind_media_are_media_errors(pipe, tmp_path, arg):
    text = tmp_path / "notes.txt"
    text.write_text("not media")
    cases = ((tmp_path / "missing.wav", "no such file"), (tmp_path, "is a directory"), (text, "cannot read"))
    for path, needle in cases:
        with pytest.raises(MediaError, match=needle) as ei:
            pipe.generate("a red ball", steps=1, seconds=0.5, **{arg: path})
        assert "\n" not in str(ei.value)


def test_audio_file_where_an_image_is_expected(pipe, tmp_path):
    from harmony_rt.media import write_wav

    wav = tmp_path / "a.wav"
    write_wav(wav, np.zeros(8000, np.float32), 16000)
    with pytest.raises(MediaError):
        pipe.generate("a red ball", steps=1, seconds=0.5, image=wav)
    with pytest.raises(MediaError, match="no video stream"):
        pipe.generate("a red ball", steps=1, seconds=0.5, video=wav)


# Inputs that once escaped Pipeline.generate_batch's validation as non-HarmonyErrors.
_GAPS = [
    dict(speech=None), dict(video_caption=3), dict(audio_caption=["x"]),  # tokenizers TypeError
    dict(audio=np.zeros((16000, 2), np.float32)), dict(ref_audio=np.zeros((16000, 2), np.float32)),  # ORT rank error
    dict(audio=[0.0] * 100),  # TypeError (a list is taken for a path)
    dict(video=np.zeros((8, 32, 32), np.uint8)), dict(image=np.zeros((32, 32), np.uint8)),  # numpy ValueError
    dict(video=np.zeros((8, 16, 16, 3), np.uint8)), dict(image=np.zeros((16, 16, 3), np.uint8)),  # ORT dims error
    dict(video=np.zeros((0, 32, 32, 3), np.uint8)),  # ORT Conv error
    dict(progress=5),  # TypeError after the first step
]


@pytest.mark.parametrize("kw", _GAPS, ids=lambda kw: next(iter(kw)) + ":" + type(next(iter(kw.values()))).__name__)
def test_validation_gaps(pipe, kw):
    try:
        pipe.generate_batch("a red ball", steps=1, seconds=0.5, **kw)
    except HarmonyError:
        return
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{type(e).__name__}: {e}")
    pytest.fail("accepted")


# ------------------------------------------------------------------------------------------------ SIGKILL

def _mp4_complete(path: Path, seconds: float) -> bool:
    info = probe(path)
    return (info["video"] is not None and info["audio"] is not None and info["video"]["frames"] == round(seconds * 8)
            and abs(info["audio"]["duration"] - seconds) < 0.1)


def _generate_cmd(bundle: Path, out: Path, seed: int = 1) -> list[str]:
    return [PY, "-m", "harmony_rt.cli", "generate", "a red ball bounces twice", "--bundle", str(bundle), "-o", str(out),
            "--steps", "3", "--seconds", "2", "--seed", str(seed), "--quiet", "--no-verify"]


def _check_target(out: Path, old: bytes | None, seconds: float) -> str:
    """The target is absent, byte-identical to the old file, or a complete new mp4 -- nothing else."""
    if not out.exists():
        assert old is None, "the old output vanished"
        return "absent"
    if old is not None and out.read_bytes() == old:
        return "old"
    assert _mp4_complete(out, seconds), f"half-written target {out}"
    return "new"


def test_sigkill_during_generate_leaves_old_or_complete_output(tiny_bundle, tmp_path):
    out = tmp_path / "clip.mp4"
    t0 = time.monotonic()
    subprocess.run(_generate_cmd(tiny_bundle, out, seed=0), check=True, capture_output=True, timeout=300)
    total = time.monotonic() - t0
    old = out.read_bytes()
    old_wav = out.with_suffix(".wav").read_bytes()
    outcomes = []
    for frac in (0.15, 0.5, 0.75, 0.9, 0.97):
        proc = subprocess.Popen(_generate_cmd(tiny_bundle, out, seed=1), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(frac * total)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        state = _check_target(out, old, 2.0)
        wav = out.with_suffix(".wav")
        assert wav.read_bytes() == old_wav or sf.info(str(wav)).frames == 32000  # old, or the complete new one
        outcomes.append((frac, killed, state))
        if state == "new":  # restore the old pair so later kills can be told apart
            out.write_bytes(old)
            out.with_suffix(".wav").write_bytes(old_wav)
    assert any(k for _, k, _ in outcomes), outcomes  # at least one kill hit a running process
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("clip.mp4", "clip.wav"))
    assert all(n.startswith(".clip.") for n in leftovers), leftovers  # temp files are never the target


_KILL_AT = r"""
import os, signal, sys
target, when = sys.argv[1], sys.argv[2]
import harmony_rt.media as media

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if when == "before-rename":  # the temp mp4 is complete, fsync'd, not yet renamed
    real = os.replace
    os.replace = lambda a, b: die() if str(b) == target else real(a, b)
elif when == "mid-encode":  # 5 frames into the encoder
    class AV:
        def __getattr__(self, k):
            return getattr(media_av, k)
    media_av, n = media.av, [0]
    class VF:
        @staticmethod
        def from_ndarray(*a, **k):
            n[0] += 1
            if n[0] > 5:
                die()
            return media_av.VideoFrame.from_ndarray(*a, **k)
    AV.VideoFrame = VF
    media.av = AV()
from harmony_rt.cli import main
main(sys.argv[3:])
"""


@pytest.mark.parametrize("when", ["mid-encode", "before-rename"])
@pytest.mark.parametrize("has_old", [False, True])
def test_sigkill_at_the_worst_moments_of_writing(tiny_bundle, tmp_path, when, has_old):
    out = tmp_path / "clip.mp4"
    old = None
    if has_old:
        out.write_bytes(b"an older clip")
        old = out.read_bytes()
    args = _generate_cmd(tiny_bundle, out)[3:]
    r = subprocess.run([PY, "-c", _KILL_AT, str(out), when, *args], capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert _check_target(out, old, 2.0) == ("old" if has_old else "absent")
    assert not out.with_suffix(".wav").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "clip.mp4"]
    # temp files only (the wav's too: a clip's files are renamed together, after all were written)
    assert all(n.startswith(".clip.") and n.endswith((".mp4", ".wav")) for n in leftovers), leftovers


def _bundle_state(path: Path, old_manifest: str | None) -> str:
    if not path.exists():
        return "absent"
    Bundle.load(path)  # raises on anything half-written
    return "old" if (path / "manifest.json").read_text() == old_manifest else "new"


def test_sigkill_during_export_leaves_old_or_complete_bundle(tiny_checkpoint, tiny_bundle, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    old_manifest = (out / "manifest.json").read_text()
    states = []
    for delay in (1.0, 6.0):
        proc = subprocess.Popen([PY, "-m", "harmony_rt.cli", "export", str(tiny_checkpoint), "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        states.append((delay, killed, _bundle_state(out, old_manifest)))
    assert all(s in ("old", "new") for _, _, s in states), states
    assert any(k for _, k, _ in states), states


# Kill the process inside harmony_rt.bundle.replace_dir, at the point `mode` names:
#   "before" / "after": around the one-step swap (renameat2 RENAME_EXCHANGE);
#   "rename1" / "rename2": at the first / second os.replace of the two-rename fallback (no exchange).
_KILL_SWAP = r"""
import os, signal
import harmony_rt.bundle as hb
real_exchange, real_replace, calls = hb._exchange, os.replace, [0]
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
def exchange(a, b):
    if MODE == "before":
        kill()
    if MODE == "after":
        assert real_exchange(a, b), "RENAME_EXCHANGE unsupported here"
        kill()
    return False
def replace(a, b):
    if TARGET in (os.path.abspath(str(a)), os.path.abspath(str(b))):
        calls[0] += 1
        if MODE == "rename%d" % calls[0]:
            kill()
    return real_replace(a, b)
hb._exchange, os.replace = exchange, replace
"""

_EXPORT_KILL = r"""
import os, shutil, sys
ckpt, out, graphs, MODE = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
TARGET = os.path.abspath(out)
import export.bundle_writer as bw
# Fast stand-ins for tracing and parity (the atomic assembly is what is under test): copy the exported graphs.
bw.export_component = lambda name, module, spec, model, path: shutil.copyfile(os.path.join(graphs, name + ".onnx"),
                                                                              path)
bw.parity = lambda *a: 0.0
""" + _KILL_SWAP + r"""
bw.export_bundle(ckpt, out)
"""

# what the target holds after a kill at each point of the swap
_AFTER_KILL = {"before": "old", "after": "new", "rename1": "old", "rename2": "absent"}


def _need_exchange(tmp_path, mode):
    """The one-step modes need RENAME_EXCHANGE from this OS and filesystem."""
    from harmony_rt.bundle import _exchange

    a, b = tmp_path / ".probe_a", tmp_path / ".probe_b"
    a.mkdir(), b.mkdir()
    ok = _exchange(a, b)
    a.rmdir(), b.rmdir()
    if mode in ("before", "after") and not ok:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here (needs Linux >= 3.15, glibc >= 2.28)")


@pytest.mark.parametrize("mode", list(_AFTER_KILL))
def test_sigkill_while_the_export_swaps_bundles(tiny_checkpoint, tiny_bundle, tmp_path, mode):
    """Kill around the swap of the new bundle for the old one. With the one-step exchange (Linux) the target
    is the old or the new bundle, never absent; with the two-rename fallback it may be absent between the
    renames, the old one kept beside it as .<name>.old.*: never half-written either way."""
    pytest.importorskip("torch")
    _need_exchange(tmp_path, mode)
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    old_manifest = (out / "manifest.json").read_text()
    r = subprocess.run([PY, "-c", _EXPORT_KILL, str(tiny_checkpoint), str(out), str(tiny_bundle), mode],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert _bundle_state(out, old_manifest) == _AFTER_KILL[mode]
    kept = [p for p in tmp_path.iterdir() if p.name != "bundle"]
    assert all(p.name.startswith(".bundle.") for p in kept), kept  # leftovers are hidden temp folders
    if mode == "rename2":  # the old bundle was moved aside, not deleted: recoverable by hand
        olds = [p / "x" for p in kept if ".old." in p.name]
        assert len(olds) == 1 and (olds[0] / "manifest.json").read_text() == old_manifest


_CKPT_KILL = r"""
import os, sys
path, MODE = sys.argv[1], sys.argv[2]
TARGET = os.path.abspath(path)
from train.checkpoints import load_checkpoint, save_checkpoint
""" + _KILL_SWAP + r"""
model, _, state = load_checkpoint(path)
state["step"] = 123456  # marks the new save
save_checkpoint(path, model, state=state)
"""


@pytest.mark.parametrize("mode", list(_AFTER_KILL))
def test_sigkill_while_saving_a_checkpoint(tiny_checkpoint, tmp_path, mode):
    pytest.importorskip("torch")
    from train.checkpoints import load_checkpoint

    _need_exchange(tmp_path, mode)
    ck = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ck)
    old_state = json.loads((ck / "state.json").read_text())
    r = subprocess.run([PY, "-c", _CKPT_KILL, str(ck), mode], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    expect = _AFTER_KILL[mode]
    if expect == "absent":  # between "old -> aside" and "new -> target": both copies are beside it
        assert not ck.exists()
        assert len([p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]) == 2
    else:
        load_checkpoint(ck)
        state = json.loads((ck / "state.json").read_text())
        assert state == old_state if expect == "old" else state["step"] == 123456


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_swaps_and_leaves_nothing_behind(tmp_path, monkeypatch, exchange):
    import harmony_rt.bundle as hb

    if exchange:
        _need_exchange(tmp_path, "after")
    else:
        monkeypatch.setattr(hb, "_exchange", lambda a, b: False)
    dst, src = tmp_path / "target", tmp_path / ".new"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    src.mkdir()
    (src / "new.txt").write_text("new")
    hb.replace_dir(src, dst)
    assert [p.name for p in dst.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    src.mkdir()
    (src / "again.txt").write_text("x")
    hb.replace_dir(src, tmp_path / "fresh")  # no target yet: a plain rename
    assert (tmp_path / "fresh" / "again.txt").exists() and not src.exists()


def test_temp_files_and_folders_get_the_umask_and_leave_it_alone(tmp_path, monkeypatch):
    """atomic_write_bytes / temp_dir give what open / mkdir give (mkstemp / mkdtemp make 0600 / 0700) without
    touching the umask, which another thread may be relying on."""
    import os

    import harmony_rt.bundle as hb

    old = os.umask(0o027)
    try:
        calls = []
        monkeypatch.setattr(os, "umask", lambda *a: calls.append(a) or 0o777)
        hb.atomic_write_bytes(tmp_path / ("n" * 255), b"x")
        d = hb.temp_dir(tmp_path, "n" * 255)
        monkeypatch.undo()
        assert not calls
        assert (tmp_path / ("n" * 255)).stat().st_mode & 0o777 == 0o640
        assert d.stat().st_mode & 0o777 == 0o750 and d.name.startswith(".nnn") and len(d.name) < 255
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["n" * 255, d.name])
    finally:
        os.umask(old)


def test_unknown_words_warn_once_by_name(caplog):
    """Words outside the caption vocabulary are named, counted, and warned about once per text, though the
    pipeline encodes the prompt twice (video and audio caption)."""
    from harmony_rt.bundle import default_bundle_path
    from harmony_rt.text import TextTokenizer

    tok = TextTokenizer(default_bundle_path() / "tokenizer_text.json", 32, "caption")
    with caplog.at_level("WARNING", logger="harmony_rt.text"):
        tok.encode(["a zyzzyva qwxv zyzzyva", "a zyzzyva qwxv zyzzyva", ""])
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["caption: 2 unknown token(s) the model has never seen: zyzzyva qwxv"], msgs
    caplog.clear()  # one line of bounded length, whatever the words
    with caplog.at_level("WARNING", logger="harmony_rt.text"):
        tok.encode(["q" * 10000 + " " + " ".join(f"zq{i}x" for i in range(20)) + " a\tq"])
    (msg,) = [r.getMessage() for r in caplog.records]
    assert len(msg) < 400 and "q" * 32 + "..." in msg and "(and " in msg and "\n" not in msg, msg


def test_the_advertised_text_limits_are_the_usable_ones(tiny_bundle):
    """The model's sequence length counts the [BOS] token the tokenizers add: a transcript of the
    max_speech_chars that `info` and --help promised was refused ("65 tokens, the bundle allows 64"). The limit
    shown and enforced is now what a text may hold; a text of exactly that length is taken."""
    from click.testing import CliRunner

    from harmony_rt.bundle import Bundle
    from harmony_rt.cli import main
    from harmony_rt.text import TextTokenizer

    b = Bundle.load(tiny_bundle, verify=False)
    g = b.geometry
    sp = TextTokenizer(b.file_path("tokenizer_speech"), g.max_speech_chars, "transcript", "characters")
    cap = TextTokenizer(b.file_path("tokenizer_text"), g.max_text_tokens, "caption")
    assert (sp.room, cap.room) == (g.max_speech_chars - 1, g.max_text_tokens - 1)
    ids, mask = sp.encode(["a" * sp.room])
    assert ids.shape[1] == g.max_speech_chars and mask.all()
    with pytest.raises(HarmonyError, match=f"transcript is too long: {sp.room + 1} characters, the bundle allows "
                                           f"{sp.room}: "):
        sp.encode(["a" * (sp.room + 1)])
    with pytest.raises(HarmonyError, match=f"caption is too long: {cap.room + 1} tokens, the bundle allows {cap.room}"):
        cap.encode(["a " * (cap.room + 1)])
    r = CliRunner().invoke(main, ["info", str(tiny_bundle)])
    assert r.exit_code == 0 and f"prompt <= {cap.room} tokens, transcript <= {sp.room} characters" in r.output


def test_small_mistakes_name_what_the_user_called(pipe, tiny_checkpoint, tmp_path):
    """A keyword typo in generate() names generate (Python named generate_batch, never called by the user); a
    training checkpoint given as a bundle says to export it; no progress bar is drawn into a log file."""
    import subprocess
    import sys

    from harmony_rt.bundle import Bundle
    from harmony_rt.errors import BundleError

    with pytest.raises(TypeError, match=r"^generate\(\) got an unexpected keyword argument 'step'$"):
        pipe.generate("x", step=2)
    with pytest.raises(BundleError, match="a training checkpoint, not a bundle: make one with `harmony-rt export "):
        Bundle.load(tiny_checkpoint)
    r = subprocess.run([sys.executable, "-m", "harmony_rt.cli", "generate", "x", "--bundle", str(pipe.bundle.path),
                        "--steps", "2", "-o", str(tmp_path / "o.mp4")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "\r" not in r.stderr and "step/s" not in r.stderr, r.stderr


def test_long_audio_files_are_read_only_as_far_as_used(pipe, tmp_path, monkeypatch):
    """A2V with a 10-minute file takes its head (as from a full read); a 10-minute reference voice is refused
    as too long without decoding all of it."""
    from harmony_rt import media

    g = pipe.geometry
    x = (np.random.default_rng(1).standard_normal(g.sample_rate * 600) * 0.1).astype(np.float32)
    f = tmp_path / "long.wav"
    sf.write(f, x, g.sample_rate, subtype="FLOAT")
    decoded = []
    real = media._audio_to_float
    monkeypatch.setattr(media, "_audio_to_float", lambda fr: decoded.append(fr.samples) or real(fr))
    a = pipe.generate("a red ball", audio=str(f), steps=1, seed=0)
    b = pipe.generate("a red ball", audio=x[: g.sample_rate * 20], steps=1, seed=0)  # the same head, in memory
    assert np.array_equal(a.audio, b.audio) and np.array_equal(a.frames, b.frames)
    max_s = g.max_latent_frames * g.video_t_stride / g.fps
    assert sum(decoded) < (max_s + media.HEAD_MARGIN_S + 1) * g.sample_rate  # not 600 s
    with pytest.raises(HarmonyError, match="got more than 10 s"):
        pipe.generate("a man speaks", ref_audio=str(f), steps=1)


def test_onnx_runtime_telemetry_is_off_unless_the_user_chose(tmp_path):
    """onnxruntime 1.32 (Linux) writes a device id under the user's cache folder and sends usage events unless
    ORT_DISABLE_TELEMETRY=1 is set before it loads; with an unwritable cache it also printed an ANSI warning line
    on every run, past the CLI's one-line stderr."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = "import harmony_rt, os, onnxruntime; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "1\n", "")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no device id written
    for entry in ("import export.shrink", "import bench.precision_report", "import train.train"):  # import ORT first
        r = subprocess.run([sys.executable, "-c", entry], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and not [p for p in tmp_path.rglob("*") if p.is_file()], (entry, r.stderr[-300:])
    env["ORT_DISABLE_TELEMETRY"] = "0"  # the user's choice stands
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout == "0\n"


# ------------------------------------------------------------------------------------------------ API review

def test_api_review_settings_are_refused_where_they_are_given(tiny_bundle, pipe, monkeypatch, tmp_path):
    """Settings an embedding service passes are refused at once with HarmonyError: a bad HARMONY_RT_SPINNING
    was refused at every generate (not at start-up), verify="no" verified, precision="" ran fp32 (the message
    had a blank), "" loaded the current folder, a tiling of the wrong type failed with AttributeError."""
    monkeypatch.setenv("HARMONY_RT_SPINNING", "bogus")
    with pytest.raises(HarmonyError, match="HARMONY_RT_SPINNING='bogus': use on, off or auto"):
        Pipeline.from_bundle(tiny_bundle, backend="ort")
    monkeypatch.delenv("HARMONY_RT_SPINNING")
    with pytest.raises(HarmonyError, match="verify must be True or False, got 'no'"):
        Pipeline.from_bundle(tiny_bundle, verify="no")
    for bad in ("", "  "):
        with pytest.raises(HarmonyError, match="precision must be a variant's name"):
            Pipeline.from_bundle(tiny_bundle, backend="ort", precision=bad)
    with pytest.raises(HarmonyError, match="^the bundle path is empty$"):
        Pipeline.from_bundle("")
    other = Pipeline.from_bundle(tiny_bundle, backend=pipe.backend)
    other.tiling = "abc"
    with pytest.raises(HarmonyError, match="tiling must be a harmony_rt.tiling.Tiling, got str"):
        other.generate("a red ball", steps=1)


def test_a_batch_whose_last_sample_could_not_be_remade_is_refused(pipe):
    """generate(sample=i) remakes sample i of a batch: a batch numbered past 2**31 - 1 made samples that could not."""
    with pytest.raises(HarmonyError, match=r"sample \+ num_samples - 1 must be at most 2147483647.*2147483646 \+ 3"):
        pipe.generate_batch("x", sample=2**31 - 2, num_samples=3, steps=1)
    last = pipe.generate_batch("x", sample=2**31 - 2, num_samples=2, steps=1, seconds=0.5)[-1]
    assert last.sample == 2**31 - 1
    again = pipe.generate("x", sample=last.sample, steps=1, seconds=0.5)
    assert np.array_equal(again.frames, last.frames)


def test_frames_are_an_ordinary_c_order_array(pipe):
    """They were a channel-planar view of the batch: bytes(), file.write and ffmpeg's stdin refused them."""
    r = pipe.generate_batch("a red ball", num_samples=2, steps=1, seconds=0.5)
    assert all(x.frames.flags.c_contiguous for x in r)
    assert io.BytesIO().write(r[1].frames) == r[1].frames.size


def test_a_nul_byte_in_an_output_name_is_one_error_and_writes_nothing(pipe, tmp_path):
    """The C writers cut the name at the NUL and left a whole file `.z` behind; the cleanup then raised
    ValueError instead of the MediaError."""
    r = pipe.generate("a red ball", steps=1, seconds=0.5)
    for path in (tmp_path / "z\x00z.mp4", tmp_path / "sub" / "a\x00b.mp4"):
        with pytest.raises(MediaError, match="the file name contains a NUL byte"):
            r.save(path)
    from harmony_rt.media import write_wav

    with pytest.raises(MediaError, match="NUL byte"):
        write_wav(tmp_path / "w\x00w.wav", r.audio, r.sample_rate)
    assert list(tmp_path.iterdir()) == []


def test_media_inputs_take_any_path_like(pipe, tmp_path):
    """Only str and Path counted as files: an os.DirEntry or PurePosixPath was 'got DirEntry' (save took them)."""
    from pathlib import PurePosixPath

    sr = pipe.geometry.sample_rate
    t = np.arange(sr) / sr
    sf.write(tmp_path / "voice.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    entry = next(e for e in os.scandir(tmp_path) if e.name == "voice.wav")
    a = pipe.generate("a man speaks", speech="hi", ref_audio=entry, steps=1, seconds=0.5)
    b = pipe.generate("a man speaks", speech="hi", ref_audio=PurePosixPath(tmp_path / "voice.wav"), steps=1,
                      seconds=0.5)
    c = pipe.generate("a man speaks", speech="hi", ref_audio=str(tmp_path / "voice.wav"), steps=1, seconds=0.5)
    assert np.array_equal(a.audio, c.audio) and np.array_equal(b.audio, c.audio)
    d = pipe.generate("a dog", audio=entry, steps=1)
    assert np.array_equal(d.audio, pipe.generate("a dog", audio=tmp_path / "voice.wav", steps=1).audio)


def test_saving_an_empty_batch_is_an_error(tmp_path):
    """save_all([]) returned without a word: a caller's bug passed as success."""
    from harmony_rt.pipeline import save_all

    with pytest.raises(HarmonyError, match="no clips to save to"):
        save_all([], tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []
