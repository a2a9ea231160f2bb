"""harmony_rt.media: mp4/wav/image round trips, resampling, notes, one-line MediaErrors, atomic writes."""

import os
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from harmony_rt import media
from harmony_rt.errors import HarmonyError, MediaError

SR = 16000


def tone(freq=440.0, seconds=2.0, sr=SR, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def smooth_frames(t=16, h=32, w=32):
    """Slowly drifting smooth colour ramps: h264/yuv420p should reproduce them closely."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = [np.stack([60 + 120 * x + 2 * i, 80 + 100 * y, 100 + 50 * (x + y) - i], -1) for i in range(t)]
    return np.stack(out).round().astype(np.uint8)


def index_frames(t, h=16, w=16):
    """Frame i is flat gray 8 * i + 20: its index can be read back through lossy coding."""
    return np.repeat((8 * np.arange(t) + 20).astype(np.uint8), h * w * 3).reshape(t, h, w, 3)


def frame_indices(frames):
    return np.round((frames.reshape(len(frames), -1).mean(1) - 20) / 8).astype(int).tolist()


def expect_error(fn, *args, match, **kw):
    with pytest.raises(MediaError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and match in msg, msg
    assert isinstance(ei.value, HarmonyError)
    return msg


def png_bytes(w, h, bitdepth, colortype, rows, extra=b""):
    """A minimal PNG written by hand (filter 0 on every row)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0))
            + b"".join(chunk(t, d) for t, d in extra) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_png_pyav(path, arr, fmt):
    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = arr.shape[1], arr.shape[0], fmt
        c.mux(s.encode(av.VideoFrame.from_ndarray(arr, format=fmt)))
        c.mux(s.encode(None))


# ------------------------------------------------------------------------------------------------ mp4


def test_mp4_round_trip(tmp_path):
    frames, audio = smooth_frames(), tone()
    out = tmp_path / "clip.mp4"
    media.write_mp4(out, frames, 8, audio, SR)
    info = media.probe(out)
    v, a = info["video"], info["audio"]
    assert (v["frames"], v["width"], v["height"], v["codec"]) == (16, 32, 32, "h264")
    assert v["fps"] == pytest.approx(8.0)
    assert abs(v["duration"] - 2.0) <= 1 / 8
    assert (a["sample_rate"], a["codec"], a["channels"]) == (SR, "aac", 1)
    assert abs(a["duration"] - 2.0) <= 0.05
    with av.open(str(out)) as c:
        assert (len(c.streams.video), len(c.streams.audio)) == (1, 1)

    got, notes = media.read_video(out, 8, 32, 32)
    assert got.shape == frames.shape and got.dtype == np.uint8 and notes == []
    err = np.abs(got.astype(int) - frames.astype(int))
    assert err.mean() < 3 and np.percentile(err, 99) < 10

    back = media.read_audio(out, SR)
    assert back.dtype == np.float32 and back.shape == audio.shape  # AAC padding trimmed to the muxed duration
    assert np.corrcoef(back, audio)[0, 1] > 0.99
    # aligned (no priming offset); the AAC encoder needs ~2 frames to settle at the very start
    assert np.abs(back[2048:-2048] - audio[2048:-2048]).max() < 0.01


def test_mp4_fractional_fps_odd_size_stereo_and_unusual_rate(tmp_path):
    out = tmp_path / "odd.mp4"
    frames = smooth_frames(t=10, h=31, w=29)
    stereo = np.stack([tone(seconds=0.5, sr=37800), tone(660, seconds=0.5, sr=37800)], 1)  # AAC has no 37800
    media.write_mp4(out, frames, 30000 / 1001, stereo, 37800)
    info = media.probe(out)
    assert (info["video"]["width"], info["video"]["height"], info["video"]["frames"]) == (30, 32, 10)
    assert info["video"]["fps"] == pytest.approx(30000 / 1001, rel=1e-6)
    assert info["video"]["duration"] == pytest.approx(10 * 1001 / 30000, abs=1001 / 30000)
    assert (info["audio"]["sample_rate"], info["audio"]["channels"]) == (48000, 2)
    assert info["audio"]["duration"] == pytest.approx(0.5, abs=0.01)
    got, _ = media.read_video(out, Fraction(30000, 1001), 32, 30)
    assert np.abs(got[:, :31, :29].astype(int) - frames.astype(int)).mean() < 3


