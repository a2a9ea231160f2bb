"""The runtime on a real exported bundle: guidance on the real graph, determinism, outputs."""

import numpy as np
import pytest

from harmony_rt.errors import Cancelled, HarmonyError
from harmony_rt.guidance import GuidanceScales, build_batch
from harmony_rt.media import probe
from harmony_rt.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle, backend="ort", split="batched")


def _state(pipe, B=2, F=2, seed=0):
    g = pipe.geometry
    rng = np.random.default_rng(seed)
    T = g.audio_frames_for(F)
    caps, m = pipe._captions(["a red ball bounces twice", "two knocks", ""])
    sp, spm = pipe._speech(["hello", ""])
    rep = lambda x: np.repeat(x, B, 0)  # noqa: E731
    cond = dict(text_emb=rep(caps[:1]), text_mask=rep(m[:1]), audio_text_emb=rep(caps[1:2]),
                audio_text_mask=rep(m[1:2]), speech_emb=rep(sp[:1]), speech_mask=rep(spm[:1]),
                ref_latent=np.zeros((B, 1, g.C_a), np.float32), ref_mask=np.zeros((B, 1), np.float32))
    z_v = rng.standard_normal((B, g.C_v, F, g.H_lat, g.W_lat)).astype(np.float32)
    z_a = rng.standard_normal((B, g.S, T, g.C_a)).astype(np.float32)
    return cond, z_v, z_a


def test_syncfg_on_the_real_graph_equals_eq_9_10(pipe):
    """Batched guidance == Eq. 9-10 computed by hand from three separate denoiser calls."""
    cond, z_v, z_a = _state(pipe)
    B = z_v.shape[0]
    null_v, null_a = np.zeros_like(z_v) + 0.1, np.zeros_like(z_a) - 0.2
    t = np.full(B, 0.7, np.float32)

    def run(zv, za, tv, ta):
        return pipe.backend.run("denoiser", dict(video_latent=zv, audio_latent=za, t_video=tv, t_audio=ta, **cond))

    joint = run(z_v, z_a, t, t)
    mute = run(z_v, null_a, t, np.zeros(B, np.float32))
    static = run(null_v, z_a, np.zeros(B, np.float32), t)
    s = GuidanceScales(s_v=3.0, s_a=2.0)
    ev = mute["video_velocity"] + s.s_v * (joint["video_velocity"] - mute["video_velocity"])
    ea = static["audio_velocity"] + s.s_a * (joint["audio_velocity"] - static["audio_velocity"])
    v_v, v_a = pipe._guided_for("sync", s)(z_v, z_a, t, t, cond, None, null_v, null_a)
    np.testing.assert_allclose(v_v, ev, atol=2e-5)
    np.testing.assert_allclose(v_a, ea, atol=2e-5)
    # and the batch really is one call with 3B rows
    feeds = build_batch("sync", z_v, z_a, t, t, cond, None, null_v, null_a)
    assert feeds["video_latent"].shape[0] == 3 * B


def test_generate_shapes_and_seed_reproducibility(pipe):
    g = pipe.geometry
    r1 = pipe.generate("a red ball bounces twice", steps=3, seed=7, seconds=1.0)
    r2 = pipe.generate("a red ball bounces twice", steps=3, seed=7, seconds=1.0)
    r3 = pipe.generate("a red ball bounces twice", steps=3, seed=8, seconds=1.0)
    assert r1.frames.shape == (int(1.0 * g.fps), g.height, g.width, 3) and r1.frames.dtype == np.uint8
    assert r1.audio.shape == (g.sample_rate,) and r1.audio.dtype == np.float32
    assert np.array_equal(r1.frames, r2.frames) and np.array_equal(r1.audio, r2.audio)
    assert not np.array_equal(r1.audio, r3.audio)


def test_num_samples_are_independent_of_batch(pipe):
    one = pipe.generate("a blue box flashes once", steps=2, seed=3, seconds=1.0)
    many = pipe.generate_batch("a blue box flashes once", steps=2, seed=3, seconds=1.0, num_samples=3)
    assert len(many) == 3
    np.testing.assert_allclose(many[0].audio, one.audio, atol=1e-5)
    assert not np.allclose(many[1].audio, many[0].audio)
    # each clip names its sample, and that sample is remade alone (or from a later start) from seed + sample
    assert [c.sample for c in many] == [0, 1, 2] and {c.seed for c in many} == {3}
    again = pipe.generate("a blue box flashes once", steps=2, seed=3, seconds=1.0, sample=2)
    assert again.sample == 2
    np.testing.assert_allclose(again.audio, many[2].audio, atol=1e-5)
    np.testing.assert_allclose(again.frames.astype(int), many[2].frames.astype(int), atol=1)
    tail = pipe.generate_batch("a blue box flashes once", steps=2, seed=3, seconds=1.0, num_samples=2, sample=1)
    assert [c.sample for c in tail] == [1, 2]
    np.testing.assert_allclose(tail[0].audio, many[1].audio, atol=1e-5)


