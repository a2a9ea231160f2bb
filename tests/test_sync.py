"""harmony_rt.sync: the Sync-C / Sync-D-like metric on synthetic clips, their delayed and shuffled audio."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harmony_rt import sync
from train.data import SynthConfig, have_espeak, make_clip

CFG = SynthConfig()
SR, FPS = CFG.sample_rate, CFG.fps
HOP = int(round(SR / FPS))
needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed: apt-get install espeak-ng")


def _shift(audio: np.ndarray, frames: int) -> np.ndarray:
    """Audio delayed (frames > 0) or advanced (< 0) by whole video frames, same length, zero filled."""
    n = frames * HOP
    out = np.zeros_like(audio)
    if n >= 0:
        out[n:] = audio[: len(audio) - n]
    else:
        out[:n] = audio[-n:]
    return out


def _single_object_clips(n: int) -> list:
    out, seed = [], 0
    while len(out) < n:
        c = make_clip(seed, "ambient", CFG)
        if " and " not in c.video_caption:
            out.append(c)
        seed += 1
    return out


def test_runtime_module_is_numpy_only():
    code = "import sys, harmony_rt.sync; assert not {'torch', 'scipy'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_motion_energy_and_onset_envelope_basics():
    frames = np.zeros((5, 4, 4, 3), np.uint8)
    frames[3, :2] = 255  # half the pixels change at frame 3, change back at 4
    me = sync.motion_energy(frames)
    np.testing.assert_allclose(me, [0, 0, 0, 0.5, 0.5], atol=1e-6)
    assert not sync.mouth_opening(np.full((3, 8, 8, 3), 200, np.uint8)).any()  # nothing dark

    audio = np.zeros(2 * SR, np.float32)
    for k, early in ((5, 0), (11, int(0.01 * SR))):  # a burst at frame 5's time, one 10 ms early at 11
        n0 = k * HOP - early
        audio[n0:n0 + 400] = np.sin(np.arange(400) * 0.3)
    on = sync.onset_envelope(audio, SR, FPS)
    assert on.shape == (16,) and sorted(np.argsort(on)[-2:].tolist()) == [5, 11]
    env = sync.speech_envelope(audio, SR, FPS)
    assert env.shape == (16,) and env[5] > 0 and env[0] == 0


def test_mouth_opening_measures_the_lower_dark_band_only():
    heights = np.array([1, 3, 2, 4, 1, 0])
    frames = np.full((6, 20, 20, 3), 180, np.uint8)
    for t, h in enumerate(heights):
        eye = 1 + t % 2  # blinking eyes (rows 4-5) must not count
        frames[t, 4:4 + eye, 5:7] = 10
        frames[t, 4:4 + eye, 13:15] = 10
        frames[t, 12:12 + h, 7:13] = 20  # mouth, 6 px wide
    m = sync.mouth_opening(frames)
    np.testing.assert_allclose(m * 400, heights * 6, atol=1e-3)


def test_lag_sign_convention():
    rng = np.random.default_rng(0)
    v = rng.random(24)
    a = np.roll(v, 2)  # a[t + 2] = v[t]: the audio comes 2 frames late
    r = sync.score_signals(v, a, max_offset=3)
    assert r.offset == 2 and r.correlations.shape == (7,) and r.correlations[5] == pytest.approx(1.0)
    assert list(r.lags) == [-3, -2, -1, 0, 1, 2, 3]
    assert sync.score_signals(v, np.roll(v, -1)).offset == -1


def test_ambient_clip_beats_shuffled_control_and_finds_delays():
    rng = np.random.default_rng(0)
    confs, controls = [], []
    for c in _single_object_clips(4):
        r = sync.sync_score(c.frames, c.audio, SR, FPS, "ambient")
        assert r.offset == 0, c.video_caption
        ctl = sync.shuffled_control(c.frames, c.audio, SR, FPS, "ambient", rng, n=20)
        assert ctl.confidences.shape == (20,) and r.confidence > ctl.mean
        confs.append(r.confidence)
        controls.append(ctl.mean)
        assert sync.sync_score(c.frames, _shift(c.audio, 2), SR, FPS, "ambient").offset == 2
        assert sync.sync_score(c.frames, _shift(c.audio, -1), SR, FPS, "ambient").offset == -1
    assert np.mean(confs) > np.mean(controls) + 0.25, (confs, controls)


def test_shuffle_mode_control():
    c = _single_object_clips(1)[0]
    r = sync.sync_score(c.frames, c.audio, SR, FPS, "ambient")
    ctl = sync.shuffled_control(c.frames, c.audio, SR, FPS, "ambient", np.random.default_rng(1), n=10, mode="shuffle")
    assert r.confidence > ctl.mean + 0.2
    with pytest.raises(ValueError):
        sync.shuffled_control(c.frames, c.audio, SR, FPS, "ambient", np.random.default_rng(1), mode="nope")
    with pytest.raises(ValueError):
        sync.sync_score(c.frames, c.audio, SR, FPS, kind="music")


@needs_espeak
@pytest.mark.parametrize("seed,language", [(0, "en"), (1, "zh")])
def test_speech_clip_beats_shuffled_control_and_finds_delays(seed, language):
    c = make_clip(seed, "speech", CFG, language=language)
    r = sync.sync_score(c.frames, c.audio, SR, FPS, "speech")
    assert r.offset == 0 and r.confidence > 0.6
    ctl = sync.shuffled_control(c.frames, c.audio, SR, FPS, "speech", np.random.default_rng(0), n=20)
    assert r.confidence > ctl.mean + 0.3, (r.confidence, ctl.mean)
    assert sync.sync_score(c.frames, _shift(c.audio, 2), SR, FPS, "speech").offset == 2
    assert sync.sync_score(c.frames, _shift(c.audio, -2), SR, FPS, "speech").offset == -2


@needs_espeak
def test_speech_metric_on_other_geometry():
    cfg = SynthConfig(height=64, width=64, fps=25.0, seconds=2.0)
    c = make_clip(3, "speech", cfg)
    r = sync.sync_score(c.frames, c.audio, cfg.sample_rate, cfg.fps, "speech")
    assert r.offset == 0 and r.confidence > 0.6
    hop = int(round(cfg.sample_rate / cfg.fps))
    late = np.concatenate([np.zeros(2 * hop, np.float32), c.audio[:-2 * hop]])
    assert sync.sync_score(c.frames, late, cfg.sample_rate, cfg.fps, "speech").offset == 2


def test_detect_events_finds_peaks_above_threshold_and_floor():
    x = np.array([0, 1, 5, 2, 2, 6, 6, 1, 0.5, 1.5, 0], np.float32)
    assert sync.detect_events(x).tolist() == [2, 5]  # 1.5 < 0.35 * 6; the 6, 6 plateau counts once
    assert sync.detect_events(x, rel=0.2).tolist() == [2, 5, 9]
    assert sync.detect_events(x, floor=10).tolist() == []
    assert sync.detect_events(np.zeros(5)).tolist() == []
    with pytest.raises(ValueError):
        sync.detect_events(np.zeros((2, 2)))


def test_match_events_is_one_to_one_within_tolerance():
    assert sync.match_events([2, 5, 9], [3, 5, 12]) == 2
    assert sync.match_events([2, 3], [2]) == 1  # one event of b matches once
    assert sync.match_events([2], [4]) == 0 and sync.match_events([2], [4], tol=2) == 1
    assert sync.match_events([], [1, 2]) == 0


def test_impacts_and_onsets_of_canonical_clips_coincide():
    from train.data.synth import canonical_clip

    for seed in range(4):
        c = canonical_clip(CFG, seed)
        impacts = sync.detect_events(sync.motion_energy(c.frames), floor=0.01)
        onsets = sync.detect_events(sync.onset_envelope(c.audio, SR, FPS, len(c.frames)))
        truth = [int(round(t * FPS)) for t in c.events]
        assert onsets.tolist() == truth, (seed, onsets, truth)
        assert sync.match_events(onsets, impacts, tol=0) == len(truth)