def test_mp4_video_only_and_audio_only_errors(tmp_path):
    silent = tmp_path / "silent.mp4"
    media.write_mp4(silent, index_frames(4), 4)
    assert media.probe(silent)["audio"] is None
    expect_error(media.read_audio, silent, SR, match="no audio stream")

    audio_only = tmp_path / "audio_only.mp4"
    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=SR, layout="mono")
        f = av.AudioFrame.from_ndarray(tone(seconds=0.5)[None], format="fltp", layout="mono")
        f.sample_rate, f.pts, f.time_base = SR, 0, Fraction(1, SR)  # pts: the muxer writes the priming edit list
        c.mux(s.encode(f))
        c.mux(s.encode(None))
    assert media.probe(audio_only)["video"] is None
    msg = expect_error(media.read_video, audio_only, 8, 16, 16, match="no video stream")
    assert "audio_only.mp4" in msg
    assert media.read_audio(audio_only, SR).shape == (SR // 2,)


def test_write_mp4_rejects_bad_input_before_touching_disk(tmp_path):
    out = tmp_path / "bad.mp4"
    expect_error(media.write_mp4, out, index_frames(2).astype(np.float32), 8, match="uint8")
    expect_error(media.write_mp4, out, index_frames(2)[..., :2], 8, match="[T, H, W, 3]")
    expect_error(media.write_mp4, out, index_frames(2), 0, match="fps")
    expect_error(media.write_mp4, out, index_frames(2), 8, tone(), None, match="sample_rate")
    expect_error(media.write_mp4, out, index_frames(2), 8, np.full(10, np.nan, np.float32), SR, match="NaN")
    assert list(tmp_path.iterdir()) == []


def test_write_mp4_needs_an_mp4_name(tmp_path):
    for name in ("clip.avi", "clip", "clip.mp4.part"):
        assert name in expect_error(media.write_mp4, tmp_path / name, index_frames(2), 8, match="must end in .mp4")
    assert list(tmp_path.iterdir()) == []
    media.write_mp4(tmp_path / "CLIP.MP4", index_frames(2), 8)  # any case
    assert media.probe(tmp_path / "CLIP.MP4")["video"]["frames"] == 2


# ------------------------------------------------------------------------------------------------ atomic


class _ExplodingFrames(np.ndarray):
    """Frames that raise on the last frame (mid-encode), after recording what the output folder held."""

    def __getitem__(self, i):
        if i == len(self) - 1:
            self.seen = sorted(p.name for p in self.folder.iterdir())
            raise self.exc("boom")
        return np.asarray(self)[i]


@pytest.mark.parametrize("exc", [ZeroDivisionError, KeyboardInterrupt])
def test_failed_write_leaves_no_file_and_keeps_old_output(tmp_path, exc):
    frames = index_frames(64).view(_ExplodingFrames)  # long enough for x264's lookahead to emit packets
    frames.folder, frames.exc = tmp_path, exc
    audio = tone(seconds=64 / 8)
    with pytest.raises(exc):
        media.write_mp4(tmp_path / "new.mp4", frames, 8, audio, SR)
    assert len(frames.seen) == 1 and frames.seen[0].startswith(".new.") and frames.seen[0].endswith(".mp4")
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old.mp4"
    old.write_bytes(b"previous")
    with pytest.raises(exc):
        media.write_mp4(old, frames, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["old.mp4"] and old.read_bytes() == b"previous"


def test_atomic_output_replaces_on_success_and_cleans_on_error(tmp_path):
    target = tmp_path / "x.bin"
    target.write_text("old")
    with media.atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".bin" and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    with pytest.raises(KeyboardInterrupt), media.atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_a_failed_write_names_its_target_and_a_full_disk_is_exit_1(tmp_path, monkeypatch):
    """A writer fails on its temp file: the error names the file the user asked for, and a full disk (libsndfile
    says only "System error.") is a DiskError (exit 1: not a usage error), the temp files gone either way."""
    import shutil

    from harmony_rt.errors import DiskError

    def fail_like_libsndfile(tmp):
        with media._converting(tmp, "write"):
            raise sf.LibsndfileError(1, "System error.")

    target = tmp_path / "clip.wav"
    # a pseudo filesystem (/proc: no space at all) is not a full disk
    for total, free, kind in ((1 << 31, 1 << 30, MediaError), (0, 0, MediaError), (1 << 31, 4096, DiskError)):
        monkeypatch.setattr(shutil, "disk_usage",
                            lambda p, total=total, free=free: shutil._ntuple_diskusage(total, 0, free))
        with pytest.raises(MediaError) as e, media.atomic_outputs(target) as (tmp,):
            tmp.write_bytes(b"half")
            fail_like_libsndfile(tmp)
        assert type(e.value) is kind and str(e.value).startswith(f"cannot write {target}: "), e.value
        assert tmp.name not in str(e.value) and list(tmp_path.iterdir()) == []
    assert "the disk is full: 4096 bytes free" in str(e.value) and e.value.exit_code == 1


def test_longest_legal_names_are_written_and_longer_ones_refused(tmp_path):
    """The temp name (".<stem>.<token><suffix>") is cut to fit the filesystem; the target's is not."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    long_mp4 = tmp_path / ("v" * (name_max - 4) + ".mp4")
    media.write_mp4(long_mp4, index_frames(2), 8, tone(seconds=0.25), SR)
    assert media.probe(long_mp4)["video"]["frames"] == 2
    long_wav = tmp_path / ("\u00e9" * ((name_max - 4) // 2) + ".wav")  # 2-byte characters: the cut keeps them whole
    media.write_wav(long_wav, tone(seconds=0.1), SR)
    assert np.abs(media.read_audio(long_wav, SR) - tone(seconds=0.1)).max() < 1e-4
    assert sorted(tmp_path.iterdir()) == sorted([long_mp4, long_wav])

    too_long = "v" * (name_max - 3) + ".mp4"
    msg = expect_error(media.write_mp4, tmp_path / too_long, index_frames(2), 8, match="file name too long")
    assert too_long in msg
    expect_error(media.write_wav, tmp_path / ("a" * name_max + ".wav"), tone(), SR, match="file name too long")
    assert sorted(tmp_path.iterdir()) == sorted([long_mp4, long_wav])


def test_unwritable_destination(tmp_path):
    missing = tmp_path / "nope" / "out.mp4"
    expect_error(media.write_mp4, missing, index_frames(2), 8, match="cannot write")
    expect_error(media.write_wav, tmp_path / "nope" / "a.wav", tone(), SR, match="does not exist")
    with pytest.raises(MediaError), media.atomic_output(missing):
        pass
    assert not (tmp_path / "nope").exists()


# ------------------------------------------------------------------------------------------------ wav / audio


def test_wav_round_trip_pcm16_and_float(tmp_path):
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1.2, 1.2, 4000).astype(np.float32)  # out-of-range values get clipped
    media.write_wav(tmp_path / "a.wav", audio, SR)
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.subtype, info.samplerate, info.frames, info.channels) == ("PCM_16", SR, 4000, 1)
    back = media.read_audio(tmp_path / "a.wav", SR)
    assert np.abs(back - np.clip(audio, -1, 1)).max() <= 1.5 / 32768
    assert back.min() >= -1 and back.max() <= 1

    media.write_wav(tmp_path / "f.wav", audio, SR, subtype="FLOAT")
    assert np.array_equal(media.read_audio(tmp_path / "f.wav", SR), np.clip(audio, -1, 1))

    stereo = np.stack([tone(seconds=0.1), -0.5 * tone(seconds=0.1)], 1)
    media.write_wav(tmp_path / "s.wav", stereo, SR, subtype="FLOAT")
    assert sf.info(str(tmp_path / "s.wav")).channels == 2
    np.testing.assert_allclose(media.read_audio(tmp_path / "s.wav", SR), stereo.mean(1), atol=1e-7)
    expect_error(media.write_wav, tmp_path / "x.wav", audio, SR, subtype="ULAW", match="subtype")


def test_read_audio_same_rate_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(SR) * 0.3).astype(np.float32)
    sf.write(str(tmp_path / "f.wav"), audio, SR, subtype="FLOAT")  # written by soundfile, not by us
    got = media.read_audio(tmp_path / "f.wav", SR)
    assert got.dtype == np.float32 and np.array_equal(got, audio)


def test_read_audio_resamples_and_keeps_pitch(tmp_path):
    src = tone(1000.0, seconds=1.5, sr=22050)
    sf.write(str(tmp_path / "t.wav"), src, 22050, subtype="PCM_16")
    got = media.read_audio(tmp_path / "t.wav", SR)
    assert got.shape == (round(len(src) * SR / 22050),)
    spec = np.abs(np.fft.rfft(got * np.hanning(len(got))))
    peak_hz = np.argmax(spec) * SR / len(got)
    assert abs(peak_hz - 1000.0) < 2
    assert np.abs(got[2000:-2000]).max() == pytest.approx(0.5, abs=0.02)  # level kept
    up = media.read_audio(tmp_path / "t.wav", 48000)
    assert up.shape == (round(len(src) * 48000 / 22050),)


@pytest.mark.parametrize("rate,subtype", [(16000, "PCM_16"), (44100, "PCM_16"), (48000, "FLOAT")])
def test_read_audio_head_of_a_long_file(tmp_path, rate, subtype):
    """max_seconds decodes about that much (+ HEAD_MARGIN_S) and gives the same head as a full read, at the
    file's rate and resampled."""
    x = (np.random.default_rng(0).standard_normal(rate * 60) * 0.1).astype(np.float32)  # 60 s
    f = tmp_path / "long.wav"
    sf.write(f, x, rate, subtype=subtype)
    full = media.read_audio(f, 16000)
    head = media.read_audio(f, 16000, max_seconds=2.0)
    assert len(full) == 60 * 16000
    assert 2 * 16000 < len(head) < (2 + media.HEAD_MARGIN_S + 0.2) * 16000
    assert np.array_equal(full[: 2 * 16000], head[: 2 * 16000])
    short = media.read_audio(f, 16000, max_seconds=100.0)  # longer than the file: everything
    assert np.array_equal(short, full)


def test_read_audio_errors(tmp_path):
    expect_error(media.read_audio, tmp_path / "missing.wav", SR, match="no such file")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    assert "notes.wav" in expect_error(media.read_audio, text, SR, match="cannot read")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), SR)
    assert empty.stat().st_size > 0
    expect_error(media.read_audio, empty, SR, match="zero-length")
    expect_error(media.read_audio, tmp_path, SR, match="is a directory")
    expect_error(media.read_audio, text, 0, match="sample_rate")