@pytest.mark.parametrize("mode", ["none", "cfg", "sync", "sync+cfg"])
def test_every_guidance_mode_runs(pipe, mode):
    r = pipe.generate("a red ball bounces twice", steps=2, guidance=mode, seconds=1.0)
    assert np.isfinite(r.audio).all() and r.frames.std() > 0


def test_cancel_from_progress_callback(pipe):
    seen = []
    with pytest.raises(Cancelled):
        pipe.generate("x", steps=5, seconds=1.0, progress=lambda d, t: seen.append(d) or d < 2)
    assert seen == [0, 1, 2]  # (0, total) once the inputs are encoded, then after every step


def test_cancel_before_the_first_step(pipe, monkeypatch):
    """progress(0, total) comes before any denoiser call: an app can stop a long first step from starting."""
    calls = []
    real = pipe.backend.run
    monkeypatch.setattr(pipe.backend, "run", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    with pytest.raises(Cancelled, match="^cancelled before the first of 4 steps$"):
        pipe.generate("x", steps=4, seconds=1.0, progress=lambda d, t: d > 0)
    assert "denoiser" not in calls and calls  # the encoders ran, the denoiser did not


@pytest.mark.parametrize("kw", [dict(steps=0), dict(steps=-3), dict(guidance="louder"), dict(seconds=100.0),
                                dict(s_v=float("nan")), dict(seed=-1), dict(scheduler="ddim"), dict(num_samples=0),
                                dict(sample=-1), dict(sample=0.5), dict(step_cache=1.5),
                                dict(step_cache=0.1, scheduler="unipc")])
def test_bad_arguments_raise_harmony_error(pipe, kw):
    with pytest.raises(HarmonyError):
        pipe.generate_batch("a red ball", **kw)


def test_generate_refuses_num_samples(pipe):
    with pytest.raises(HarmonyError, match="generate_batch"):
        pipe.generate("a red ball", num_samples=2)


def test_a_backend_made_by_the_caller(tiny_bundle, pipe):
    from harmony_rt.backends.ort import OrtBackend

    mine = OrtBackend(pipe.bundle, threads=1, spinning=False)
    p = Pipeline(pipe.bundle, backend=mine, split="batched")
    assert p.backend is mine and mine.spinning is False
    a = p.generate("a red ball", steps=2, seconds=1.0, seed=3)
    b = pipe.generate("a red ball", steps=2, seconds=1.0, seed=3)
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-5)
    with pytest.raises(HarmonyError, match="set on the backend"):
        Pipeline(pipe.bundle, backend=mine, threads=2)
    other = Pipeline.from_bundle()  # the shipped demo: another model
    with pytest.raises(HarmonyError, match="made for this bundle"):
        Pipeline(other.bundle, backend=mine)


def test_save_writes_mp4_with_both_streams(pipe, tmp_path):
    r = pipe.generate("a red ball bounces twice", steps=2, seconds=2.0)
    out = r.save(tmp_path / "clip.mp4")
    info = probe(out)
    assert info["video"]["frames"] == r.frames.shape[0]
    assert abs(info["audio"]["duration"] - 2.0) < 0.07 and abs(info["video"]["duration"] - 2.0) < 1e-6
    assert (tmp_path / "clip.wav").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.wav"]


