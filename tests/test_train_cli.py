"""`python -m train.train` / `python -m train.vocoder` as a user meets them: options and output folders checked
before any work (one line, exit 2), nothing of the user's replaced, resume taking the checkpoint's settings and
continuing bit-exactly, Ctrl-C ending a run with its checkpoint saved."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from train.checkpoints import load_checkpoint  # noqa: E402

RUN = ["--clips", "4", "--ae-steps", "1", "--steps", "2"]


def _cli(module, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_line_error(r, *words, code=2):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and lines and lines[-1].startswith("error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words:
        assert w in lines[-1], lines[-1]


def _resolve(argv):
    from train.cli import resolve_train, train_parser

    return resolve_train(train_parser().parse_args(argv))


@pytest.mark.parametrize("args, words", [
    (["--size", "huge"], ["--size", "huge"]),
    (["--steps", "-5"], ["--steps", "integer >= 0"]),
    (["--clips", "0"], ["--clips"]),
    (["--lr", "nan"], ["--lr"]),
    (["--ema", "1"], ["--ema"]),
    (["--kinds", "ambient,foo"], ["'foo'"]),
    (["--stages", "0.5,0.5"], ["--stages"]),
    (["--cts-frac", "0"], ["--cts-frac"]),
    (["--set", "layers"], ["KEY=JSON"]),
    (["--set", "foo=1"], ["unknown field 'foo'"]),
    (["--set", "height=30"], ["height 30"]),
    (["--seconds", "3"], ["--seconds 3", "0.5-2 s"]),
    (["--set", "audio_hop=1000"], ["power of two"]),
    (["--set", "audio_hop=131072"], ["audio_hop is 131072", "1..65536"]),
    (["--set", "text_vocab=1"], ["caption tokens", "> text_vocab 1", "--set text_vocab=N"]),
    (["--set", "max_latent_frames=1"], ["at least 2 latent frames"]),
    (["--set", "gldi_window=0"], ["gldi_window is 0", "half a latent frame"]),  # frames that attend nothing
    (["--set", "shift=Infinity"], ["shift is inf", "finite"]),  # trained on NaN and wrote invalid JSON
    (["--set", "s_v=500"], ["s_v is 500", "0..100"]),  # exported, then every generate refused the bundle
    (["--set", "patch=[2,2,2]"], ["patch is [2, 2, 2]", "cannot be exported"]),  # trained, then export failed
])
def test_bad_options_are_one_line_and_exit_2(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        _resolve([*RUN, *args, "-o", "x"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert all(w in err for w in words), err


def test_output_folders_are_checked_before_training_and_never_wiped(tiny_checkpoint, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    (tmp_path / "file").write_text("x")
    ck = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    for out, words in ((tmp_path / "mine", ["other files"]), (tmp_path / "file", ["is a file"]),
                       (tmp_path / "file" / "sub", ["is a file"]), (ck, ["holds a checkpoint", "--overwrite"])):
        _one_line_error(_cli("train.train", *RUN, "-o", out), *words)
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("train.train", *RUN, "-o", ".", cwd=tmp_path / "empty"), "current folder")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious" and (tmp_path / "file").read_text() == "x"
    assert load_checkpoint(ck)[2]["step"] == 6
    (ck / "notes.txt").write_text("mine")  # a checkpoint folder with a file of the user's: a save would delete it
    _one_line_error(_cli("train.train", "--resume", ck, "--steps", "9", "-o", ck), "notes.txt", "move them out")
    assert (ck / "notes.txt").read_text() == "mine"
    (ck / "notes.txt").unlink()
    (tmp_path / "link").symlink_to(ck)
    _one_line_error(_cli("train.train", *RUN, "-o", tmp_path / "link"), "symbolic link")
    _one_line_error(_cli("train.train", *RUN, "-o", tmp_path / ("n" * 300)), "File name too long")
    # the vocoder's -o follows the same rule; a damaged input checkpoint is one line
    _one_line_error(_cli("train.vocoder", ck, "--steps", "0", "-o", tmp_path / "mine"), "other files")
    (tmp_path / "bad").mkdir()
    shutil.copy(ck / "config.json", tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\0" * 10)
    _one_line_error(_cli("train.vocoder", tmp_path / "bad", "--steps", "0", "-o", tmp_path / "v"), "model.safetensors")
    assert not (tmp_path / "v").exists()


def test_save_checkpoint_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path):
    from train.checkpoints import save_checkpoint
    from train.configs import get_config
    from train.model import HarmonyModel

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a checkpoint folder"):
        save_checkpoint(tmp_path / "mine", HarmonyModel(get_config("tiny")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_resume_keeps_the_model_and_the_run_settings_unless_given(tiny_checkpoint, tmp_path, capsys):
    from train.train import snapshot_path

    tc, resume, step = _resolve(["--resume", str(tiny_checkpoint), "--steps", "9", "--batch", "3", "-o", "x"])
    stored = json.loads((tiny_checkpoint / "state.json").read_text())["train_config"]
    assert step == 6 and (tc.steps, tc.batch) == (9, 3)
    assert (tc.clips, tc.kinds, tc.seconds, tc.size) == (stored["clips"], tuple(stored["kinds"]), stored["seconds"],
                                                         stored["size"])
    for flag in (["--size", "demo"], ["--unison"], ["--set", "layers=3"]):
        with pytest.raises(SystemExit):
            _resolve(["--resume", str(tiny_checkpoint), "--steps", "9", *flag, "-o", "x"])
        assert "keeps its checkpoint's model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _resolve(["--resume", str(tiny_checkpoint), "--steps", "6", "-o", "x"])
    assert "at step 6 already" in capsys.readouterr().err
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text("[1, 2]")
    (tmp_path / "ck" / "config.json").write_text("{}")
    (tmp_path / "ck" / "model.safetensors").write_text("")
    with pytest.raises(SystemExit):
        _resolve(["--resume", str(tmp_path / "ck"), "-o", "x"])
    assert "state.json: not a JSON object" in capsys.readouterr().err
    bad = shutil.copytree(tiny_checkpoint, tmp_path / "bad")
    state = json.loads((bad / "state.json").read_text())
    state["train_config"]["kinds"] = "speech"
    (bad / "state.json").write_text(json.dumps(state))
    with pytest.raises(SystemExit):
        _resolve(["--resume", str(bad), "--steps", "9", "-o", "x"])
    assert "train_config: kinds is 'speech'" in capsys.readouterr().err
    (bad / "optimizer.json").unlink()
    with pytest.raises(SystemExit):
        _resolve(["--resume", str(bad), "--steps", "9", "-o", "x"])
    assert "without its optimizer.json" in capsys.readouterr().err
    (bad / "optimizer.safetensors").unlink()
    (bad / "state.json").unlink()  # it started over on default settings, retraining the autoencoders
    with pytest.raises(SystemExit):
        _resolve(["--resume", str(bad), "--steps", "9", "-o", "x"])
    assert "state.json: missing" in capsys.readouterr().err
    assert snapshot_path(str(tmp_path / "run") + "/", 4) == tmp_path / "run_4"  # `-o run/`: beside, not inside


def test_ema_averages_that_do_not_fit_the_model_name_their_file(tiny_checkpoint, tmp_path):
    """A shape the model does not have was a traceback from the EMA's first update on resume."""
    from safetensors.torch import load_file, save_file

    from train.checkpoints import CheckpointError

    bad = shutil.copytree(tiny_checkpoint, tmp_path / "bad")
    ema = load_file(str(bad / "ema.safetensors"))
    name = next(iter(ema))
    save_file({**ema, name: torch.zeros(3, 3)}, str(bad / "ema.safetensors"))
    for ema_weights in (True, False):
        with pytest.raises(CheckpointError, match=f"ema.safetensors: {name} has shape \\[3, 3\\]"):
            if ema_weights:
                load_checkpoint(bad)  # export's read
            else:
                from train.train import TrainConfig, train

                train(TrainConfig(size="tiny", clips=2, kinds=("ambient",), ae_steps=1, steps=8), tmp_path / "o",
                      resume=bad)


