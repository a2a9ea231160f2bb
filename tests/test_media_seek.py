"""Reading from a late start (read_video start_frame=, read_audio start=, load_clip's `start`): exactly the frames
and samples a full read gives from there, with the file sought where that is exact instead of decoded from its
beginning."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from harmony_rt import media
from harmony_rt.errors import MediaError

SECONDS, SR = 30, 44100
STARTS = [0, 1.3, 7.77, 12.0, 20.0, 29.8, 31.0]  # seconds; 12 s: on a keyframe; 29.8: near the end; 31: past it


def _frames(t, h=48, w=64):
    """[h, w, 3] uint8 frames that differ from one another everywhere (a wrong frame cannot compare equal)."""
    y, x = np.mgrid[0:h, 0:w]
    for i in range(t):
        v = (3 * i + 2 * x + y + 40 * np.sin(i / 7 + x / 9)) % 256
        yield np.stack([v, (v + 85) % 256, 255 - v], -1).astype(np.uint8)


def _sound(n, seed=0):
    """[n] float32: a sweep with noise (FFmpeg's AAC encoder codes the noise with PNS)."""
    t = np.arange(n)
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.3 * np.sin(2 * np.pi * 440 * t / SR * (1 + t / n)) + 0.05 * noise).astype(np.float32)


def _write(path, fps, gop, acodec="aac", fmt="mp4", channels=1, times=None, x264=""):
    """SECONDS of video at `fps` (keyframes every `gop` frames; `times`: each frame's seconds instead of i / fps)
    with a SR sound track in `acodec` (None: none)."""
    rate = Fraction(fps)
    n = len(times) if times is not None else int(SECONDS * rate)
    tb = Fraction(1, 1000) if times is not None else 1 / rate
    sound = np.stack([_sound(SECONDS * SR, seed) for seed in range(channels)])  # [C, W]
    with av.open(str(path), "w", format=fmt) as c:
        vs = c.add_stream("libx264", rate=rate, options={"g": str(gop), **({"x264-params": x264} if x264 else {})})
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.codec_context.time_base = tb
        aus = c.add_stream(acodec, rate=SR, layout="mono" if channels == 1 else "stereo") if acodec else None
        done = 0
        for i, img in enumerate(_frames(n)):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            vf.pts, vf.time_base = (round(times[i] / tb) if times is not None else i), tb
            c.mux(vs.encode(vf))
            upto = min(sound.shape[1], round((i + 1) * SR / rate))
            if aus is not None and upto > done:
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound[:, done:upto]), format="fltp",
                                                layout=aus.layout.name)
                af.sample_rate, af.pts, af.time_base = SR, done, Fraction(1, SR)
                c.mux(aus.encode(af))
                done = upto
        if aus is not None:
            c.mux(aus.encode(None))
        c.mux(vs.encode(None))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("seek")
    gaps = 0.04 + 0.02 * (np.arange(700) % 7 == 0) + 1.0 * (np.arange(700) == 300)  # jitter, a 1 s hole
    x48 = _sound(48000 * SECONDS, seed=3)
    sf.write(d / "a48.wav", x48, 48000, subtype="PCM_16")
    sf.write(d / "a48.flac", x48, 48000)
    return {
        # 2 s GOPs; B-frames in a pyramid, open GOPs (leading frames refer to the GOP before)
        "25.mp4": _write(d / "25.mp4", 25, 50, x264="open-gop=1:bframes=3:b-pyramid=normal"),
        "ntsc.mp4": _write(d / "ntsc.mp4", Fraction(30000, 1001), 60),
        "pcm.mov": _write(d / "pcm.mov", 25, 50, acodec="pcm_s16le", fmt="mov", channels=2),
        "25.mkv": _write(d / "25.mkv", 25, 50, fmt="matroska"),
        # variable frame rate, first frame at 0.5 s: the output's grid starts there
        "vfr.mp4": _write(d / "vfr.mp4", 25, 50, acodec=None, times=0.5 + np.concatenate([[0], np.cumsum(gaps[:-1])])),
        "a48.wav": d / "a48.wav",
        "a48.flac": d / "a48.flac",
    }


class _Counting:
    """A PyAV input container that counts the frames decoded through it and records its seeks."""

    def __init__(self, container):
        self._c, self.decoded, self.seeks = container, 0, []

    def __getattr__(self, name):
        return getattr(self._c, name)

    def __enter__(self):
        self._c.__enter__()
        return self

    def __exit__(self, *exc):
        return self._c.__exit__(*exc)

    def seek(self, offset, **kw):
        self.seeks.append(offset)
        return self._c.seek(offset, **kw)

    def decode(self, *args, **kw):
        for frame in self._c.decode(*args, **kw):
            self.decoded += 1
            yield frame


@pytest.fixture
def opened(monkeypatch):
    """The containers media opens from here on, counting (see _Counting)."""
    out = []
    real = media._open
    monkeypatch.setattr(media, "_open", lambda p: out.append(_Counting(real(p))) or out[-1])
    return out