def test_a_new_pipeline_reuses_the_split_decided_by_an_earlier_one(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONY_RT_CACHE", str(tmp_path))
    first = Pipeline.from_bundle(tiny_bundle, backend="ort")  # split="auto"
    first.generate("a red ball", steps=8, seconds=1.0)
    (g1,) = first._guided.values()
    assert g1.timings and (tmp_path / "guidance-splits.json").is_file()
    second = Pipeline.from_bundle(tiny_bundle, backend="ort")
    second.generate("a red ball", steps=8, seconds=1.0)
    (g2,) = second._guided.values()
    assert g2.decisions == g1.decisions and not g2.timings  # decided without measuring


def test_save_all_writes_every_file_or_none(pipe, tmp_path, monkeypatch):
    from harmony_rt import media
    from harmony_rt.errors import MediaError
    from harmony_rt.pipeline import save_all

    clips = pipe.generate_batch("a red ball", steps=1, seconds=1.0, num_samples=2)
    real, calls = media.write_wav, []

    def failing(path, *a, **kw):  # the second clip's wav fails, after three files were written
        calls.append(path)
        if len(calls) == 2:
            raise MediaError("disk full (simulated)")
        return real(path, *a, **kw)

    monkeypatch.setattr(media, "write_wav", failing)
    with pytest.raises(MediaError, match="simulated"):
        save_all(clips, tmp_path / "o.mp4")
    assert not list(tmp_path.iterdir())  # neither o_0.* nor any temp file
    monkeypatch.setattr(media, "write_wav", real)
    assert [p.name for p in save_all(clips, tmp_path / "o.mp4")] == ["o_0.mp4", "o_0.wav", "o_1.mp4", "o_1.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o_0.mp4", "o_0.wav", "o_1.mp4", "o_1.wav"]


def test_save_makes_missing_folders_and_removes_them_if_it_fails(pipe, tmp_path, monkeypatch):
    """As --stems and export -o do (`mkdir -p`): a clip saved into a folder that does not exist yet makes it;
    a write that fails leaves no folder behind it."""
    from harmony_rt import media
    from harmony_rt.errors import MediaError

    clip = pipe.generate("a red ball", steps=1, seconds=1.0)
    real = media.write_wav

    def failing(path, *a, **kw):
        raise MediaError("disk full (simulated)")

    monkeypatch.setattr(media, "write_wav", failing)
    with pytest.raises(MediaError, match="simulated"):
        clip.save(tmp_path / "runs" / "day1" / "o.mp4")
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(media, "write_wav", real)
    out = clip.save(tmp_path / "runs" / "day1" / "o.mp4")
    assert out.is_file() and out.with_suffix(".wav").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(MediaError, match="cannot make folder"):
        clip.save(tmp_path / "file" / "o.mp4")


def test_numpy_scalars_are_numbers(pipe):
    a = pipe.generate("a red ball", steps=np.int64(2), seed=np.int64(3), seconds=np.float32(1.0))
    b = pipe.generate("a red ball", steps=2, seed=3, seconds=1.0)
    assert np.array_equal(a.frames, b.frames)
    for bad in ("2", 2.5, 0, 10**6):
        with pytest.raises(HarmonyError, match="threads must be an integer"):
            Pipeline(pipe.bundle, threads=bad)


def test_picture_sound_and_wav_take_the_length_of_the_frames(pipe, tmp_path):
    """A length off the model's frame grid (requested, or that of a driving audio) snaps to whole frames, and
    says so: before, the audio kept the length asked for (1.3 s of sound under 1.25 s of picture)."""
    g = pipe.geometry
    frame_s = g.video_t_stride / g.fps
    ask = 5.4 * frame_s
    r = pipe.generate("a red ball", steps=1, seconds=ask)
    assert r.frames.shape[0] == 5 * g.video_t_stride and r.seconds == pytest.approx(5 * frame_s)
    assert len(r.audio) == round(r.seconds * g.sample_rate)
    assert any(n.startswith(f"clip length {ask:g} s -> {r.seconds:g} s") for n in r.notes), r.notes
    driving = np.sin(np.arange(round(ask * g.sample_rate)) / 7.0).astype(np.float32) * 0.1
    a2v = pipe.generate("a man speaks", steps=1, audio=driving)
    assert a2v.frames.shape[0] == r.frames.shape[0] and len(a2v.audio) == len(r.audio)
    assert np.array_equal(a2v.audio, driving[: len(r.audio)])
    assert any(n.startswith(f"used the first {r.seconds:g} s of the audio") for n in a2v.notes), a2v.notes
    info = probe(a2v.save(tmp_path / "a2v.mp4"))
    assert info["video"]["frames"] == r.frames.shape[0], info
    assert info["audio"]["duration"] == pytest.approx(r.seconds, abs=0.07), info  # AAC: 1024-sample frames


def test_a_scale_the_guidance_mode_does_not_use_is_noted(pipe):
    r = pipe.generate("a red ball", steps=1, seconds=1.0, guidance="cfg", s_v=2.0, s_a=1.0)
    assert "s_v and s_a have no effect with guidance 'cfg'" in r.notes, r.notes
    r = pipe.generate("a red ball", steps=1, seconds=1.0, guidance="sync", s_v=2.0)
    assert not any("no effect" in n for n in r.notes), r.notes


@pytest.fixture(scope="module")
def demo():
    return Pipeline.from_bundle(split="batched")  # the shipped demo: no training needed


def test_one_guided_denoiser_per_mode_whatever_the_scales(demo):
    """Each call guides with its own scales, but the pipeline keeps one guided denoiser (and split decision)
    per mode: keyed by the scales, a server taking s_v from its users grew one per value asked for."""
    p = Pipeline(demo.bundle, split="batched")
    kw = dict(steps=2, seconds=0.25, seed=1)
    outs = [p.generate("a red ball", s_v=s, **kw).frames for s in (0.5, 6.0, 0.5)]
    assert len(p._guided) == 1
    assert np.array_equal(outs[0], outs[2]) and not np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], demo.generate("a red ball", s_v=6.0, **kw).frames)  # not the first call's scales