def test_a_stopped_and_resumed_run_equals_a_straight_one(tiny_checkpoint, tmp_path):
    """Optimizer, EMA, LR schedule and the random stream all continue: the weights are bit-identical."""
    from train.train import TrainConfig, train

    tc = TrainConfig(size="tiny", clips=6, kinds=("ambient",), ae_steps=8, steps=10, batch=2)
    straight = train(tc, tmp_path / "straight", resume=tiny_checkpoint)
    tc.stop_after = 8
    part = train(tc, tmp_path / "part", resume=tiny_checkpoint)
    tc.stop_after = 0
    resumed = train(tc, tmp_path / "resumed", resume=part)
    for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert (straight / f).read_bytes() == (resumed / f).read_bytes(), f


def test_ctrl_c_saves_the_checkpoint_at_the_step_and_says_how_to_go_on(tmp_path):
    """... and while a run trains, a second one writing the same -o is refused."""
    out = tmp_path / "run"
    # a run too long to end by itself while a second interpreter is refused on a busy machine; SIGINT restored
    # to its default in the child (a shell's background job inherits it ignored: the run would go on to the end)
    p = subprocess.Popen([sys.executable, "-m", "train.train", "--clips", "4", "--ae-steps", "1", "--steps", "3000",
                          "-o", str(out)], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = ""
    while "step 25 [" not in err:
        line = p.stderr.readline()
        assert line, err
        err += line
    second = _cli("train.train", *RUN, "-o", out)  # the same -o while the first run is training
    _one_line_error(second, "another run is writing it")
    p.send_signal(signal.SIGINT)
    err += p.stderr.read()
    assert p.wait(120) == 130, err
    last = err.strip().splitlines()[-1]
    at = load_checkpoint(out)[2]["step"]
    assert 25 < at < 3000 and last.startswith(f"error: SIGINT: stopped at step {at} of 3000")
    assert "--resume" in last
    assert "Traceback" not in err and [q.name for q in tmp_path.iterdir()] == ["run"]


def test_torch_threads_take_omp_num_threads_in_any_form_openmp_accepts(monkeypatch):
    """OMP_NUM_THREADS="4,1" (nested levels) used to end training in int()'s traceback."""
    from train.cli import use_cores

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
        use_cores()
        assert torch.get_num_threads() == 1  # set: torch's own reading of it stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        use_cores()
        assert torch.get_num_threads() == (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)


def test_a_diverging_run_stops_before_its_weights_and_saves_nothing(tmp_path):
    """A NaN / Inf gradient (here from a huge learning rate) used to train on and save NaN weights."""
    from train.train import Diverged, TrainConfig, train

    tc = TrainConfig(size="tiny", clips=2, kinds=("ambient",), ae_steps=1, steps=4, batch=2, lr=1e30)
    with pytest.raises(Diverged, match="non-finite gradient"):
        train(tc, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_what_the_machine_lacks_is_said_before_any_work(monkeypatch, capsys):
    """espeak-ng for speech clips (a RuntimeError traceback after every check had passed), and the memory a
    model needs to train (harmony-5b passed every check, then ran out of memory)."""
    import train.data

    monkeypatch.setattr(train.data, "have_espeak", lambda: False)
    with pytest.raises(SystemExit) as e:
        _resolve([*RUN, "--kinds", "ambient,speech", "-o", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "speech clips need espeak-ng" in err, err
    _resolve([*RUN, "--kinds", "ambient", "-o", "x"])  # ambient clips need no speech
    with pytest.raises(SystemExit) as e:
        _resolve(["--size", "harmony-5b", "-o", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "B parameters need" in err and "GiB to train" in err, err


def test_the_vocoder_in_place_keeps_the_denoisers_optimizer_state(tiny_checkpoint, tmp_path):
    """`python -m train.vocoder CK -o CK` dropped optimizer.*, and a later --resume went on with a fresh AdamW."""
    ck = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    before = {f: (ck / f).read_bytes() for f in ("optimizer.safetensors", "optimizer.json")}
    r = _cli("train.vocoder", ck, "--steps", "0", "-o", ck)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {f: (ck / f).read_bytes() for f in before} == before


def test_export_reads_no_optimizer_state(tiny_checkpoint, tmp_path, monkeypatch):
    """A damaged optimizer file stops a resume, which needs it, not an export (load_checkpoint(optimizer=False))."""
    from export import bundle_writer
    from train.checkpoints import CheckpointError

    ck = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    with open(ck / "optimizer.safetensors", "r+b") as f:
        f.truncate(100)
    model, opt_sd, _ = load_checkpoint(ck, optimizer=False)
    assert opt_sd is None and model is not None
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_checkpoint(ck, ema=False)
    asked = []

    def spy(*a, **kw):
        asked.append(kw)
        return load_checkpoint(*a, **kw)

    monkeypatch.setattr(bundle_writer, "load_checkpoint", spy)
    monkeypatch.setattr(bundle_writer, "export_component", lambda *a, **kw: 1 / 0)  # stop at the first trace
    with pytest.raises(ZeroDivisionError):
        bundle_writer.export_bundle(ck, tmp_path / "b")
    assert asked == [{"optimizer": False}]


def test_running_train_py_as_a_file_says_how_to_run_it():
    """`python train/train.py` put train/ first on sys.path, where train/tokenizers.py hid the tokenizers
    package: an ImportError traceback. One line naming `python -m train.train`, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "train" / "train.py"), "--help"], capture_output=True, text=True,
                       cwd=root, timeout=120)
    assert r.returncode == 2 and r.stderr == "error: run training as a module from the repository root: python -m " \
                                             "train.train ...\n", r.stderr


def test_a_vocabulary_too_small_names_which_one():
    """It said 'tokenizer vocab (18, 25) exceeds the model's (512, 10)': which number was which?"""
    from train.configs import get_config
    from train.train import build_tokenizers

    with pytest.raises(ValueError, match=r"\(transcript characters \d+ > speech_vocab 10\): raise it with --set "
                                         r"speech_vocab=N$"):
        build_tokenizers(get_config("tiny", speech_vocab=10))