@pytest.mark.parametrize("read", [lambda p: media.read_audio(p, SR), lambda p: media.read_video(p, 8, 16, 16),
                                  lambda p: media.read_image(p, 16, 16), media.probe],
                         ids=["read_audio", "read_video", "read_image", "probe"])
def test_empty_file_says_so(tmp_path, read):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert "empty.mp4" in expect_error(read, empty, match="is empty")


# ------------------------------------------------------------------------------------------------ video


def test_read_video_passthrough_is_exactly_as_decoded(tmp_path):
    out = tmp_path / "v.mp4"
    media.write_mp4(out, smooth_frames(t=12), 12)
    with av.open(str(out)) as c:
        ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    got, notes = media.read_video(out, 12, 32, 32)
    assert notes == [] and np.array_equal(got, ref)


def test_read_video_time_resampling_picks_nearest_frame(tmp_path):
    out = tmp_path / "idx.mp4"
    media.write_mp4(out, index_frames(24), 24)  # 1 s at 24 fps
    got, notes = media.read_video(out, 8, 16, 16)
    assert notes == ["resampled 24 fps -> 8 fps"]
    assert frame_indices(got) == list(range(0, 24, 3))
    got, _ = media.read_video(out, 10, 16, 16)  # non-integer ratio (no ties): source index round(2.4 k)
    assert frame_indices(got) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 22]
    got, _ = media.read_video(out, 60, 16, 16)  # upsampling repeats frames, covers the same 1 s
    assert frame_indices(got) == [min(23, int(np.floor(0.4 * k + 0.5))) for k in range(60)]


