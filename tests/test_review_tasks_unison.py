"""Review of the tasks on a Unison bundle (two audio streams, video latent frames of 2 pixel frames): how A2V
holds a given mix, and a driving video shorter than one latent frame."""

import numpy as np
import pytest

from harmony_rt.errors import HarmonyError

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def unison_pipe(tmp_path_factory):
    from export.bundle_writer import export_bundle
    from harmony_rt.pipeline import Pipeline
    from train.train import TrainConfig, train

    out = tmp_path_factory.mktemp("unison_tasks")
    tc = TrainConfig(size="tiny", clips=2, kinds=("ambient",), ae_steps=2, steps=2, batch=2,
                     stage_fractions=(0.0, 0.0, 1.0), overrides={"audio_streams": 2})  # no espeak needed
    pipe = Pipeline.from_bundle(export_bundle(train(tc, out / "ck"), out / "bundle"), backend="ort", split="batched")
    assert pipe.geometry.S == 2 and pipe.geometry.video_t_stride == 2
    return pipe


def test_a2v_holds_the_mix_in_one_stream_and_silence_in_the_other(unison_pipe, monkeypatch):
    """The mix is the sum of the stems' waveforms. The runtime held the mix's latent divided by S in both
    streams: the latent of neither a stem nor silence (the encoder is not linear, silence's latent is not 0).
    Now the whole mix sits in the speech stream when a transcript is given, else in the sfx one; the other
    stream holds silence's latent, as a training clip without that source."""
    pipe, g = unison_pipe, unison_pipe.geometry
    W = g.audio_frames_for(round(1.0 * g.fps / g.video_t_stride)) * g.audio_hop
    t = np.arange(W) / g.sample_rate
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) * (t % 0.25 < 0.05)).astype(np.float32)
    mix, silence = pipe.encode_audio(wav)[0], pipe.encode_audio(np.zeros(W, np.float32))[0]
    assert not np.allclose(silence, 0, atol=1e-3)  # what made mix / S no stem's latent
    fed, run = [], pipe.backend.run

    def spy(component, feeds):
        if component == "denoiser":
            fed.append(feeds["audio_latent"][0].copy())  # [S, T, C_a] of the first row
        return run(component, feeds)

    monkeypatch.setattr(pipe.backend, "run", spy)
    for speech, held in (("", 1), ("hello", 0)):
        fed.clear()
        r = pipe.generate("a ball bounces", speech=speech, audio=wav, steps=2, guidance="none")
        assert len(fed) == 2 and all(np.array_equal(z, fed[0]) for z in fed)  # held clean at every step
        np.testing.assert_allclose(fed[0][held], mix, atol=1e-5)
        np.testing.assert_allclose(fed[0][1 - held], silence, atol=1e-5)
        name = ("speech", "sfx")[held]
        assert any(f"held as the {name} stream" in n for n in r.notes), r.notes
        assert np.array_equal(r.audio[: len(wav)], wav) and not r.stems  # the given mix comes back as given


def test_a_driving_video_shorter_than_one_latent_frame_says_so(unison_pipe):
    """One frame at 8 fps, with a latent frame of 2: the error named --seconds, which was not given."""
    g = unison_pipe.geometry
    one = np.zeros((1, g.height, g.width, 3), np.uint8)
    with pytest.raises(HarmonyError, match=r"^the driving video is 0\.125 s long \(1 frame\(s\) at the model's 8 fps\)"
                                           r"; the model needs at least 0\.25 s$"):
        unison_pipe.generate("a ball", video=one, steps=1)
    r = unison_pipe.generate("a ball", video=one, seconds=0.25, steps=1)  # asked for: padded, as before
    assert r.frames.shape[0] == 2 and any("padded 1 -> 2 frames" in n for n in r.notes)
