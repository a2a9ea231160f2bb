"""Harmony's tasks through the runtime: A2V, V2A, I2AV, voice reference, EN / ZH transcripts, bad media."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from harmony_rt import media
from harmony_rt.errors import HarmonyError
from harmony_rt.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle, backend="ort", split="batched")


def _tone(seconds, sr, f=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t) * (t % 0.5 < 0.1)).astype(np.float32)


def test_a2v_returns_the_given_audio_and_generates_video(pipe, tmp_path):
    g = pipe.geometry
    path = tmp_path / "speech.wav"
    sf.write(path, _tone(1.0, 22050), 22050)  # another rate: the runtime resamples
    given = media.read_audio(path, g.sample_rate)
    r = pipe.generate("a face speaks", audio=path, steps=2)
    assert np.array_equal(r.audio[: len(given)], given)
    assert r.frames.shape[0] == round(1.0 * g.fps) and r.frames.std() > 0
    plain = pipe.generate("a face speaks", steps=2, seconds=1.0)
    assert not np.array_equal(plain.audio[: len(given)], given)


def test_a_float_file_past_full_scale_is_scaled_down_with_a_note(pipe, tmp_path):
    """A float wav peaking at 3 (legal in the format) was clipped on the way out: 3 / 4 of a loud tone's
    samples at full scale, silently. It is scaled to peak 1, with a note; the shape of the sound kept."""
    g = pipe.geometry
    loud = 10 * _tone(1.0, g.sample_rate)  # peak 3
    sf.write(tmp_path / "loud.wav", loud, g.sample_rate, subtype="FLOAT")
    r = pipe.generate("a face speaks", audio=tmp_path / "loud.wav", steps=1)
    assert any("peaks at 3, past full scale: scaled down to peak 1" in n for n in r.notes), r.notes
    np.testing.assert_allclose(r.audio[: len(loud)], loud / 3, atol=1e-6)


def test_v2a_returns_the_given_frames_and_generates_audio(pipe, tmp_path):
    g = pipe.geometry
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (int(g.fps), g.height, g.width, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    media.write_mp4(path, frames, g.fps)
    given, notes = media.read_video(path, g.fps, g.height, g.width)
    r = pipe.generate("a red ball bounces", video=path, steps=2)
    assert np.array_equal(r.frames, given[: r.frames.shape[0]])
    assert np.abs(r.audio).max() > 0


def test_v2a_and_i2av_files_are_fitted_as_fit_says(pipe, tmp_path, monkeypatch):
    """fit="crop" (generate --fit crop): a driving video or first image of another aspect than the model's is
    read with its aspect kept and center-cropped; "stretch" stays the default; arrays are taken as they are."""
    g = pipe.geometry
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (int(g.fps), 2 * g.height, g.width, 3), dtype=np.uint8)  # portrait
    path = tmp_path / "tall.mp4"
    media.write_mp4(path, frames, g.fps)
    want, _ = media.read_video(path, g.fps, g.height, g.width, fit="crop")
    r = pipe.generate("x", video=path, steps=1, fit="crop")
    np.testing.assert_array_equal(r.frames, want[: r.frames.shape[0]])
    assert any("center-cropped" in n for n in r.notes), r.notes
    plain = pipe.generate("x", video=path, steps=1)
    assert not np.array_equal(plain.frames, r.frames) and not any("center-cropped" in n for n in plain.notes)
    import av

    img_path = tmp_path / "tall.png"
    with av.open(str(img_path), "w", format="image2") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = g.width, 2 * g.height, "rgb24"
        for p in [*s.encode(av.VideoFrame.from_ndarray(frames[0], format="rgb24")), *s.encode()]:
            c.mux(p)
    seen = []
    real = media.read_image
    monkeypatch.setattr(media, "read_image", lambda *a, **k: seen.append(k.get("fit")) or real(*a, **k))
    i = pipe.generate("x", image=img_path, steps=1, seconds=1.0, fit="crop")
    assert seen == ["crop"] and any("center-cropped" in n for n in i.notes), i.notes
    arr = pipe.generate("x", video=want, steps=1, fit="crop")
    assert "fit 'crop' has no effect without a video or image file" in arr.notes
    for bad in ("zoom", np.array([1, 2]), None):  # an array is not compared elementwise
        with pytest.raises(HarmonyError, match="unknown fit .*; choose one of stretch, crop"):
            pipe.generate("x", video=path, steps=1, fit=bad)


def test_start_takes_the_driving_part_from_the_middle_of_a_file(pipe, tmp_path):
    """start= (generate --start): A2V / V2A from a clip in the middle of a recording, without cutting it first:
    what a read from that point gives (the video from its frame nearest to it); past the end is said so."""
    g = pipe.geometry
    rng = np.random.default_rng(4)
    wav = np.clip(0.1 * rng.standard_normal(g.sample_rate * 6), -0.9, 0.9).astype(np.float32)
    apath = tmp_path / "talk.wav"
    sf.write(apath, wav, g.sample_rate, subtype="FLOAT")
    r = pipe.generate("x", audio=apath, start=2.5, seconds=1.0, steps=1)
    n = len(r.audio)
    np.testing.assert_array_equal(r.audio, wav[int(2.5 * g.sample_rate):][:n])
    assert any("from 2.5 s" in n_ for n_ in r.notes), r.notes
    frames = rng.integers(0, 255, (6 * int(g.fps), g.height, g.width, 3), dtype=np.uint8)
    vpath = tmp_path / "rec.mp4"
    media.write_mp4(vpath, frames, g.fps)
    later, _ = media.read_video(vpath, g.fps, g.height, g.width, start_frame=round(3.1 * g.fps))
    v = pipe.generate("x", video=vpath, start=3.1, seconds=1.0, steps=1)
    np.testing.assert_array_equal(v.frames, later[: len(v.frames)])
    for kw in (dict(audio=apath), dict(video=vpath)):
        with pytest.raises(HarmonyError, match=f"start 60 s is past the end of the driving {next(iter(kw))}"):
            pipe.generate("x", start=60, steps=1, **kw)
    with pytest.raises(HarmonyError, match="the driving audio has 0.01 s from start 5.99 s; the model needs at least"):
        pipe.generate("x", audio=apath, start=5.99, steps=1)
    with pytest.raises(HarmonyError, match="start must be a number in"):
        pipe.generate("x", audio=apath, start=-1, steps=1)
    # arrays are taken from `start` as files are (they were taken whole, with a note saying start did nothing
    # beside one saying the audio was used from it)
    arr = pipe.generate("x", audio=wav, start=2.5, seconds=1.0, steps=1)
    np.testing.assert_array_equal(arr.audio, r.audio)
    assert not any("no effect" in n_ for n_ in arr.notes), arr.notes
    va = pipe.generate("x", video=frames, start=3.1, seconds=1.0, steps=1)
    np.testing.assert_array_equal(va.frames, frames[round(3.1 * g.fps):][: len(va.frames)])
    n_from = len(frames) - round(3.1 * g.fps)
    assert f"trimmed {n_from} -> {len(va.frames)} frames from frame {round(3.1 * g.fps)}" in va.notes, va.notes
    with pytest.raises(HarmonyError, match="start 7 s is past the end of the driving video"):
        pipe.generate("x", video=frames, start=7, steps=1)
    assert "start 1 s has no effect without a driving audio or video" in pipe.generate("x", start=1.0, steps=1).notes
    # a clip shorter than the bundle's, because its driving part is, says so
    short = pipe.generate("x", audio=apath, start=5.0, steps=1)
    assert "the clip is 1 s, as the driving audio from 5 s is short (the bundle's clips: " in " ".join(short.notes)
    assert len(short.frames) == int(g.fps)
    assert not any("the clip is" in n_ for n_ in pipe.generate("x", audio=apath, steps=1).notes)  # 2 s of 6 s
    # a driving part that rounds up to the bundle's length on the latent grid is no shorter clip
    full = pipe.bundle.sampling["seconds"]
    near = pipe.generate("x", audio=wav[: int((full - 0.4 / g.fps) * g.sample_rate)], steps=1)
    assert near.seconds == full and not any("the clip is" in n_ for n_ in near.notes), near.notes


def test_a_trim_note_counts_the_frames_from_start(pipe, tmp_path):
    """V2A from `start` said "trimmed <all the file's frames> -> n" whatever the start."""
    g = pipe.geometry
    frames = np.random.default_rng(5).integers(0, 255, (6 * int(g.fps), g.height, g.width, 3), dtype=np.uint8)
    media.write_mp4(tmp_path / "rec.mp4", frames, g.fps)
    v = pipe.generate("x", video=tmp_path / "rec.mp4", start=3.0, seconds=1.0, steps=1)
    assert f"trimmed {3 * int(g.fps)} -> {int(g.fps)} frames from frame {3 * int(g.fps)}" in v.notes, v.notes


def test_a2v_and_v2a_steps_run_two_rows_per_sample_not_three(tiny_bundle, monkeypatch):
    """With the audio (A2V) or the video (V2A) given, the anchor that guides only that modality is left out of
    the SyncCFG batch: 2 denoiser rows a step instead of 3, a third less work for the same guided output."""
    p = Pipeline.from_bundle(tiny_bundle, backend="ort", split="batched")
    g, rows = p.geometry, []
    run = p.backend.run

    def spy(name, feeds):
        if name == "denoiser":
            rows.append(feeds["video_latent"].shape[0])
        return run(name, feeds)

    monkeypatch.setattr(p.backend, "run", spy)
    p.generate("a face speaks", steps=2, seconds=1.0, guidance="sync")
    assert rows == [3, 3]
    rows.clear()
    p.generate("a face speaks", audio=_tone(1.0, g.sample_rate), steps=2, guidance="sync")
    assert rows == [2, 2]
    rows.clear()
    frames = np.random.default_rng(0).integers(0, 255, (int(g.fps), g.height, g.width, 3), dtype=np.uint8)
    p.generate("a red ball bounces", video=frames, steps=2, guidance="sync+cfg")
    assert rows == [3, 3]  # joint, uncond, static


def test_v2a_resizes_and_says_so(pipe, tmp_path):
    g = pipe.geometry
    frames = np.full((int(g.fps), 2 * g.height, 2 * g.width, 3), 90, np.uint8)
    path = tmp_path / "big.mp4"
    media.write_mp4(path, frames, g.fps)
    r = pipe.generate("x", video=path, steps=1)
    assert r.frames.shape[1:3] == (g.height, g.width)
    assert any("resized" in n for n in r.notes)
    short = pipe.generate("x", video=path, steps=1, seconds=g.video_t_stride / g.fps)  # one latent frame
    assert short.frames.shape[0] == g.video_t_stride
    assert f"trimmed {int(g.fps)} -> {g.video_t_stride} frames" in short.notes  # what was cut, to what
    arr = pipe.generate("x", video=np.repeat(frames[:, ::2, ::2], 2, 0), steps=1, seconds=1.0)
    assert f"trimmed {2 * int(g.fps)} -> {int(g.fps)} frames" in arr.notes


def test_i2av_keeps_the_first_frame_close_to_the_image(pipe, tmp_path):
    g = pipe.geometry
    img = np.zeros((g.height, g.width, 3), np.uint8)
    img[: g.height // 2] = (200, 30, 30)
    path = tmp_path / "first.png"
    media.write_mp4  # noqa: B018  (images are written with PyAV below)
    import av

    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = g.width, g.height, "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with_img = pipe.generate("x", image=path, steps=2, seconds=1.0)
    without = pipe.generate("x", steps=2, seconds=1.0)
    # the first latent frame is the image's latent: the decoded first frame is the autoencoder's copy of it
    recon = pipe._decode_video(pipe.encode_frames(np.repeat(img[None], g.video_t_stride, 0)))[0, 0]
    err_img = np.abs(with_img.frames[0].astype(int) - recon.astype(int)).mean()
    err_plain = np.abs(without.frames[0].astype(int) - recon.astype(int)).mean()
    assert err_img < err_plain


def test_reference_audio_changes_output_and_is_reproducible(pipe, tmp_path):
    path = tmp_path / "voice.wav"
    sf.write(path, _tone(1.5, 16000, 220.0), 16000)
    base = pipe.generate("someone speaks", speech="hello there", steps=2, seed=4, seconds=1.0)
    cloned = pipe.generate("someone speaks", speech="hello there", ref_audio=path, steps=2, seed=4, seconds=1.0)
    again = pipe.generate("someone speaks", speech="hello there", steps=2, seed=4, seconds=1.0)
    assert not np.array_equal(base.audio, cloned.audio)
    assert np.array_equal(base.audio, again.audio) and np.array_equal(base.frames, again.frames)
    assert not any("no speech is given" in n or "no effect" in n for n in cloned.notes), cloned.notes  # words to voice


def test_reference_audio_with_nothing_to_voice_says_so(pipe):
    """A reference voices the transcript's words: without a transcript, or with the audio given (A2V: kept as
    it is), it was taken without a word."""
    voice = _tone(1.5, 16000, 220.0)
    r = pipe.generate("someone speaks", ref_audio=voice, steps=1, seconds=0.5)
    assert any("no speech is given" in n for n in r.notes), r.notes
    r = pipe.generate("someone speaks", speech="hello", ref_audio=voice, audio=_tone(0.5, 16000, 330.0), steps=1)
    assert any("no effect on the sound with audio given (A2V)" in n for n in r.notes), r.notes
    max_ref = float(pipe.bundle.sampling.get("max_ref_seconds", 3.0))  # a longer one: said, as A2V says it
    r = pipe.generate("someone speaks", speech="hello", ref_audio=_tone(max_ref + 1.0, 16000), steps=1, seconds=0.5)
    assert f"ref_audio: used the first {max_ref:g} s of the reference ({max_ref + 1.0:.3g} s given)" in r.notes
    r = pipe.generate("someone speaks", speech="hello", ref_audio=_tone(max_ref, 16000), steps=1, seconds=0.5)
    assert not any("used the first" in n for n in r.notes), r.notes


def test_english_and_chinese_transcripts_and_unknown_characters(pipe, caplog):
    pipe.generate("a man speaks", speech="hello", steps=1, seconds=1.0)
    pipe.generate("a man speaks", speech="我们走吧", steps=1, seconds=1.0)
    r = pipe.generate("a man speaks", speech="hello \u2603 world", steps=1, seconds=1.0)
    assert np.isfinite(r.audio).all()
    assert any("unknown" in n and "\u2603" in n for n in r.notes), r.notes


def test_separate_captions(pipe):
    a = pipe.generate("x", video_caption="a red ball bounces twice", audio_caption="two wooden knocks", steps=2,
                      seconds=1.0)
    b = pipe.generate("x", video_caption="a red ball bounces twice", audio_caption="a single metallic clang", steps=2,
                      seconds=1.0)
    assert not np.array_equal(a.audio, b.audio)


def _write_exr(path, h=8, w=8):
    """A float image (OpenEXR): no 8-bit reading of it (16-bit PNGs are read)."""
    import av

    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("exr")
        s.width, s.height, s.pix_fmt = w, h, "gbrpf32le"
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.zeros((h, w, 3), np.float32), format="gbrpf32le")))
        c.mux(s.encode(None))


@pytest.mark.parametrize("flag,make,needle", [
    ("--audio", lambda p: p.write_text("not audio"), "audio"),
    ("--audio", lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "audio"),
    ("--video", lambda p: sf.write(p, _tone(0.5, 16000), 16000), "video"),
    ("--image", _write_exr, "image"),
    ("--ref-audio", lambda p: p.write_bytes(b"\x00" * 10), "audio"),
])
def test_bad_media_is_a_clean_exit_2(tiny_bundle, tmp_path, flag, make, needle):
    src = tmp_path / ("in.exr" if flag == "--image" else "in.wav")
    make(src)
    out = tmp_path / "o.mp4"
    r = subprocess.run([sys.executable, "-m", "harmony_rt.cli", "generate", "a red ball", "--bundle", str(tiny_bundle),
                        flag, str(src), "--steps", "1", "-o", str(out)], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr
    assert not out.exists()


def test_a2v_and_v2a_together_refused(pipe):
    with pytest.raises(HarmonyError):
        pipe.generate("x", audio=np.zeros(16000, np.float32), video=np.zeros((8, 32, 32, 3), np.uint8))