def test_read_video_trim_resize_notes(tmp_path):
    out = tmp_path / "long.mp4"
    media.write_mp4(out, index_frames(30, h=24, w=40), 10)
    got, notes = media.read_video(out, 10, 12, 20, max_frames=8)
    assert got.shape == (8, 12, 20, 3)
    assert notes == ["resized 40x24 -> 20x12", "trimmed 30 -> 8 frames"]
    assert frame_indices(got) == list(range(8))
    got, notes = media.read_video(out, 5, 24, 40, max_frames=4)
    assert notes == ["resampled 10 fps -> 5 fps", "trimmed 15 -> 4 frames"]
    assert frame_indices(got) == [0, 2, 4, 6]
    got, notes = media.read_video(out, 10, 24, 40, max_frames=30)  # exactly fits: not trimmed
    assert len(got) == 30 and notes == []


def test_read_video_errors(tmp_path):
    expect_error(media.read_video, tmp_path / "nope.mp4", 8, 16, 16, match="no such file")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    expect_error(media.read_video, bad, 8, 16, 16, match="bad.mp4")
    wav = tmp_path / "a.wav"
    media.write_wav(wav, tone(seconds=0.2), SR)
    expect_error(media.read_video, wav, 8, 16, 16, match="no video stream")
    expect_error(media.probe, bad, match="bad.mp4")


