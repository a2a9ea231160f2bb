"""load_clips decodes a sound file that several clips take and read_audio cannot seek (AAC ...) once for them all,
and cuts each clip from it: the same arrays and messages as load_clip reading each clip on its own."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from harmony_rt import media

pytest.importorskip("torch")

from train.data import folder as folder_mod  # noqa: E402
from train.data.folder import DataError, load_clip, load_clips, read_index  # noqa: E402

SR = 44100  # the files' rate; the clips are read at 16 kHz (resampled)


def _sound(seconds, seed=0):
    """[n] float32: a sweep with noise (FFmpeg's AAC encoder codes the noise with PNS)."""
    t = np.arange(int(seconds * SR))
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * 440 * t / SR * (1 + t / len(t))) + 0.05 * noise).astype(np.float32)


def _write(path, seconds, fps=10, delay=0.0, video=True, seed=0, fmt="mp4"):
    """An mp4 (or `fmt`) of `seconds`: 32x32 frames at `fps` (none where not `video`) and AAC sound from `delay` s
    on; frame i has the gray level 7 i mod 256."""
    with av.open(str(path), "w", format=fmt) as c:
        a = c.add_stream("aac", rate=SR, layout="mono")
        if video:
            vs = c.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
            for i in range(int(seconds * fps)):
                img = np.full((32, 32, 3), (7 * i) % 256, np.uint8)
                f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
                f.pts, f.time_base = i, Fraction(1, fps)
                c.mux(vs.encode(f))
            c.mux(vs.encode(None))
        x, off = _sound(seconds - delay, seed), int(delay * SR)
        for s in range(0, len(x), 1024):
            af = av.AudioFrame.from_ndarray(x[None, s:s + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = SR, off + s, Fraction(1, SR)
            c.mux(a.encode(af))
        c.mux(a.encode(None))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("once")
    _write(d / "long.mp4", 8.0, delay=0.3)  # its sound starts 0.3 s after its picture: silence before it
    _write(d / "short.mp4", 4.0, video=False, seed=1)  # AAC only, shorter than the picture it goes with
    media.write_wav(d / "a.wav", _sound(8.0, seed=2), SR)
    (d / "bad.m4a").write_bytes(b"not a media file at all" * 100)
    return d


def _index(d, *lines):
    (d / "clips.jsonl").write_text("\n".join(json.dumps({"caption": "c", **x}) for x in lines) + "\n")


@pytest.fixture
def reads(monkeypatch):
    """The files read_audio is called on from here on, by name."""
    out = []
    real = media.read_audio
    monkeypatch.setattr(media, "read_audio", lambda p, *a, **k: out.append(p.name) or real(p, *a, **k))
    return out


def test_an_aac_track_is_decoded_once_for_its_clips(folder, tmp_path, reads, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    for f in folder.iterdir():
        (d / f.name).symlink_to(f)
    _index(d, {"video": "long.mp4", "start": 0},  # before the sound starts: zeros first
           {"video": "long.mp4", "start": 2.3, "transcript": "hi"},
           {"video": "long.mp4", "audio": "a.wav", "start": 1.0},
           {"video": "long.mp4", "start": 5.0},
           {"video": "long.mp4", "speech": "long.mp4", "sfx": "a.wav", "start": 3.05},  # stems
           {"video": "long.mp4", "audio": "short.mp4", "start": 0.5},
           {"video": "long.mp4", "audio": "a.wav", "start": 4.0},
           {"video": "long.mp4", "audio": "short.mp4", "start": 1.75},
           {"video": "long.mp4", "start": 5.6})  # 0.4 s before the end of the sound
    before = [load_clip(e, 32, 32, 8, 16000, 2.0) for e in read_index(d)]  # each clip on its own, as before
    assert [reads.count(n) for n in ("long.mp4", "short.mp4", "a.wav")] == [5, 2, 3]
    del reads[:]
    clips = load_clips(d, 32, 32, 8, 16000, 2.0)
    assert [reads.count(n) for n in ("long.mp4", "short.mp4", "a.wav")] == [1, 1, 3]  # the wav is sought per clip
    assert not clips[0].sfx[:4000].any() and clips[0].sfx[5000:].any()  # 0.3 s of silence
    monkeypatch.setattr(folder_mod, "SHARED_WINDOW_S", 4.0)  # held a few seconds at a time: read in runs
    del reads[:]
    runs = load_clips(d, 32, 32, 8, 16000, 2.0)
    # long.mp4's clips start at 0 (-0.3), 1.95, 2.7, 4.7, 5.325 s of its sound: runs [0, 1.95] [2.7, 4.7] [5.325]
    assert [reads.count(n) for n in ("long.mp4", "short.mp4", "a.wav")] == [3, 1, 3]
    for got in (clips, runs):
        for i, (a, b) in enumerate(zip(before, got)):
            for k in ("frames", "audio", "speech", "sfx"):
                assert getattr(a, k).shape == getattr(b, k).shape and np.array_equal(getattr(a, k), getattr(b, k)), \
                    (i, k)
            assert (a.transcript, a.kind) == (b.transcript, b.kind)


def test_a_clip_past_the_end_of_a_shared_sound_says_so_as_before(folder, tmp_path, reads):
    d = tmp_path / "d"
    d.mkdir()
    for f in folder.iterdir():
        (d / f.name).symlink_to(f)
    index = d / "clips.jsonl"
    for start, message in [(3.0, "the sound of short.mp4 has 1.00 s from start 3 s; a clip needs 2 s (--seconds)"),
                           (5.0, "start 5 s is past the end of the sound of short.mp4 (4.00 s long)")]:
        _index(d, {"video": "long.mp4", "audio": "short.mp4", "start": 1.0},
               {"video": "long.mp4", "audio": "short.mp4", "start": start})
        with pytest.raises(DataError) as one:
            load_clip(read_index(d)[1], 32, 32, 8, 16000, 2.0)
        del reads[:]
        with pytest.raises(DataError) as all_:
            load_clips(d, 32, 32, 8, 16000, 2.0)
        assert str(all_.value) == str(one.value) == f"{index}:2: {message}"
        assert reads == ["short.mp4"]  # once, for both clips


def test_a_bad_shared_file_names_its_first_clip_as_before(folder, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for f in folder.iterdir():
        (d / f.name).symlink_to(f)
    _index(d, {"video": "long.mp4", "audio": "bad.m4a", "start": 1.0},
           {"video": "long.mp4", "audio": "bad.m4a", "start": 2.0})
    with pytest.raises(DataError) as one:
        load_clip(read_index(d)[0], 32, 32, 8, 16000, 2.0)
    with pytest.raises(DataError) as all_:
        load_clips(d, 32, 32, 8, 16000, 2.0)
    assert str(all_.value) == str(one.value) and str(one.value).startswith(f"{d / 'clips.jsonl'}:1: ")


def test_media_says_which_sound_it_seeks_and_where_streams_start(folder):
    """The two media helpers the shared read stands on (they replaced private imports from media)."""
    assert not media.audio_seekable(folder / "long.mp4")  # AAC: decoded from the start for any start=
    assert media.audio_seekable(folder / "a.wav")  # PCM: sought
    v, a = media.first_times(folder / "long.mp4")
    assert v == 0 and abs(float(a) - 0.3) < 0.03  # its sound starts 0.3 s after its picture (AAC priming aside)
    assert media.first_times(folder / "short.mp4")[0] is None  # no video stream
    assert media.first_times(folder / "a.wav")[0] is None and media.first_times(folder / "a.wav")[1] == 0


def test_a_video_media_cannot_seek_is_decoded_once_for_its_clips(tmp_path, monkeypatch):
    """MPEG-TS (broadcast recordings) is not sought: read_video decoded it from its start for every clip. Now once
    per run of clips (SHARED_FRAMES_BYTES of frames at most), the same frames as each clip read on its own."""
    d = tmp_path / "ts"
    d.mkdir()
    _write(d / "rec.ts", 9.0, fmt="mpegts")
    assert not media.video_seekable(d / "rec.ts", 8) and not media.audio_seekable(d / "rec.ts")
    _write(d / "cfr.mp4", 2.0)
    assert media.video_seekable(d / "cfr.mp4", 8)  # another rate than its own: sought
    _index(d, *({"video": "rec.ts", "start": t} for t in (0.0, 4.5, 1.25, 6.0, 3.0)))
    frames_read = []
    real = media.read_video
    monkeypatch.setattr(media, "read_video", lambda p, *a, **k: frames_read.append(p.name) or real(p, *a, **k))
    before = [load_clip(e, 32, 32, 8, 16000, 2.0) for e in read_index(d)]
    assert len(frames_read) == 5
    for limit, reads in ((folder_mod.SHARED_FRAMES_BYTES, 1), (32 * 32 * 3 * 40, 2)):  # 40 frames: runs of 5 s
        monkeypatch.setattr(folder_mod, "SHARED_FRAMES_BYTES", limit)
        del frames_read[:]
        clips = load_clips(d, 32, 32, 8, 16000, 2.0)
        assert len(frames_read) == reads
        for a, b in zip(before, clips):
            assert a.frames.shape == b.frames.shape == (16, 32, 32, 3) and np.array_equal(a.frames, b.frames)
            assert np.array_equal(a.audio, b.audio)
    assert [int(c.frames[0, 0, 0, 0]) for c in clips] != [int(clips[0].frames[0, 0, 0, 0])] * 5  # distinct clips
