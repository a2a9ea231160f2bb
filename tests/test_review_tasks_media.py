"""Review of the conditioned tasks with real-world input files: CMYK JPEGs, what reading a driving or reference
audio file changed, said once."""

import logging

import numpy as np
import pytest
import soundfile as sf

from harmony_rt import media
from harmony_rt.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_bundle(backend="ort", split="batched")  # the shipped demo: no torch, no export


def test_a_cmyk_jpeg_is_read_as_rgb(tmp_path):
    """FFmpeg decodes a CMYK JPEG (print-ready photos) to RGB in planar gbrap; it was refused as "unsupported
    pixel format gbrap", a name the user cannot connect to the file."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    cmyk = np.kron(rng.integers(0, 256, (6, 8, 4), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 8x8 blocks
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "print.jpg", quality=95)
    want = np.asarray(Image.open(tmp_path / "print.jpg").convert("RGB")).astype(int)  # Pillow's conversion
    notes = []
    got = media.read_image(tmp_path / "print.jpg", 48, 64, notes)
    assert got.shape == (48, 64, 3) and np.abs(got.astype(int) - want).max() <= 2
    assert notes == []  # opaque: no "dropped the alpha channel"


def test_reading_an_audio_file_says_what_it_changed(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([tone, tone], 1), 44100)
    sf.write(tmp_path / "mono.wav", tone[:16000], 16000)
    notes = []
    x = media.read_audio(tmp_path / "stereo.wav", 16000, notes=notes)
    assert len(x) == 16000 and notes == ["mixed 2 channels to mono", "resampled 44100 Hz -> 16000 Hz"]
    notes = []
    media.read_audio(tmp_path / "mono.wav", 16000, notes=notes)
    assert notes == []


def test_a2v_notes_the_driving_audio_resampled_and_mixed_down(pipe, tmp_path):
    """V2A says "resampled 25 fps -> 8 fps", I2AV "resized ..."; A2V took a 48 kHz stereo file to 16 kHz mono
    without a word."""
    t = np.arange(48000) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "voice.wav"
    sf.write(path, np.stack([tone, 0.5 * tone], 1), 48000, subtype="PCM_24")
    r = pipe.generate("a man speaks", audio=path, steps=1)
    assert f"audio {path}: mixed 2 channels to mono" in r.notes, r.notes
    assert f"audio {path}: resampled 48000 Hz -> 16000 Hz" in r.notes, r.notes


def test_a_reference_voice_scaled_down_is_noted_once(pipe, tmp_path, caplog):
    """A float reference past full scale was scaled with a warning only (no note in the result, none printed as
    `note:`), while the same driving audio got a warning and a note: printed twice by the CLI."""
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "loud.wav", 2 * np.sin(2 * np.pi * 220 * t), 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="harmony_rt.pipeline"):
        r = pipe.generate("a man speaks", speech="hello", ref_audio=tmp_path / "loud.wav", steps=1)
        a = pipe.generate("a man speaks", audio=tmp_path / "loud.wav", steps=1)
    assert any(n.startswith("ref_audio") and "past full scale: scaled down to peak 1" in n for n in r.notes), r.notes
    assert any(n.startswith("audio") and "past full scale: scaled down to peak 1" in n for n in a.notes), a.notes
    assert not [rec for rec in caplog.records if "past full scale" in rec.getMessage()]