@pytest.mark.parametrize("h,w", [(2, 5000), (5000, 2)])
def test_read_video_extreme_aspect_ratio(tmp_path, h, w):
    out = tmp_path / "thin.mp4"
    media.write_mp4(out, np.full((2, h, w, 3), 120, np.uint8), 8)
    got, notes = media.read_video(out, 8, 64, 64)
    assert got.shape == (2, 64, 64, 3) and notes == [f"resized {w}x{h} -> 64x64"]
    assert np.abs(got.astype(int) - 120).max() <= 3


# ------------------------------------------------------------------------------------------------ images


def test_read_image_modes(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    write_png_pyav(tmp_path / "rgb.png", rgb, "rgb24")
    assert np.array_equal(media.read_image(tmp_path / "rgb.png", 6, 8), rgb)

    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    write_png_pyav(tmp_path / "rgba.png", rgba, "rgba")
    notes = []
    assert np.array_equal(media.read_image(tmp_path / "rgba.png", 6, 8, notes), rgba[..., :3])
    assert notes == ["dropped the alpha channel (rgba)"]
    rgba[..., 3] = 255  # fully opaque (as every GIF decodes, bgra): nothing is dropped that was seen
    write_png_pyav(tmp_path / "opaque.png", rgba, "rgba")
    notes = []
    assert np.array_equal(media.read_image(tmp_path / "opaque.png", 6, 8, notes), rgba[..., :3])
    assert notes == []

    gray = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    write_png_pyav(tmp_path / "gray.png", gray, "gray")
    assert np.array_equal(media.read_image(tmp_path / "gray.png", 6, 8), np.repeat(gray[..., None], 3, 2))

    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    idx = rng.integers(0, 4, (5, 7), dtype=np.uint8)
    (tmp_path / "pal.png").write_bytes(png_bytes(7, 5, 8, 3, [r.tobytes() for r in idx],
                                                 extra=[(b"PLTE", palette.tobytes())]))
    assert np.array_equal(media.read_image(tmp_path / "pal.png", 5, 7), palette[idx])

    notes = []
    small = media.read_image(tmp_path / "rgb.png", 3, 4, notes)
    assert notes == ["resized 8x6 -> 4x3"]
    assert small.shape == (3, 4, 3) and small.dtype == np.uint8
    assert abs(small.astype(float).mean() - rgb.astype(float).mean()) < 3  # area resize keeps the mean


def test_read_image_16_bit_reduced_to_8(tmp_path):
    g16 = (np.arange(35).reshape(5, 7) * 1000).astype(">u2")  # PNG's samples are big-endian
    (tmp_path / "g16.png").write_bytes(png_bytes(7, 5, 16, 0, [r.tobytes() for r in g16]))
    notes = []
    got = media.read_image(tmp_path / "g16.png", 5, 7, notes)
    expect = np.repeat(g16.astype(float)[..., None] / 257, 3, 2)  # 16 -> 8 bits (swscale dithers: within 1.5)
    assert np.abs(got.astype(float) - expect).max() < 1.5
    assert notes == ["reduced 16-bit samples to 8 bits (gray16be)"]

    rng = np.random.default_rng(3)
    rgb48 = rng.integers(0, 65536, (4, 6, 3)).astype(np.uint16)
    write_png_pyav(tmp_path / "rgb48.png", rgb48, "rgb48be")
    got = media.read_image(tmp_path / "rgb48.png", 4, 6)
    assert got.dtype == np.uint8 and np.abs(got.astype(float) - rgb48 / 257).max() < 1.5

    rgba64 = rng.integers(0, 65536, (4, 6, 4)).astype(np.uint16)
    write_png_pyav(tmp_path / "rgba64.png", rgba64, "rgba64be")
    notes = []
    got = media.read_image(tmp_path / "rgba64.png", 4, 6, notes)
    assert np.abs(got.astype(float) - rgba64[..., :3] / 257).max() < 1.5
    assert notes == ["reduced 16-bit samples to 8 bits (rgba64be)", "dropped the alpha channel (rgba64be)"]


def test_read_image_refuses_float_and_garbage(tmp_path):
    with av.open(str(tmp_path / "f.exr"), "w", format="image2") as c:  # float samples: no 8-bit reading
        s = c.add_stream("exr")
        s.width, s.height, s.pix_fmt = 4, 4, "gbrpf32le"
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.zeros((4, 4, 3), np.float32), format="gbrpf32le")))
        c.mux(s.encode(None))
    msg = expect_error(media.read_image, tmp_path / "f.exr", 4, 4, match="gbrpf32le")
    assert "f.exr" in msg
    junk = tmp_path / "junk.png"
    junk.write_text("hello")
    expect_error(media.read_image, junk, 4, 4, match="junk.png")
    expect_error(media.read_image, tmp_path / "none.png", 4, 4, match="no such file")