# ------------------------------------------------------------------------------------------------- video


@pytest.mark.parametrize("name, fps", [("25.mp4", 25), ("25.mp4", 8), ("ntsc.mp4", Fraction(30000, 1001)),
                                       ("ntsc.mp4", 24), ("pcm.mov", 25), ("25.mkv", 25), ("25.mkv", 8),
                                       ("vfr.mp4", 8), ("vfr.mp4", 25)])
def test_video_from_a_late_start_is_a_full_reads_slice(files, name, fps):
    """At the source's rate (frames as decoded) and resampled (nearest by time, on the grid from the first
    frame), in mp4 / mov / Matroska, constant and variable rate: frames [k:k + n] of a full read, bit for bit."""
    full, _ = media.read_video(files[name], fps, 24, 32)  # [T, 24, 32, 3]
    ks = {int(round(s * float(fps))) for s in STARTS}
    ks |= {int(round(12 * float(fps))) + d for d in (-2, -1, 1, 2)}  # around a keyframe
    for k in sorted(ks):
        got, _ = media.read_video(files[name], fps, 24, 32, max_frames=10, start_frame=k)
        assert got.shape == full[k:k + 10].shape and np.array_equal(got, full[k:k + 10]), (name, fps, k)
    got, _ = media.read_video(files[name], fps, 24, 32, start_frame=int(20 * float(fps)))  # to the end
    assert np.array_equal(got, full[int(20 * float(fps)):])


def test_video_seeks_to_a_late_start(files, opened):
    """A start 20 s in decodes from the keyframe before it, not the 20 s before; one 1.3 s in decodes from the
    file's start (seeking would save little) but converts only the frames it returns."""
    f = files["ntsc.mp4"]
    media.read_video(f, 24, 24, 32)
    everything = opened[-1].decoded
    assert everything == 899 and not opened[-1].seeks

    for fps in (24, Fraction(30000, 1001)):  # resampled, and as decoded
        media.read_video(f, fps, 24, 32, max_frames=10, start_frame=int(20 * float(fps)))
        assert len(opened[-1].seeks) == 1 and opened[-1].decoded < 150, (fps, opened[-1].decoded)

    converted = []
    real = media._to_rgb
    media_to_rgb = lambda *a: converted.append(1) or real(*a)  # noqa: E731
    with pytest.MonkeyPatch.context() as m:
        m.setattr(media, "_to_rgb", media_to_rgb)
        got, _ = media.read_video(f, 24, 24, 32, max_frames=10, start_frame=31)
    assert len(got) == 10 and not opened[-1].seeks and len(converted) <= 11


def test_video_seeks_only_where_frames_can_be_counted(files, opened):
    """At the source's rate frames are numbered as decoded: after a seek that takes an index listing every frame
    at one spacing (mp4), so a variable-rate mp4 and a Matroska file (its index: keyframes only) are decoded from
    their start; resampled, they are sought (times are all it needs)."""
    for name in ("vfr.mp4", "25.mkv"):
        with av.open(str(files[name])) as c:
            fps = c.streams.video[0].average_rate  # the source's rate: frames as decoded
        media.read_video(files[name], fps, 24, 32, max_frames=10, start_frame=int(20 * float(fps)))
        assert not opened[-1].seeks and opened[-1].decoded > 20 * fps, name
        full, _ = media.read_video(files[name], fps, 24, 32)
        for k in (int(7.77 * fps), int(20 * fps)):
            got, _ = media.read_video(files[name], fps, 24, 32, max_frames=10, start_frame=k)
            assert np.array_equal(got, full[k:k + 10]), (name, k)
        media.read_video(files[name], 8, 24, 32, max_frames=10, start_frame=160)
        assert opened[-1].seeks, name


def test_video_start_past_the_end_and_bad_start_frames(files):
    got, notes = media.read_video(files["25.mp4"], 8, 24, 32, start_frame=10_000)
    assert got.shape == (0, 24, 32, 3) and got.dtype == np.uint8 and notes == []
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(MediaError, match="start_frame must be an integer >= 0"):
            media.read_video(files["25.mp4"], 8, 24, 32, start_frame=bad)


# ------------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("name", ["25.mp4", "ntsc.mp4", "pcm.mov", "a48.wav", "a48.flac", "25.mkv"])
@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_audio_from_a_late_start_is_a_full_reads_slice(files, name, rate):
    """AAC in mp4 / Matroska (decoded from the start), stereo PCM in mov, 16-bit wav, FLAC (sought), resampled or
    not: a full read's samples from round(start * rate), bit for bit; with max_seconds, its first max_seconds."""
    full = media.read_audio(files[name], rate)  # [W]
    for s in STARTS:
        s0 = round(s * rate)
        got = media.read_audio(files[name], rate, start=s)
        assert got.dtype == np.float32 and np.array_equal(got, full[s0:]), (name, rate, s)
        head = media.read_audio(files[name], rate, start=s, max_seconds=2.0)
        n = min(2 * rate, len(full) - s0)
        assert len(head) >= n and np.array_equal(head[:max(0, n)], full[s0:s0 + n]), (name, rate, s)


