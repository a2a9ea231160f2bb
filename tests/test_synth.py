"""The procedural AV dataset: determinism, event timing, captions, stems, speech (espeak-ng)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harmony_rt import sync
from train.data import (
    CANONICAL_PROMPT,
    SPEAKERS,
    SynthConfig,
    cached_dataset,
    canonical_clip,
    caption_vocabulary,
    have_espeak,
    make_clip,
    make_dataset,
    speaker_clips,
    transcript_charset,
)
from train.data import speech as speech_mod
from train.data.synth import COLOURS, COUNT_WORDS

CFG = SynthConfig()
needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed: apt-get install espeak-ng")


def _ambient(n: int, single: bool | None = None) -> list:
    """The first n ambient clips (seeds 0, 1, ...) with one object (single=True), two (False) or any."""
    out, seed = [], 0
    while len(out) < n:
        c = make_clip(seed, "ambient", CFG)
        if single is None or single == (" and " not in c.video_caption):
            out.append(c)
        seed += 1
    return out


def _event_frames(clip, cfg=CFG) -> list[int]:
    return [int(round(t * cfg.fps)) for t in clip.events]


def test_config_shapes_and_ranges():
    cfg = SynthConfig(height=24, width=40, fps=10.0, sample_rate=12000, seconds=1.5)
    c = make_clip(1, "ambient", cfg)
    assert c.frames.shape == (15, 24, 40, 3) and c.frames.dtype == np.uint8
    for a in (c.audio, c.speech, c.sfx):
        assert a.shape == (18000,) and a.dtype == np.float32
    assert np.abs(c.audio).max() <= 1.0 and np.abs(c.audio).max() > 0.1
    assert c.kind == "ambient" and c.transcript == "" and c.speaker is None and c.language is None
    assert all(0 < t < cfg.seconds for t in c.events)


def test_same_seed_same_clip_other_seed_other_clip():
    a, b, c = make_clip(7, "ambient", CFG), make_clip(7, "ambient", CFG), make_clip(8, "ambient", CFG)
    for f in ("frames", "audio", "speech", "sfx"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert (a.video_caption, a.audio_caption, a.events) == (b.video_caption, b.audio_caption, b.events)
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.audio, c.audio)
    d1, d2 = make_dataset(4, 3, CFG, kinds=("ambient",)), make_dataset(4, 3, CFG, kinds=("ambient",))
    assert all(np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio) for x, y in zip(d1, d2))
    assert len({x.video_caption + str(x.events) for x in d1}) == 4


def test_ambient_events_are_motion_peaks_and_audio_onsets():
    for c in _ambient(6, single=True):
        ev = _event_frames(c)
        assert ev and all(abs(t * CFG.fps - round(t * CFG.fps)) < 1e-9 for t in c.events)  # on frame times
        me = sync.motion_energy(c.frames)
        for k in ev:  # the impact / flash frame moves more than its neighbours
            assert me[k] > me[k - 1] and me[k] > me[k + 1], (c.video_caption, ev, me)
        on = sync.onset_envelope(c.audio, CFG.sample_rate, CFG.fps, len(c.frames))
        assert sorted(np.argsort(on)[-len(ev):].tolist()) == ev, (c.video_caption, ev, on)
        for t in c.events:  # silence just before the event sample, sound right after it
            n0 = int(round(t * CFG.sample_rate))
            pre = np.abs(c.sfx[n0 - 80:n0]).max()  # 5 ms
            post = np.abs(c.sfx[n0:n0 + 320]).max()  # 20 ms
            assert post > 0.2 and pre < 0.2 * post
    for c in _ambient(4, single=False):  # two objects: every event is still an onset
        ev = _event_frames(c)
        on = sync.onset_envelope(c.audio, CFG.sample_rate, CFG.fps, len(c.frames))
        assert sorted(np.argsort(on)[-len(ev):].tolist()) == ev


def test_captions_name_count_and_visible_colour():
    for c in _ambient(8, single=True):
        n = len(c.events)
        assert f" {COUNT_WORDS[n]}" in c.video_caption
        assert c.audio_caption.startswith({1: "a single ", 2: "two ", 3: "three "}[n])
        colour = next(w for w in c.video_caption.split() if w in COLOURS)
        rgb = np.array(COLOURS[colour]) * 255
        dist = np.abs(c.frames.reshape(-1, 3).astype(float) - rgb).max(1)
        assert (dist < 12).sum() >= 4, f"no {colour} pixels in {c.video_caption!r}"


def test_canonical_prompt_is_producible():
    c = canonical_clip(CFG, seed=3)
    assert c.video_caption == CANONICAL_PROMPT == "a red ball bounces twice"
    assert c.audio_caption == "two wooden knocks" and len(c.events) == 2
    hits = (s for s in range(200) if make_clip(s, "ambient", CFG).video_caption == CANONICAL_PROMPT)
    assert next(hits, None) is not None, "the random sampler never emits the canonical prompt"


def test_caption_words_and_transcript_chars_are_in_the_vocabularies():
    vocab = set(caption_vocabulary())
    assert {"red", "ball", "bounces", "twice", "wooden", "knocks", "chinese", "voice"} <= vocab
    for c in make_dataset(60, 11, CFG, kinds=("ambient",)):
        assert set(c.video_caption.split()) <= vocab and set(c.audio_caption.split()) <= vocab
        assert c.video_caption == c.video_caption.lower().strip() and "  " not in c.video_caption
    charset = transcript_charset()
    assert "a" in charset and " " in charset and "你" in charset and len(set(charset)) == len(charset)
    for pool in speech_mod.SENTENCES.values():
        assert all(set(s) <= set(charset) for s in pool)


def test_stems_sum_to_the_mix_ambient():
    c = make_clip(2, "ambient", CFG)
    np.testing.assert_array_equal(c.audio, c.speech + c.sfx)
    assert not c.speech.any() and np.abs(c.sfx).max() > 0.1


def test_cached_dataset_roundtrip(tmp_path):
    a = cached_dataset(tmp_path, 3, 5, CFG, kinds=("ambient",))
    assert len(list(tmp_path.glob("synth-*.npz"))) == 1
    b = cached_dataset(tmp_path, 3, 5, CFG, kinds=("ambient",))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.audio, y.audio)
        assert (x.video_caption, x.events, x.speaker) == (y.video_caption, y.events, y.speaker)


def test_missing_espeak_raises_clear_error(monkeypatch):
    monkeypatch.setattr(speech_mod.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        make_clip(0, "speech", CFG)


def test_data_package_does_not_import_torch():
    code = "import sys, train.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ speech


def _f0(x: np.ndarray, sr: int) -> float:
    """Median autocorrelation pitch (Hz) of the loud 40 ms frames."""
    n, vals = int(0.04 * sr), []
    thr = 0.3 * np.sqrt(np.mean(x[np.abs(x) > 0.01] ** 2))
    for i in range(0, len(x) - n, n // 2):
        f = x[i:i + n] - x[i:i + n].mean()
        if np.sqrt(np.mean(f ** 2)) < thr:
            continue
        ac = np.correlate(f, f, "full")[n - 1:]
        lo, hi = sr // 400, sr // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            vals.append(sr / lag)
    return float(np.median(vals))


@needs_espeak
@pytest.mark.parametrize("language", ["en", "zh"])
def test_speech_clip(language):
    c = make_clip(4, "speech", CFG, language=language)
    assert c.kind == "speech" and c.language == language and c.speaker in SPEAKERS and c.transcript
    assert set(c.transcript) <= set(transcript_charset()) and c.events == []
    assert ("chinese" if language == "zh" else "english") in c.audio_caption.split()
    assert c.video_caption.split()[1] in ("man", "woman") and "face" in c.video_caption
    assert set((c.video_caption + " " + c.audio_caption).split()) <= set(caption_vocabulary())
    if language == "zh":
        assert all("\u4e00" <= ch <= "\u9fff" for ch in c.transcript)
    # real speech: loud for >= 0.375 s, silent at the clip's edges
    env = sync.speech_envelope(c.speech, CFG.sample_rate, CFG.fps, len(c.frames))
    assert (env > 0.05).sum() >= 3 and env[0] < 0.01 and env[-1] < 0.01, env
    assert not c.sfx.any()
    np.testing.assert_array_equal(c.audio, c.speech + c.sfx)
    # the mouth follows the loudness
    mouth = sync.mouth_opening(c.frames)
    assert np.corrcoef(mouth, env)[0, 1] > 0.5


@needs_espeak
def test_speech_determinism_and_mouth_on_bigger_frames():
    cfg = SynthConfig(height=64, width=64, fps=8.0, seconds=3.0)
    a, b = make_clip(9, "speech", cfg), make_clip(9, "speech", cfg)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.transcript == b.transcript and a.speaker == b.speaker
    env = sync.speech_envelope(a.speech, cfg.sample_rate, cfg.fps, len(a.frames))
    assert np.corrcoef(sync.mouth_opening(a.frames), env)[0, 1] > 0.8


@needs_espeak
def test_complex_clip_has_both_stems_and_captions():
    c = make_clip(5, "complex", CFG)
    assert c.kind == "complex" and c.transcript and c.events
    assert " while " in c.video_caption and " and " in c.audio_caption and "voice" in c.audio_caption
    assert set((c.video_caption + " " + c.audio_caption).split()) <= set(caption_vocabulary())
    np.testing.assert_array_equal(c.audio, c.speech + c.sfx)
    assert np.abs(c.speech).max() > 0.1 and np.abs(c.sfx).max() > 0.1
    env = sync.speech_envelope(c.speech, CFG.sample_rate, CFG.fps, len(c.frames))
    assert np.corrcoef(sync.mouth_opening(c.frames), env)[0, 1] > 0.5
    on = sync.onset_envelope(c.sfx, CFG.sample_rate, CFG.fps, len(c.frames))
    ev = _event_frames(c)
    assert sorted(np.argsort(on)[-len(ev):].tolist()) == ev


@needs_espeak
def test_speaker_clips_share_a_voice_that_differs_between_speakers():
    male = speaker_clips("spk1", 2, seed=0, cfg=CFG, language="en")
    female = speaker_clips("spk5", 2, seed=0, cfg=CFG, language="en")
    assert all(c.speaker == "spk1" for c in male) and all(c.speaker == "spk5" for c in female)
    assert male[0].transcript != male[1].transcript  # a different utterance: stage-2 reference
    assert "male voice" in male[0].audio_caption and "female voice" in female[0].audio_caption
    f_m = _f0(np.concatenate([c.speech for c in male]), CFG.sample_rate)
    f_f = _f0(np.concatenate([c.speech for c in female]), CFG.sample_rate)
    assert f_f > 1.6 * f_m, (f_m, f_f)
    again = speaker_clips("spk1", 2, seed=0, cfg=CFG, language="en")
    assert [c.transcript for c in again] == [c.transcript for c in male]