@pytest.mark.parametrize("h,w", [(1, 5000), (2, 5000), (5000, 1)])
def test_read_image_extreme_aspect_ratio(tmp_path, h, w):
    """One axis shrunk ~80x while the other is enlarged: swscale refuses that in one pass."""
    n = max(h, w)
    ramp = np.linspace(0, 255, n)  # along the long axis; flat along the short one
    img = np.broadcast_to(ramp[:, None] if h == n else ramp[None, :], (h, w))
    write_png_pyav(tmp_path / "thin.png", np.repeat(img.round().astype(np.uint8)[..., None], 3, 2), "rgb24")
    notes = []
    got = media.read_image(tmp_path / "thin.png", 64, 64, notes)
    assert got.shape == (64, 64, 3) and notes == [f"resized {w}x{h} -> 64x64"]
    centres = np.interp((np.arange(64) + 0.5) * n / 64 - 0.5, np.arange(n), ramp)  # area average of a ramp
    want = np.broadcast_to(centres[:, None, None] if h == n else centres[None, :, None], got.shape)
    assert np.abs(got - want).max() < 2


def test_read_image_ordinary_resize_is_one_swscale_pass(tmp_path):
    """The two-pass fallback leaves every size swscale takes in one pass as it was."""
    rgb = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    write_png_pyav(tmp_path / "rgb.png", rgb, "rgb24")
    for (h, w), interp in [((12, 20), "AREA"), ((48, 80), "BICUBIC"), ((32, 32), "BICUBIC")]:
        one_pass = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(w, h, interpolation=interp).to_ndarray()
        assert np.array_equal(media.read_image(tmp_path / "rgb.png", h, w), one_pass)


# ----------------------------------------------------------------------------- publishing / user media