@pytest.mark.parametrize("name, sought", [("pcm.mov", True), ("a48.wav", True), ("a48.flac", True),
                                          ("25.mp4", False), ("25.mkv", False)])
def test_audio_seeks_only_where_that_is_sample_exact(files, opened, name, sought):
    """PCM and FLAC (each packet decodes alone; timestamps count samples) are sought to HEAD_MARGIN_S before the
    start. AAC is decoded from the start (its noise substitution's random generator runs through the whole
    stream, so a sought decode differs), but only what is kept is converted and resampled."""
    media.read_audio(files[name], 16000)
    everything = opened[-1].decoded
    converted = []
    real = media._audio_to_float
    with pytest.MonkeyPatch.context() as m:
        m.setattr(media, "_audio_to_float", lambda fr: converted.append(fr.samples) or real(fr))
        media.read_audio(files[name], 16000, start=20.0, max_seconds=2.0)
    assert bool(opened[-1].seeks) == sought
    assert (opened[-1].decoded < everything / 4) == sought, (opened[-1].decoded, everything)
    rate = 48000 if name.startswith("a48") else SR
    assert sum(converted) < (2 + 2 * media.HEAD_MARGIN_S + 0.2) * rate  # not the 20 s before


def test_audio_start_past_the_end_and_bad_starts(files):
    assert media.read_audio(files["a48.flac"], 16000, start=31.0).shape == (0,)
    assert media.read_audio(files["25.mp4"], 16000, start=1e6).shape == (0,)
    for bad in (-1.0, float("nan"), float("inf"), True, "3"):
        with pytest.raises(MediaError, match="start must be a number of seconds >= 0"):
            media.read_audio(files["a48.wav"], 16000, start=bad)


# ------------------------------------------------------------------------------------------------- training data


def test_load_clip_late_in_a_long_file_reads_as_from_full_reads(files, tmp_path, opened):
    """A clip 20.5 s into a 30 s file (its own AAC sound, then another file's FLAC) is what full reads of the files
    give from there; the video and the FLAC are sought."""
    pytest.importorskip("torch")
    from train.data.folder import _audio_lead, load_clip, read_index

    d = tmp_path / "data"
    d.mkdir()
    for n in ("ntsc.mp4", "a48.flac"):
        (d / n).symlink_to(files[n])
    (d / "clips.jsonl").write_text(json.dumps({"video": "ntsc.mp4", "caption": "c", "start": 20.5}) + "\n"
                                   + json.dumps({"video": "ntsc.mp4", "audio": "a48.flac", "caption": "c",
                                                 "start": 20.5}) + "\n")
    own, other = read_index(d)
    fps, sr, seconds = 8, 16000, 2.0
    f0, n, w = 164, 16, 32000  # 20.5 s on the 8 fps grid; 2 s
    frames = media.read_video(d / "ntsc.mp4", fps, 32, 32)[0][f0:f0 + n]
    lead = _audio_lead(d / "ntsc.mp4")
    for e, path, w0 in [(own, "ntsc.mp4", round((f0 / fps - lead) * sr)), (other, "a48.flac", round(f0 / fps * sr))]:
        sound = media.read_audio(d / path, sr)[w0:w0 + w]
        del opened[:]
        clip = load_clip(e, 32, 32, fps, sr, seconds)
        assert np.array_equal(clip.frames, frames) and np.array_equal(clip.audio, sound), path
        assert opened[0].seeks and opened[0].decoded < 150  # the video
        assert bool(opened[-1].seeks) == path.endswith(".flac")  # the sound: FLAC sought, AAC decoded


def test_load_clip_past_the_end_says_so_in_one_line(files, tmp_path):
    pytest.importorskip("torch")
    from train.data.folder import DataError, load_clip, read_index

    d = tmp_path / "data"
    d.mkdir()
    (d / "v.mp4").symlink_to(files["25.mp4"])
    (d / "clips.jsonl").write_text(json.dumps({"video": "v.mp4", "caption": "c", "start": 40}) + "\n"
                                   + json.dumps({"video": "v.mp4", "caption": "c", "start": 29}) + "\n")
    late, short = read_index(d)
    with pytest.raises(DataError) as ei:
        load_clip(late, 32, 32, 8, 16000, 2.0)
    assert str(ei.value) == f"{d / 'clips.jsonl'}:1: start 40 s is past the end of v.mp4 (30.00 s long)"
    with pytest.raises(DataError, match=r"clips.jsonl:2: v.mp4 has 1.00 s from start 29 s; a clip needs 2 s"):
        load_clip(short, 32, 32, 8, 16000, 2.0)
