"""Training on your own clips (`python -m train.train --data DIR`): a folder of media files with clips.jsonl is
read at the model's geometry, its captions and transcripts make the tokenizers, and every problem is one line
naming the file and line (exit 2)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harmony_rt import media

torch = pytest.importorskip("torch")

from train.data.folder import DataError, load_clip, load_clips, read_index, vocabulary  # noqa: E402

FPS, SR = 10, 22050  # the files' own rates: not the tiny model's (8 fps, 16 kHz)


def _clip_files(d, n=3, seconds=2.5):
    from train.data.synth import SynthConfig, make_dataset

    clips = make_dataset(n, 0, SynthConfig(height=40, width=48, fps=FPS, sample_rate=SR, seconds=seconds),
                         kinds=("ambient",))
    d.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(clips):
        media.write_mp4(d / f"c{i}.mp4", c.frames, FPS, c.audio, SR)
    return clips


def _index(d, *lines):
    (d / "clips.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "mine"
    _clip_files(d)
    _index(d, {"video": "c0.mp4", "caption": "A Zebra crosses, slowly!"},
           {"video": "c1.mp4", "caption": "a man speaks", "transcript": "Hello 你好", "speaker": "ann"},
           {"video": "c2.mp4", "caption": "a drum", "audio_caption": "two loud knocks", "start": 0.5})
    return d


def test_clips_load_at_the_model_geometry_from_their_start(folder):
    clips = load_clips(folder, 32, 32, 8, 16000, 2.0)
    assert [c.frames.shape for c in clips] == [(16, 32, 32, 3)] * 3 and clips[0].frames.dtype == np.uint8
    assert [c.audio.shape for c in clips] == [(32000,)] * 3 and clips[0].audio.dtype == np.float32
    a, b, c = clips
    assert (a.kind, a.transcript, a.speaker, a.audio_caption) == ("ambient", "", None, "A Zebra crosses, slowly!")
    assert (b.kind, b.transcript, b.speaker) == ("speech", "Hello 你好", "ann")
    assert np.array_equal(b.speech, b.audio) and not b.sfx.any()  # one stream: speech where there is a transcript
    assert np.array_equal(a.sfx, a.audio) and not a.speech.any()
    assert c.audio_caption == "two loud knocks" and np.abs(c.audio).max() > 0.01

    # start 0.5 s = 4 frames / 8000 samples later in the same files
    e = read_index(folder)[2]
    whole = load_clip(e.__class__(**{**e.__dict__, "start": 0.0}), 32, 32, 8, 16000, 2.0)
    assert np.array_equal(c.frames[:12], whole.frames[4:])
    assert np.allclose(c.audio[:24000], whole.audio[8000:], atol=1e-6)


def test_a_clip_shorter_than_the_run_names_its_line(folder):
    e = read_index(folder)[2]  # 2.5 s files, from 0.5 s: 2 s left
    with pytest.raises(DataError, match=r"clips.jsonl:3: c2.mp4 has 1.\d+ s from start 1 s; a clip needs 2 s"):
        load_clip(e.__class__(**{**e.__dict__, "start": 1.0}), 32, 32, 8, 16000, 2.0)


@pytest.mark.parametrize("line, words", [
    ("{nope", ["clips.jsonl:3", "not JSON", "one JSON object on one line"]),
    ('["c0.mp4"]', ["clips.jsonl:3", "JSON object"]),
    ('{"video": "c0.mp4"}', ["clips.jsonl:3", "needs 'caption'"]),
    ('{"video": "c0.mp4", "caption": "   "}', ["clips.jsonl:3", "needs 'caption'"]),
    ('{"video": "gone.mp4", "caption": "x"}', ["clips.jsonl:3", "video gone.mp4: no such file"]),
    ('{"video": "c0.mp4", "caption": "x", "captoin": "y"}', ["unknown field 'captoin'"]),
    ('{"video": "c0.mp4", "caption": "x", "start": -1}', ["start must be a number of seconds >= 0"]),
    ('{"video": "c0.mp4", "caption": 5}', ["caption must be a string"]),
    ('{"video": "c0.mp4", "caption": "x", "speech": "c1.mp4"}', ["both stems"]),
])
def test_index_problems_name_the_line(folder, tmp_path, line, words):
    d = tmp_path / "d"
    d.mkdir()
    for f in folder.glob("*.mp4"):
        os.link(f, d / f.name)
    (d / "clips.jsonl").write_text('{"video": "c0.mp4", "caption": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError) as e:
        read_index(d)
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value)


def test_an_index_saved_by_a_windows_editor_reads(folder, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    os.link(folder / "c0.mp4", d / "c0.mp4")
    (d / "clips.jsonl").write_bytes(b'\xef\xbb\xbf{"video": "c0.mp4", "caption": "a cup"}\r\n\r\n')  # BOM, CRLF
    (e,) = read_index(d)
    assert e.caption == "a cup"


def test_missing_folder_index_and_unison_stems(folder, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        read_index(tmp_path / "none")
    with pytest.raises(DataError, match="no clips.jsonl"):
        read_index(tmp_path)
    with pytest.raises(DataError, match="Unison model needs the speech and sfx stems"):
        read_index(folder, streams=2)  # line 2 has a transcript and no stems
    d = tmp_path / "u"
    d.mkdir()
    for f in folder.glob("*.mp4"):
        os.link(f, d / f.name)
    _index(d, {"video": "c0.mp4", "caption": "a talk", "transcript": "hi", "speech": "c1.mp4", "sfx": "c2.mp4"})
    (clip,) = load_clips(d, 32, 32, 8, 16000, 2.0, streams=2)
    assert np.allclose(clip.audio, clip.speech + clip.sfx, atol=1e-6) and clip.sfx.any() and clip.speech.any()


def test_the_tokenizers_learn_the_folders_words(folder):
    from train.configs import get_config
    from train.train import build_tokenizers

    words, chars = vocabulary(read_index(folder))
    assert {"zebra", "crosses", ",", "!", "knocks"} <= set(words) and {"h", "你", "好", " "} <= set(chars)
    cap, sp = build_tokenizers(get_config("tiny"), str(folder))
    assert 1 not in cap.encode("A zebra crosses, slowly!").ids  # 1: [UNK]
    assert 1 not in sp.encode("hello 你好").ids and 1 in sp.encode("q").ids
    with pytest.raises(ValueError, match="--set text_vocab=N"):
        build_tokenizers(get_config("tiny", text_vocab=8), str(folder))


def _train(*args):
    return subprocess.run([sys.executable, "-m", "train.train", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_train_resume_and_vocoder_on_a_folder(folder, tmp_path):
    out = tmp_path / "run"
    r = _train("--size", "tiny", "--data", folder, "--ae-steps", 1, "--steps", 2, "--batch", 2, "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 clips of 2 s" in r.stderr
    text = (out / "tokenizer_text.json").read_text()
    assert '"zebra"' in text
    assert json.loads((out / "state.json").read_text())["train_config"]["data"] == str(folder)

    # a resumed run keeps the ids its weights learned, even where the folder's words changed since
    idx = (folder / "clips.jsonl").read_text()
    try:
        (folder / "clips.jsonl").write_text(idx.replace("Zebra", "Giraffe"))
        r = _train("--resume", out, "-o", out, "--steps", 3)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (out / "tokenizer_text.json").read_text() == text
        assert "is not what" in r.stderr  # the folder changed since the run began: said
        # ... as a warning, marked among the progress lines (they were alike)
        said = next(x for x in r.stderr.splitlines() if "is not what" in x)
        assert said.split(" ", 2)[2].startswith("warning: "), said
    finally:
        (folder / "clips.jsonl").write_text(idx)

    moved = tmp_path / "moved"  # the vocoder follows a folder that moved
    os.rename(folder, moved)
    try:
        r = subprocess.run([sys.executable, "-m", "train.vocoder", out, "-o", tmp_path / "voc", "--steps", "1",
                            "--batch", "2"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and "moved? give --data DIR" in r.stderr, r.stderr[-2000:]
        r = subprocess.run([sys.executable, "-m", "train.vocoder", out, "-o", tmp_path / "voc", "--steps", "1",
                            "--batch", "2", "--data", moved], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        os.rename(moved, folder)


def _error(argv, capsys, *words):
    from train.cli import train_main

    with pytest.raises(SystemExit) as e:
        train_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: "), err
    for w in words:
        assert w in err[-1], err[-1]


def test_cli_problems_are_one_line_before_training(folder, tmp_path, capsys, caplog):
    out = str(tmp_path / "o")
    _error(["--data", str(folder), "--clips", "4", "-o", out], capsys, "--clips", "--data")
    _error(["--data", str(tmp_path / "none"), "-o", out], capsys, "--data", "no such folder")
    _error(["--data", str(folder), "--set", "text_vocab=8", "-o", out], capsys, "--data", "caption tokens",
           "> text_vocab 8")
    _error(["--data", str(folder), "--unison", "-o", out], capsys, "--data", "clips.jsonl:2", "stems")
    d = tmp_path / "short"
    d.mkdir()
    os.link(folder / "c0.mp4", d / "c0.mp4")
    _index(d, {"video": "c0.mp4", "caption": "late", "start": 2.0})  # 0.5 s left: found when the clips are read
    caplog.set_level("INFO")
    _error(["--data", str(d), "--ae-steps", "1", "--steps", "1", "-o", out], capsys, "--data", "clips.jsonl:1",
           "a clip needs 2 s", "nothing saved")
    assert not os.path.exists(out)
    assert "training on" not in caplog.text, caplog.text  # said before training is announced


def test_fine_tune_a_checkpoint_on_a_folder(tiny_checkpoint, folder, tmp_path):
    from train.checkpoints import load_checkpoint

    out = tmp_path / "ft"
    r = _train("--init-from", tiny_checkpoint, "--data", folder, "--steps", 2, "--batch", 2, "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "starting from the weights of" in r.stderr and "ae step" not in r.stderr  # no autoencoder stage
    assert "are not in" in r.stderr and "zebra" in r.stderr  # the procedural model's tokenizer lacks them
    for f in ("tokenizer_text.json", "tokenizer_speech.json"):  # its ids: the checkpoint's tokenizers
        assert (out / f).read_text() == (tiny_checkpoint / f).read_text()
    base, _, _ = load_checkpoint(tiny_checkpoint)  # EMA weights: where fine-tuning starts
    tuned, _, state = load_checkpoint(out, ema=False)
    assert state["step"] == 2 and state["train_config"]["init_from"] == str(tiny_checkpoint)
    b, t = base.state_dict(), tuned.state_dict()
    ae = [k for k in b if k.startswith(("video_ae.", "audio_ae."))]
    assert ae and all(torch.equal(b[k], t[k]) for k in ae)  # kept
    assert any(not torch.equal(b[k], t[k]) for k in b if k.startswith("denoiser."))  # trained


def test_fine_tune_problems(tiny_checkpoint, folder, tmp_path, capsys):
    out = str(tmp_path / "o")
    _error(["--init-from", str(tiny_checkpoint), "--resume", str(tiny_checkpoint), "-o", out], capsys,
           "--init-from", "--resume")
    _error(["--init-from", str(tiny_checkpoint), "--size", "demo", "-o", out], capsys, "--size", "its own model")
    _error(["--init-from", str(tmp_path), "-o", out], capsys, "--init-from")


# ------------------------------------------------------------------------- review fixes (each failed before)


def _late_audio_mp4(path, delay=0.5, seconds=3.0, flash=1.0, fps=8, sr=16000):
    """An mp4 whose sound track starts `delay` s after its picture; a white frame and a click both at `flash` s."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        a = c.add_stream("aac", rate=sr, layout="mono")
        for i in range(int(seconds * fps)):
            img = np.full((32, 32, 3), 255 if i == round(flash * fps) else 30, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = i, Fraction(1, fps)
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
        x = np.zeros(int((seconds - delay) * sr), np.float32)
        k = int((flash - delay) * sr)
        x[k:k + 160] = 0.8 * np.sin(2 * np.pi * 2000 * np.arange(160) / sr)
        off = int(delay * sr)
        for s in range(0, len(x), 1024):
            af = av.AudioFrame.from_ndarray(x[None, s:s + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = sr, off + s, Fraction(1, sr)
            c.mux(a.encode(af))
        c.mux(a.encode(None))


def test_sound_stays_with_the_picture(folder, tmp_path):
    # a sound track that starts after the picture: the click lands on the white frame, not 0.5 s early
    d = tmp_path / "late"
    d.mkdir()
    _late_audio_mp4(d / "late.mp4")
    _index(d, {"video": "late.mp4", "caption": "a flash"})
    (c,) = load_clips(d, 32, 32, 8, 16000, 2.0)
    assert int(np.argmax(c.frames.mean(axis=(1, 2, 3)))) == 8  # the flash: frame 8 = 1.0 s
    click = int(np.argmax(np.abs(c.audio))) / 16000
    assert abs(click - 1.0) < 0.02, click
    assert not c.audio[:7000].any() or np.abs(c.audio[:7000]).max() < 1e-3  # silence before the track starts

    # a start between frames: picture and sound both start on the frame grid (0.55 s at 8 fps: frame 4 = 0.5 s)
    e = read_index(folder)[2]
    off = load_clip(e.__class__(**{**e.__dict__, "start": 0.55}), 32, 32, 8, 16000, 1.0)
    whole = load_clip(e.__class__(**{**e.__dict__, "start": 0.0}), 32, 32, 8, 16000, 2.0)
    assert np.array_equal(off.frames, whole.frames[4:12])
    assert np.allclose(off.audio, whole.audio[8000:24000], atol=1e-6)


@pytest.mark.parametrize("line, words", [
    ('{"video": "c0.mp4", "caption": "x", "start": 1e308}', ["start must be a number of seconds >= 0"]),
    ('{"video": "c0.mp4", "caption": "x", "start": ' + "9" * 400 + "}", ["start must be a number"]),
    ('{"video": "c0.mp4", "caption": "x", "speech": "c1.mp4", "sfx": null}', ["both stems"]),
    ('{"video": "sub", "caption": "x"}', ["video sub: a folder, not a file"]),
])
def test_more_index_problems_are_one_line(folder, tmp_path, line, words):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    for f in folder.glob("*.mp4"):
        os.link(f, d / f.name)
    (d / "clips.jsonl").write_text(line + "\n")
    with pytest.raises(DataError) as e:
        read_index(d)
    for w in words:
        assert w in str(e.value)


def test_index_encodings_and_line_breaks(folder, tmp_path):
    with pytest.raises(DataError, match="a file; give the folder"):
        read_index(folder / "clips.jsonl")
    d = tmp_path / "e"
    d.mkdir()
    os.link(folder / "c0.mp4", d / "c0.mp4")
    (d / "clips.jsonl").write_text('{"video": "c0.mp4", "caption": "a cup"}\n', encoding="utf-16")
    with pytest.raises(DataError, match="UTF-16; save it as UTF-8"):
        read_index(d)
    # json.dumps(ensure_ascii=False) keeps U+2028 / U+0085 inside strings: not line breaks of JSON Lines
    (d / "clips.jsonl").write_text(json.dumps({"video": "c0.mp4", "caption": "a\u2028b\x85c"}, ensure_ascii=False))
    (e,) = read_index(d)
    assert e.caption == "a\u2028b\x85c"


def test_vocabulary_splits_as_the_tokenizer_does(tmp_path, folder):
    from train.configs import get_config
    from train.train import build_tokenizers

    d = tmp_path / "g"
    d.mkdir()
    os.link(folder / "c0.mp4", d / "c0.mp4")
    _index(d, {"video": "c0.mp4", "caption": "ΟΔΟΣ ΚΑΙ ΣΟΦΟΣ"})  # a final capital sigma: σ in the tokenizer
    cap, _ = build_tokenizers(get_config("tiny"), str(d))
    assert 1 not in cap.encode("ΟΔΟΣ ΚΑΙ ΣΟΦΟΣ").ids


def test_texts_longer_than_the_model_reads_are_named(tmp_path, folder, caplog):
    from train.configs import get_config
    from train.train import TrainConfig, run_tokenizers

    d = tmp_path / "long"
    d.mkdir()
    os.link(folder / "c0.mp4", d / "c0.mp4")
    _index(d, {"video": "c0.mp4", "caption": "a cup"}, {"video": "c0.mp4", "caption": " ".join(["word"] * 40)})
    with caplog.at_level("WARNING"):
        run_tokenizers(TrainConfig(data=str(d)), get_config("tiny"))
    assert "clips.jsonl:2 (40 tokens)" in caplog.text and "max_text_tokens" in caplog.text  # its 40 words ([BOS] aside)


def test_a_bundle_names_the_runs_folders_without_their_paths(folder, tmp_path):
    from export.bundle_writer import export_bundle

    out = tmp_path / "run"
    r = _train("--size", "tiny", "--data", folder, "--ae-steps", 1, "--steps", 1, "--batch", 2, "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    b = export_bundle(out, tmp_path / "bundle")
    man = (b / "manifest.json").read_text()
    assert str(folder.parent) not in man
    assert json.loads(man)["training"]["train_config"]["data"] == folder.name


def test_fit_crop_reads_frames_with_their_aspect_kept(folder, tmp_path):
    """--fit crop: a clip of another aspect than the model's is resized with its aspect kept and center-cropped
    (it was always stretched); the choice is the run's (a resumed run and the vocoder read as it did)."""
    import torch

    from train.cli import resolve_train, train_parser
    from train.data.folder import load_clips

    crop = load_clips(folder, 32, 32, FPS, SR, 2.0, fit="crop")
    plain = load_clips(folder, 32, 32, FPS, SR, 2.0)
    wide, _ = media.read_video(folder / "c0.mp4", FPS, 32, 38, max_frames=crop[0].frames.shape[0])  # 48x40 covers
    np.testing.assert_array_equal(crop[0].frames, wide[:, :, 3:35])
    assert not np.array_equal(crop[0].frames, plain[0].frames)
    np.testing.assert_array_equal(crop[0].audio, plain[0].audio)
    a = train_parser().parse_args(["-o", str(tmp_path / "run"), "--data", str(folder), "--fit", "crop"])
    tc, _, _ = resolve_train(a, torch.device("cpu"))
    assert tc.fit == "crop"
    a = train_parser().parse_args(["-o", str(tmp_path / "run"), "--data", str(folder)])
    assert resolve_train(a, torch.device("cpu"))[0].fit == "stretch"


def test_cut_texts_are_counted_as_the_runtime_counts_them(caplog, tmp_path):
    """A transcript as long as the runtime takes (max_speech_chars less [BOS]) trains whole and is not named; one
    character more is named, counted without [BOS], as `generate` counts it when it refuses it."""
    from pathlib import Path

    from train.configs import get_config
    from train.data.folder import Entry
    from train.train import _warn_cut_texts, build_tokenizers

    cfg = get_config("tiny")
    toks = build_tokenizers(cfg)
    room = cfg.max_speech_chars - 1

    def entry(line, transcript):
        return Entry(f"clips.jsonl:{line}", Path("v.mp4"), "a ball", "", transcript, None, 0.0, None, None, None)

    with caplog.at_level("WARNING", logger="train.train"):
        _warn_cut_texts([entry(1, "a" * room)], toks, cfg)
        assert not caplog.records
        _warn_cut_texts([entry(1, "a" * room), entry(2, "a" * (room + 1))], toks, cfg)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith(f"1 transcript(s) have more tokens than the model reads ({room}: its max_speech_chars "
                          f"{cfg.max_speech_chars} less [BOS])") and msg.endswith(f"clips.jsonl:2 ({room + 1} tokens)")


def test_a_silent_clip_trains_as_silence_when_the_line_says_so(folder, tmp_path):
    """A video without an audio track was an error naming only FFmpeg's "no audio stream"; `"silent": true`
    takes it as silence, and the error says so."""
    d = tmp_path / "s"
    d.mkdir()
    frames = np.full((25, 40, 48, 3), 90, np.uint8)
    media.write_mp4(d / "quiet.mp4", frames, FPS)  # no audio track
    os.link(folder / "c0.mp4", d / "c0.mp4")
    _index(d, {"video": "quiet.mp4", "caption": "a still lake"}, {"video": "c0.mp4", "caption": "a zebra"})
    with pytest.raises(DataError, match=r'clips.jsonl:1: .*no audio stream; give its sound as "audio", or '
                                        r'"silent": true'):
        load_clips(d, 32, 32, 8, 16000, 2.0)
    _index(d, {"video": "quiet.mp4", "caption": "a still lake", "silent": True},
           {"video": "c0.mp4", "caption": "a zebra", "silent": False})
    quiet, loud = load_clips(d, 32, 32, 8, 16000, 2.0)
    assert quiet.frames.shape == (16, 32, 32, 3) and abs(int(quiet.frames.mean()) - 90) <= 3
    assert quiet.audio.shape == quiet.speech.shape == quiet.sfx.shape == (32000,) and not quiet.audio.any()
    assert quiet.kind == "ambient" and np.abs(loud.audio).max() > 0.01
    for line, words in [({"silent": "yes"}, "silent must be true or false"),
                        ({"silent": True, "transcript": "hi"}, "a silent clip has no transcript"),
                        ({"silent": True, "audio": "c0.mp4"}, "a silent clip has no audio")]:
        _index(d, {"video": "quiet.mp4", "caption": "a still lake", **line})
        with pytest.raises(DataError, match=words):
            read_index(d)