def test_mp4_is_converted_and_tagged_bt709(tmp_path):
    """Untagged video is shown with BT.601 by some players and BT.709 by others (a colour shift in one)."""
    red = np.zeros((2, 16, 16, 3), np.uint8)
    red[..., 0] = 255
    media.write_mp4(tmp_path / "red.mp4", red, 8)
    with av.open(str(tmp_path / "red.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc) == (1, 1, 1, 1)
        yuv = next(c.decode(video=0)).to_ndarray()  # yuv420p planes stacked: Y [16], U [4], V [4] rows
    assert np.abs(yuv[[0, 16, 20], 0].astype(int) - [63, 102, 240]).max() <= 2  # BT.709 limited-range red
    back, _ = media.read_video(tmp_path / "red.mp4", 8, 16, 16)
    assert np.abs(back.astype(int) - red).max() <= 3


def test_mp4_audio_edit_list_is_sample_exact(tmp_path):
    """At the mp4 muxer's default 1000 Hz movie time scale 2/3 s of 48 kHz audio was cut to 0.666 s."""
    out = tmp_path / "clip.mp4"
    media.write_mp4(out, index_frames(16), 24, tone(seconds=2 / 3, sr=48000), 48000)
    with av.open(str(out)) as c:
        a, v = c.streams.audio[0], c.streams.video[0]
        assert (a.start_time, a.duration * a.time_base) == (0, Fraction(2, 3))
        assert (v.start_time, v.duration * v.time_base) == (0, Fraction(2, 3))
    assert media.read_audio(out, 48000).shape == (32000,)


def exif_png(rgb, orientation):
    """An RGB PNG with an eXIf chunk holding only the orientation tag (big-endian TIFF)."""
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    h, w = rgb.shape[:2]
    return png_bytes(w, h, 8, 2, [r.tobytes() for r in rgb], extra=[(b"eXIf", tiff)])


@pytest.mark.parametrize("orientation,cw", [(1, 0), (3, 180), (6, 90), (8, 270)])
def test_read_image_turns_exif_orientation_upright(tmp_path, orientation, cw):
    """A phone's portrait photo is stored landscape with an EXIF orientation: read it as it is shown."""
    stored = np.random.default_rng(4).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    (tmp_path / "photo.png").write_bytes(exif_png(stored, orientation))
    shown = np.rot90(stored, -cw // 90)
    notes = []
    got = media.read_image(tmp_path / "photo.png", *shown.shape[:2], notes)
    assert np.array_equal(got, shown)
    assert notes == ([f"rotated {cw} degrees clockwise, as its orientation metadata says"] if cw else [])


def test_read_image_fit_crop_keeps_the_aspect_and_takes_the_center(tmp_path):
    """generate --image --fit crop: a portrait photo for a square model is resized with its aspect kept and its
    center cut out (it was only stretched, squashed 2:1); turned upright first (EXIF), as with stretch."""
    rng = np.random.default_rng(5)
    tall = rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)  # [H, W, 3] portrait, as shown
    write_png_pyav(tmp_path / "tall.png", tall, "rgb24")
    same_aspect = media.read_image(tmp_path / "tall.png", 64, 32)
    notes = []
    crop = media.read_image(tmp_path / "tall.png", 32, 32, notes, fit="crop")
    np.testing.assert_array_equal(crop, same_aspect[16:48])
    assert notes == ["resized 40x80 -> 32x64 (aspect kept), center-cropped to 32x32"]
    stretched = media.read_image(tmp_path / "tall.png", 32, 32)  # the default stays a stretch
    assert not np.array_equal(stretched, crop)
    (tmp_path / "turned.png").write_bytes(exif_png(np.rot90(tall, 1).copy(), 6))  # stored landscape, shown tall
    notes = []
    np.testing.assert_array_equal(media.read_image(tmp_path / "turned.png", 32, 32, notes, fit="crop"), crop)
    assert notes[0].startswith("rotated 90 degrees clockwise") and "center-cropped to 32x32" in notes[1]
    np.testing.assert_array_equal(media.read_image(tmp_path / "tall.png", 80, 40, fit="crop"), tall)  # no resize
    expect_error(media.read_image, tmp_path / "tall.png", 32, 32, fit="zoom", match="fit must be one of stretch, crop")


def test_a_file_that_is_not_media_is_said_so_in_words(tmp_path):
    """FFmpeg's InvalidDataError read "InvalidDataError: [Errno 1094995529] Invalid data found when processing
    input": a user who passed a text file as --image gets a sentence instead, and a damaged recording (it opens,
    then fails to decode) another one."""
    p = tmp_path / "clips.jsonl"  # (a .txt is read: FFmpeg renders text files as ANSI art video)
    p.write_text("not a picture\n" * 50)
    for read in (lambda: media.read_image(p, 8, 8), lambda: media.read_video(p, 8, 8, 8),
                 lambda: media.read_audio(p, 16000)):
        with pytest.raises(MediaError) as e:
            read()
        assert str(e.value).endswith("clips.jsonl: not a media file FFmpeg can open (Invalid data found when "
                                     "processing input)"), str(e.value)
    ok = tmp_path / "ok.mp4"  # a recording damaged in its middle opens: it is not called "not a media file"
    media.write_mp4(ok, np.random.default_rng(0).integers(0, 255, (40, 64, 64, 3), dtype=np.uint8), 8,
                    audio=(0.3 * np.sin(np.arange(80000) / 5.0)).astype(np.float32), sample_rate=16000)
    data = bytearray(ok.read_bytes())
    n = len(data)
    data[n // 4:n // 2] = np.random.default_rng(1).integers(0, 256, n // 2 - n // 4, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mp4").write_bytes(data)
    for read in (lambda: media.read_video(tmp_path / "bad.mp4", 8, 64, 64),
                 lambda: media.read_audio(tmp_path / "bad.mp4", 16000)):
        with pytest.raises(MediaError, match="bad.mp4: damaged or unsupported data"):
            read()


def test_read_video_turns_a_rotated_stream_upright(tmp_path):
    """A phone's portrait video: landscape frames and a display matrix turning them 90 degrees clockwise."""
    frames = np.zeros((8, 16, 32, 3), np.uint8)
    frames[:, :, :16, 0] = 255  # stored: red left half, blue right half
    frames[:, :, 16:, 2] = 255
    media.write_mp4(tmp_path / "v.mp4", frames, 8)
    data = bytearray((tmp_path / "v.mp4").read_bytes())
    matrix = data.index(b"tkhd") + 4 + 40  # version 0 tkhd: the 3x3 matrix follows 40 bytes of fields
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    (tmp_path / "rot.mp4").write_bytes(data)
    got, notes = media.read_video(tmp_path / "rot.mp4", 8, 32, 16)
    assert got.shape == (8, 32, 16, 3)
    assert notes == ["rotated 90 degrees clockwise, as its orientation metadata says"]
    assert (got[:, :12, :, 0] > 240).all() and (got[:, 20:, :, 2] > 240).all()  # shown: red on top, blue below


def test_read_video_fit_crop_keeps_the_aspect_and_takes_the_center(tmp_path):
    """A portrait clip for a square model was only stretched (squashed 2:1): fit="crop" resizes it with its
    aspect kept to cover the size asked and cuts out the center."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (6, 80, 40, 3), dtype=np.uint8)  # [T, H, W, 3] portrait
    p = tmp_path / "portrait.mp4"
    media.write_mp4(p, frames, 8)
    tall, _ = media.read_video(p, 8, 64, 32)  # the same aspect: a plain resize
    crop, notes = media.read_video(p, 8, 32, 32, fit="crop")
    assert crop.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(crop, tall[:, 16:48])  # the center rows of the aspect-kept resize
    assert any("center-cropped to 32x32" in n and "40x80 -> 32x64" in n for n in notes), notes
    squashed, notes = media.read_video(p, 8, 32, 32)  # the default stays a stretch
    assert not np.array_equal(squashed, crop) and any(n == "resized 40x80 -> 32x32" for n in notes), notes
    wide, _ = media.read_video(p, 8, 16, 32, fit="crop")  # covering a wide size: the middle band of the frame
    assert wide.shape == (6, 16, 32, 3)
    expect_error(media.read_video, p, 8, 32, 32, fit="zoom", match="fit must be one of stretch, crop")


def test_names_with_a_colon_are_files_not_protocols(tmp_path, monkeypatch):
    """FFmpeg took "take:2.mp4" (and a temp ".take:2.<token>.mp4") for a URL of protocol "take": reads and writes
    of such relative names failed with "Protocol not found"."""
    monkeypatch.chdir(tmp_path)
    media.write_mp4("take:2.mp4", smooth_frames(), 8, tone(seconds=2.0), SR)
    frames, _ = media.read_video("take:2.mp4", 8, 32, 32)
    assert frames.shape == (16, 32, 32, 3)
    assert media.read_audio("take:2.mp4", SR).shape[0] > SR
    write_png_pyav(tmp_path / "i:1.png", smooth_frames(1)[0], "rgb24")
    assert media.read_image("i:1.png", 32, 32).shape == (32, 32, 3)
    assert media.probe("take:2.mp4")["video"]["frames"] == 16
    expect_error(media.read_video, "gone:1.mp4", 8, 32, 32, match="gone:1.mp4")


def test_a_line_break_in_a_file_name_is_shown_escaped_not_as_a_space(tmp_path):
    """Messages collapsed whitespace, so 'a\\nb.wav' was named 'a b.wav' (a file that may exist) although
    HarmonyError promises line breaks shown escaped."""
    with pytest.raises(MediaError) as e:
        media.read_audio(tmp_path / "a\nb.wav", 16000)
    assert str(e.value) == f"cannot read {tmp_path}/a\\nb.wav: no such file"
    with pytest.raises(MediaError) as e:
        media.write_wav(tmp_path / "missing\u2028dir" / "x.wav", np.zeros(10, np.float32), 16000)
    assert "missing\\u2028dir" in str(e.value) and len(str(e.value).splitlines()) == 1