def test_a_video_array_longer_than_a_clip_is_trimmed_like_a_file(demo):
    """Before, V2A frames past the longest clip failed with 'seconds must be ...' (seconds never given)."""
    g = demo.geometry
    n = g.max_latent_frames * g.video_t_stride
    video = np.random.default_rng(0).integers(0, 256, (n + 4, g.height, g.width, 3), dtype=np.uint8)
    r = demo.generate("a red ball", steps=1, video=video)
    assert np.array_equal(r.frames, video[:n]) and f"trimmed {n + 4} -> {n} frames" in r.notes, r.notes


def test_an_unknown_split_is_refused_when_the_pipeline_is_made(demo):
    with pytest.raises(HarmonyError, match="unknown split 'fast'"):
        Pipeline(demo.bundle, split="fast")


def test_numpy_false_from_progress_cancels(demo):
    with pytest.raises(Cancelled, match="after 1 of 3 steps"):
        demo.generate("x", steps=3, seconds=0.25, progress=lambda d, t: np.bool_(d < 1))


def test_a_dropped_pipeline_is_freed_at_once(tiny_bundle):
    """A pipeline held itself (its guided denoisers' call closed over `self`): dropped, it waited for the
    cycle collector, which runs rarely when few Python objects are made: a service building one per job grew
    to GBs of ONNX Runtime sessions."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        p = Pipeline.from_bundle(tiny_bundle, backend="ort", split="batched")  # "batched": no split measuring
        p.generate("a red ball", steps=1, seconds=1.0)
        p.generate("a red ball", steps=1, seconds=1.0, guidance="cfg", speech="hi")
        alive = weakref.ref(p), weakref.ref(p.backend)
        del p
        assert [r() is None for r in alive] == [True, True]
    finally:
        gc.enable()


def test_unknown_words_are_in_the_clips_notes(pipe, caplog):
    """They went only to the harmony_rt.text logger: a service showing its users `notes` never showed them."""
    with caplog.at_level("WARNING", logger="harmony_rt.text"):
        r = pipe.generate("a zyzzyva ball", steps=1, seconds=1.0)
    assert "caption: 1 unknown token(s) the model has never seen: zyzzyva" in r.notes, r.notes
    assert not caplog.records  # said once, in the notes (the CLI prints them)


def test_generate_takes_num_samples_1_and_save_refuses_stems_it_has_not(pipe, tmp_path):
    """Forwarded arguments: num_samples=1 is what generate makes (it was refused); stems_dir on a one-stream
    clip was silently ignored (no folder, no error), where the CLI's --stems is refused."""
    a = pipe.generate("a red ball", steps=1, seconds=1.0, seed=2, num_samples=1)
    b = pipe.generate("a red ball", steps=1, seconds=1.0, seed=2)
    assert np.array_equal(a.frames, b.frames)
    for n in (2, 0, True):
        with pytest.raises(HarmonyError, match="generate makes one clip"):
            pipe.generate("a red ball", steps=1, num_samples=n)
    with pytest.raises(HarmonyError, match="no stems to write .* nor when the audio was given"):
        a.save(tmp_path / "o.mp4", stems_dir=tmp_path / "stems")
    with pytest.raises(HarmonyError, match=r"a clip is saved as an mp4 .* its sound alone: harmony_rt.media.write_wav"):
        a.save(tmp_path / "o.wav")
    assert not list(tmp_path.iterdir())


def test_save_all_names_each_clip_by_its_own_sample(pipe, tmp_path):
    """save_all named a list OUT_<first + i>, as if its samples ran on from the first one."""
    from harmony_rt.pipeline import save_all

    a = pipe.generate("a red ball", steps=1, seconds=1.0, sample=2)
    b = pipe.generate("a red ball", steps=1, seconds=1.0, sample=0)
    assert [p.name for p in save_all([a, b], tmp_path / "o.mp4")] == ["o_2.mp4", "o_2.wav", "o_0.mp4", "o_0.wav"]
    with pytest.raises(HarmonyError, match="two clips are sample 2"):
        save_all([a, a], tmp_path / "again.mp4")
    assert not list(tmp_path.glob("again*"))
