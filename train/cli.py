"""Command lines of training: `python -m train.train` and `python -m train.vocoder`.

Options are checked before any work (one line `error: ...`, exit 2, as harmony-rt's), and so is the output
folder: a checkpoint replaces the whole folder, so -o may only name a new or empty folder, the checkpoint being
resumed, or (with --overwrite) another checkpoint, never a folder holding anything else. A resumed run keeps
its checkpoint's model and takes every setting not given on the command line from the checkpoint. Ctrl-C /
SIGTERM end the denoiser's training after the current step with its checkpoint saved (the autoencoder stage
stops with nothing saved); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

log = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line `error: ...` and exit 2."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def fail(msg: str, code: int = 2):
    sys.stderr.write(f"error: {msg}\n")
    sys.exit(code)


def launcher(name: str) -> int:
    """RANK or WORLD_SIZE as torchrun sets them (0 / 1 in a plain run); read before torch.distributed is up."""
    return int(os.environ.get(name, "1" if name == "WORLD_SIZE" else "0"))


def use_cores() -> None:
    """Torch's threads: every CPU, unless OMP_NUM_THREADS says otherwise (torch reads it itself, in any form
    OpenMP accepts, e.g. "4,1", and torchrun sets it per process)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)


def integer(lo: int):
    """argparse type: an integer >= lo."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
        return v

    return parse


def number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite number in the interval (open ends as flagged)."""
    if math.isinf(hi):
        bounds = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        from .configs import within

        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not within(v, lo, hi, lo_open, hi_open):
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text!r}")
        return v

    return parse


def _kinds(text: str) -> tuple:
    from .data.synth import KINDS

    kinds = tuple(k.strip() for k in text.split(","))
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown kind {bad[0]!r}; kinds: {', '.join(KINDS)} (comma list)")
    return kinds


def _folder(text: str) -> str:
    """--data: kept as an absolute path (a resumed run may start in another folder)."""
    if not text:
        raise argparse.ArgumentTypeError("needs a folder")
    return os.path.abspath(text)


def _fractions(text: str) -> tuple:
    try:
        f = tuple(float(x) for x in text.split(","))
    except ValueError:
        f = ()
    if len(f) != 3 or not all(math.isfinite(x) and x >= 0 for x in f) or abs(sum(f) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"needs three fractions >= 0 summing to 1 (audio,timbre,joint), got {text!r}")
    return f


def _setting(text: str) -> tuple:
    key, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return key.strip(), json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs KEY=JSON (e.g. layers=4), got {text!r}") from None


# ----------------------------------------------------------------------------------------------- output


def _same(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def writable_folder(out: Path, flag: str) -> None:
    """The nearest existing folder above `out` takes a new folder (harmony_rt.bundle.writable_parent); exit 2
    otherwise."""
    from harmony_rt.bundle import writable_parent

    p, problem = writable_parent(out)
    if isinstance(problem, NotADirectoryError):
        fail(f"{flag} {out}: {p} is a file, not a folder")
    if problem is not None:
        fail(f"{flag} {out}: cannot write in folder {p} ({problem.strerror or problem})")


def check_target(out: Path, flag: str, resume: Path | None = None, overwrite: bool = False,
                 may_replace: bool = False, in_place: str = "--resume it to go on from it") -> None:
    """Refuse (exit 2) an output folder the checkpoint save would wreck, before any work.

    A checkpoint replaces the whole folder: `out` may be new or empty, the checkpoint being resumed
    (`resume`), or another checkpoint with `overwrite` (or `may_replace`: a --keep-every snapshot of a resumed
    run); never a folder holding files a checkpoint does not write."""
    from .checkpoints import foreign_files, is_checkpoint

    cwd = Path.cwd()
    try:
        if out.is_symlink():
            fail(f"{flag} {out}: a symbolic link; name the folder itself (a save would replace the link)")
        if out.exists() and not out.is_dir():
            fail(f"{flag} {out}: it is a file, not a checkpoint folder")
        if out.is_dir():
            others = foreign_files(out)
            if is_checkpoint(out) and others:
                fail(f"{flag} {out}: a checkpoint folder that also holds {', '.join(others[:3])}"
                     f"{' ...' if len(others) > 3 else ''}; a save replaces the whole folder: move them out first")
            if is_checkpoint(out):
                if not (overwrite or may_replace or (resume is not None and _same(out, resume))):
                    fail(f"{flag} {out} holds a checkpoint already: {in_place}, --overwrite to replace it, or "
                         "choose another -o")
            elif others:
                fail(f"{flag} {out}: a folder with other files in it; a checkpoint replaces the whole folder, so "
                     "choose a new or empty one")
            elif out == cwd or out in cwd.parents:
                fail(f"{flag} {out}: it is the current folder (or holds it); choose a folder inside it")
    except OSError as e:  # a name too long, a folder that cannot be listed
        fail(f"{flag} {out}: {e.strerror or e}")


def check_snapshots(out: Path, tc, step: int, may_replace: bool) -> None:
    """--keep-every: the OUT_<step> names this run will write are legal, and existing ones are checked as -o is."""
    from .train import snapshot_path

    if not tc.keep_every or tc.last_step < tc.keep_every:
        return
    longest = snapshot_path(out, tc.last_step // tc.keep_every * tc.keep_every)
    if len(os.fsencode(longest.name)) > 255:
        fail(f"--keep-every: the snapshot name {longest.name[:40]}... is too long; choose a shorter -o")
    prefix = out.name + "_"
    for p in out.parent.iterdir() if out.parent.is_dir() else ():
        n = p.name[len(prefix):]
        if p.name.startswith(prefix) and n.isdigit() and step < int(n) <= tc.last_step and int(n) % tc.keep_every == 0:
            check_target(p, "--keep-every", may_replace=may_replace)


@contextlib.contextmanager
def exclusive(out: Path, flag: str):
    """Only one run writes `out` at a time: a second one is refused (exit 2) while the first holds the lock
    `.<name>.lock` beside it (rank 0 only under torchrun; no lock where fcntl is missing, i.e. Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    if launcher("RANK") != 0:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{os.fsencode(out.name)[:240].decode('utf-8', 'ignore')}.lock"
    while True:
        f = open(lock, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            fail(f"{flag} {out}: another run is writing it (it holds {lock})")
        if lock.exists() and os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
            break  # not a file the previous holder unlinked while we opened it
        f.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        f.close()


# ----------------------------------------------------------------------------------------------- signals


class StopOnSignal:
    """SIGINT / SIGTERM ask the run to stop after its current step (pass as train's should_stop); a second SIGINT
    stops at once (KeyboardInterrupt), a second SIGTERM is ignored. A signal the process was started ignoring
    stays ignored."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGINT"

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: the user wants out now
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (torchrun forwarding what the workers got too) must not cut the save
        self.signum = signum
        log.warning("%s: stopping after this step%s", signal.Signals(signum).name,
                    " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")

    def __enter__(self):
        for name in self.SIGNALS:
            s = getattr(signal, name)
            if signal.getsignal(s) is not signal.SIG_IGN:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


# ----------------------------------------------------------------------------------------------- train


# option dest -> TrainConfig field, for the settings a resumed run may change
_TRAIN_FIELDS = {
    "clips": "clips", "seconds": "seconds", "kinds": "kinds", "ae_steps": "ae_steps", "ae_frames": "ae_frames",
    "ae_lr": "ae_lr",
    "steps": "steps", "batch": "batch", "lr": "lr", "warmup": "warmup", "ema": "ema_decay",
    "stages": "stage_fractions", "cts_frac": "cts_frac", "seed": "seed", "ckpt_every": "ckpt_every",
    "keep_every": "keep_every", "stop_after": "stop_after", "precision": "precision", "data": "data",
    "fit": "fit",
}


def train_parser() -> Parser:
    from harmony_rt.media import FITS

    from . import train
    from .configs import SIZES

    d, doc = train.TrainConfig(), train.__doc__
    ap = Parser(prog="python -m train.train", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                argument_default=argparse.SUPPRESS)  # only what was given: a resumed run fills the rest
    opt = ap.add_argument
    opt("-o", "--out", required=True, help="checkpoint folder to write (new or empty; see --resume, --overwrite)")
    opt("--size", choices=sorted(SIZES), help=f"model size (train/configs.py; default: {d.size})")
    opt("--data", type=_folder, help="train on your own clips: a folder with clips.jsonl, one JSON line per clip "
        "(video, caption, transcript, speaker, start, ...: train/data/folder.py); default: procedural clips")
    opt("--fit", choices=FITS, help="--data frames of another aspect than the model's: stretched to "
        "its size, or resized with their aspect kept and center-cropped (a portrait phone clip for a square "
        f"model; default: {d.fit})")
    opt("--clips", type=integer(1), help=f"procedural training clips (default: {d.clips})")
    opt("--seconds", type=number(0, lo_open=True),
        help=f"clip length, up to the model's longest (default: {d.seconds:g})")
    opt("--kinds", type=_kinds, help="comma list of ambient,speech,complex (default: ambient)")
    opt("--ae-steps", type=integer(0), help=f"autoencoder steps (default: {d.ae_steps})")
    opt("--ae-frames", type=integer(0), help="video AE on random crops of N frames (default: 0, whole clips)")
    opt("--ae-lr", type=number(0, lo_open=True), help=f"learning rate of the autoencoders (default: {d.ae_lr:g})")
    opt("--steps", type=integer(0), help=f"denoiser steps; 0: autoencoders only (default: {d.steps})")
    opt("--batch", type=integer(1), help=f"clips per step (default: {d.batch})")
    opt("--lr", type=number(0, lo_open=True), help=f"peak learning rate of the denoiser (default: {d.lr:g})")
    opt("--warmup", type=integer(0), help="linear LR warm-up steps (default: 100, or a tenth of --steps if fewer)")
    opt("--ema", type=number(0, 1, hi_open=True), help=f"EMA decay of the exported weights; 0: none (default: "
        f"{d.ema_decay:g})")
    opt("--stages", type=_fractions, help="fractions of --steps: audio,timbre,joint (default: 0.15,0.15,0.7)")
    opt("--cts", action=argparse.BooleanOptionalAction,
        help="Cross-Task Synergy (with --unison too: its driven rows are SyncCFG's anchors); --no-cts "
             "(ablation) trains the joint task only (default: on)")
    opt("--cts-frac", type=number(0, 1, lo_open=True),
        help=f"share of the batch each CTS driven task takes (0.25: half the rows of 1.0; default: {d.cts_frac:g})")
    opt("--unison", action="store_true", help="Unison variant: speech + SFX streams, cross-modal forcing (+ CTS)")
    opt("--seed", type=integer(0),
        help=f"data, initial weights and noise; on --resume the clips only (default: {d.seed})")
    opt("--ckpt-every", type=integer(0), help="also save the checkpoint every N steps (default: 0, only at the end)")
    opt("--keep-every", type=integer(0), help="also keep a copy every N steps in OUT_<step> (default: 0, none)")
    opt("--stop-after", type=integer(0),
        help="stop after this step (the schedule still spans --steps); resume later to go on (not kept on resume)")
    opt("--init-from", type=Path, help="fine-tune: start from this checkpoint's weights (EMA where kept), "
        "autoencoders and tokenizers; a new run otherwise (step 0, fresh optimizer and schedule); e.g. with --data")
    opt("--resume", type=Path, help="checkpoint to continue: its model, step, optimizer and random state, and "
        "every setting not given here (-o may be the same folder)")
    opt("--overwrite", action="store_true", help="replace the checkpoint already at -o")
    opt("--set", action="append", type=_setting, help="model config override KEY=JSON, e.g. --set layers=4")
    opt("--device", help="where to train: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N "
        "(under torchrun, cuda is each process's LOCAL_RANK GPU; default: auto)")
    opt("--precision", choices=train.PRECISIONS,
        help="fp32, or bf16: the denoiser stage under bf16 autocast, weights, optimizer and losses in fp32; "
             "the autoencoders train in fp32 (default: fp32, or the resumed run's)")
    return ap


def _model_config(size: str, given: dict):
    """The model config of a new run (size, --unison, --set), checked: exit 2 naming the problem."""
    from .checkpoints import checked_config
    from .configs import get_config

    overrides = dict(given.get("set", []))
    if given.get("unison"):
        overrides["audio_streams"] = 2
    try:
        return checked_config({**get_config(size).to_dict(), **overrides}), overrides
    except ValueError as e:
        fail(f"--set: {e}" if given.get("set") else f"--size {size}: {e}")


def _seconds_bounds(cfg) -> tuple[float, float]:
    """Clip lengths the model trains on: at least two latent frames, at most its longest clip."""
    frame = cfg.video_t_stride / cfg.fps
    return 2 * frame, cfg.max_latent_frames * frame


BYTES_PER_PARAM = 20  # fp32 weights, gradients, AdamW's two moments, EMA


def device_of(a: argparse.Namespace):
    """The torch device --device names, checked (exit 2 naming a device this machine lacks)."""
    from .train import resolve_device

    try:
        return resolve_device(getattr(a, "device", "auto"))
    except ValueError as e:
        fail(f"--device {e}")


def _check_model_data(cfg, tc, dev) -> None:
    """What only the model and data decide: the tokenizers fit the vocabularies, a clip's audio fits the STFT
    losses, and training the model fits the memory of the device it trains on."""
    from .train import build_tokenizers

    try:
        if not tc.init_from:  # a fine-tuning run keeps its checkpoint's tokenizers
            build_tokenizers(cfg, tc.data)
    except ValueError as e:
        fail(f"{'--data' if tc.data else '--set'}: {e}")
    samples = int(tc.seconds * cfg.fps) // cfg.video_t_stride * cfg.video_t_stride / cfg.fps * cfg.sample_rate
    if samples < 1024:
        fail(f"--seconds {tc.seconds:g}: a clip has {samples:.0f} audio samples at sample_rate {cfg.sample_rate}; the "
             "audio autoencoder's loss needs at least 1024")
    import torch

    from .model import HarmonyModel

    with torch.device("meta"):  # shapes only: no memory
        n = sum(p.numel() for p in HarmonyModel(cfg).parameters())
    need = n * BYTES_PER_PARAM
    if dev.type == "cuda":
        have, where = torch.cuda.get_device_properties(dev).total_memory, f"{dev} has"
    else:
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"
    if need > have:
        fail(f"--size {tc.size}: {n / 1e9:.1f} B parameters need ~{need / 2**30:.0f} GiB to train (weights, "
             f"gradients, AdamW, EMA in fp32); {where} {have / 2**30:.0f} GiB")


def check_tools(kinds) -> None:
    """Speech clips (kinds speech / complex) are spoken by espeak-ng: checked before any work."""
    from .data import have_espeak

    if {"speech", "complex"} & set(kinds) and not have_espeak():
        fail(f"--kinds {','.join(kinds)}: speech clips need espeak-ng, which is not installed "
             "(apt-get install espeak-ng), or train on --kinds ambient")


def resolve_train(a: argparse.Namespace, dev=None):
    """-> (TrainConfig, resume path or None, the checkpoint's step), every check done (exit 2 otherwise);
    dev: the device it trains on (memory check; default: the CPU)."""
    from .checkpoints import TOKENIZER_FILES, CheckpointError, read_meta
    from .train import TrainConfig

    given = vars(a)
    settings = {f: given[k] for k, f in _TRAIN_FIELDS.items() if k in given}
    if "cts" in given:
        settings["use_cts"] = given["cts"]
    resume, step = given.get("resume"), 0
    model_flags = [f for f in ("size", "unison", "set") if f in given]  # the model of a new run
    init = given.get("init_from")
    if init is not None and resume is not None:
        fail("--init-from: starts a new run from a checkpoint's weights; --resume continues one: give one of them")
    if init is not None:
        try:
            cfg, state = read_meta(init)
        except CheckpointError as e:
            fail(f"--init-from: {e}")
        if model_flags:
            fail(f"--{model_flags[0]}: --init-from {init} brings its own model; drop "
                 f"{', '.join('--' + f for f in model_flags)}")
        if not all((Path(init) / f).is_file() for f in TOKENIZER_FILES):
            fail(f"--init-from {init}: no tokenizers in it ({', '.join(TOKENIZER_FILES)})")
        stored = state.get("train_config") if isinstance(state.get("train_config"), dict) else {}
        size, overrides = stored.get("size", TrainConfig.size), stored.get("overrides", {})
        tc = replace(TrainConfig(size=size if isinstance(size, str) else TrainConfig.size,
                                 overrides=overrides if isinstance(overrides, dict) else {}),
                     **settings, init_from=os.path.abspath(init))
    elif resume is not None:
        try:
            cfg, state = read_meta(resume)
        except CheckpointError as e:
            fail(f"--resume: {e}")
        stored = state.get("train_config")
        if not isinstance(stored, dict):  # it would start over on the defaults, retraining the autoencoders
            fail(f"--resume: {Path(resume) / 'state.json'}: {'no train_config in it' if state else 'missing'}; "
                 "a run resumes from the step, settings and random state it holds")
        base = TrainConfig.from_dict(stored)
        step = state.get("step", 0)
        if model_flags:
            want, _ = _model_config(given.get("size", base.size), given)
            if want != cfg:
                fail(f"--{model_flags[0]}: a resumed run keeps its checkpoint's model, which differs; drop "
                     f"{', '.join('--' + f for f in model_flags)}, or train a new model without --resume")
        try:
            base.check()
        except ValueError as e:
            fail(f"--resume: {Path(resume) / 'state.json'}: train_config: {e}")
        base = replace(base, stop_after=0)  # where to stop is this invocation's choice
        changed = {k: v for k, v in settings.items() if getattr(base, k) != v}
        tc = replace(base, **settings)
        kept = ", ".join(f"{k}={v!r} (was {getattr(base, k)!r})" for k, v in changed.items())
        log.info("resuming %s at step %d; settings from the checkpoint%s", resume, step,
                 f" except {kept}" if kept else "")
        if tc.steps <= step:
            fail(f"--steps {tc.steps}: the checkpoint is at step {step} already; nothing to train (raise --steps)")
        if tc.stop_after and tc.stop_after <= step:
            fail(f"--stop-after {tc.stop_after}: the checkpoint is at step {step} already")
    else:
        size = given.get("size", TrainConfig.size)
        cfg, overrides = _model_config(size, given)
        tc = replace(TrainConfig(size=size, overrides=overrides), **settings)
    lo, hi = _seconds_bounds(cfg)
    if lo > hi:
        fail(f"--set: max_latent_frames {cfg.max_latent_frames}: training needs clips of at least 2 latent frames")
    if not lo - 1e-9 <= tc.seconds <= hi + 1e-9:
        fail(f"--seconds {tc.seconds:g}: this model trains on clips of {lo:g}-{hi:g} s "
             f"({cfg.max_latent_frames} latent frames at most)")
    if resume is None:
        import torch

        _check_model_data(cfg, tc, dev if dev is not None else torch.device("cpu"))
    if tc.init_from and any(k in given for k in ("ae_steps", "ae_frames", "ae_lr")):
        log.warning("--init-from keeps the checkpoint's autoencoders: --ae-steps / --ae-frames / --ae-lr are not used")
    world = launcher("WORLD_SIZE")
    if tc.data:
        from .data.folder import DataError, read_index

        mixed = [f"--{k}" for k in ("clips", "kinds") if k in given]
        if mixed:
            fail(f"{mixed[0]}: sets the procedural clips; --data {tc.data} trains on its own clips")
        try:
            n = len(read_index(tc.data, cfg.audio_streams))
        except DataError as e:
            moved = resume is not None and "data" not in given and not Path(tc.data).exists()
            fail(f"--data: {e}" + (" (the run's folder; moved? add --data DIR)" if moved else ""))
        if n < world:
            fail(f"--data {tc.data}: {n} clips; each of the {world} processes needs at least one")
        return tc, resume, step
    if tc.clips < world:
        fail(f"--clips {tc.clips}: each of the {world} processes needs at least one clip")
    check_tools(tc.kinds)
    return tc, resume, step


def _kept(out: Path) -> str:
    """What a run that stopped without saving leaves at `out`."""
    return f"{out} is left as it was" if out.exists() else "nothing saved"


class _LogFormat(logging.Formatter):
    """'<time> <message>', with 'warning:' / 'error:' before the message of a warning or worse: a training log
    is mostly progress lines, and a warning among them (a cut caption, a changed data folder) must stand out."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        level = record.levelno
        mark = "" if level < logging.WARNING else "warning: " if level == logging.WARNING else "error: "
        return f"{record.asctime} {mark}{record.message}"


def log_setup() -> None:
    """INFO to stderr in the training commands' format (_LogFormat), once per process."""
    if logging.getLogger().handlers:  # as logging.basicConfig: a configured root is left alone
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormat())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def train_main(argv=None) -> None:
    from .checkpoints import CheckpointError
    from .data.folder import DataError
    from .train import Diverged, Interrupted, train

    a = train_parser().parse_args(argv)
    log_setup()
    dev = device_of(a)
    tc, resume, step = resolve_train(a, dev)
    out = Path(os.path.abspath(a.out))
    overwrite = getattr(a, "overwrite", False)
    check_target(out, "-o", resume, overwrite)
    check_snapshots(out, tc, step, may_replace=overwrite or resume is not None)
    writable_folder(out, "-o")
    use_cores()
    stop = StopOnSignal()
    try:
        with exclusive(out, "-o"), stop:
            train(tc, out, resume=resume, should_stop=stop, device=dev)
        import torch

        if torch.distributed.is_initialized():  # torchrun: leave the process group (NCCL warns at exit otherwise)
            torch.distributed.destroy_process_group()
    except Interrupted as e:
        fail(f"{stop.name}: {e}; nothing saved (the autoencoder stage does not resume midway)", stop.exit_code)
    except DataError as e:  # a clip that does not decode or is too short: found when the clips are read
        fail(f"--data: {e}; {_kept(out)}")
    except CheckpointError as e:
        fail(f"--resume: {e}")
    except Diverged as e:
        hint = "" if e.stage == "autoencoders" else "; try a lower --lr"
        fail(f"training diverged: {e}; stopped before it reached the weights, {_kept(out)}{hint}", 1)
    except KeyboardInterrupt:
        fail(f"interrupted; {_kept(out)}", 130)
    except OSError as e:  # a full disk, a folder removed under the run
        fail(f"stopped by an OS error: {e}", 1)
    if stop():
        if launcher("RANK") != 0:  # under torchrun rank 0 saves and says so
            sys.exit(stop.exit_code)
        from .checkpoints import read_meta

        at = read_meta(out)[1]["step"]
        if at >= tc.last_step:
            return  # the signal came with the last step: the run is complete
        ddp = launcher("WORLD_SIZE") > 1
        how = "the same torchrun command with" if ddp else "python -m train.train"
        fail(f"{stop.name}: stopped at step {at} of {tc.steps} and saved {out}; go on with {how} --resume {out} "
             f"-o {out}", stop.exit_code)


# ----------------------------------------------------------------------------------------------- vocoder


def vocoder_parser() -> Parser:
    from . import vocoder

    ap = Parser(prog="python -m train.vocoder", description=vocoder.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="checkpoint whose audio decoder is fine-tuned")
    ap.add_argument("-o", "--out", required=True, help="checkpoint folder to write (new or empty, or CHECKPOINT)")
    ap.add_argument("--steps", type=integer(0), default=800, help="fine-tuning steps (default: 800)")
    ap.add_argument("--batch", type=integer(1), default=8, help="waveform segments per step (default: 8)")
    ap.add_argument("--lr", type=number(0, lo_open=True), default=1e-3, help="learning rate (default: 0.001)")
    ap.add_argument("--data", type=_folder, default=None,
                    help="train on this folder's clips (clips.jsonl, as python -m train.train --data); default: the "
                         "checkpoint's own clips (its --data folder, or its procedural clips)")
    ap.add_argument("--decoder-from", type=Path, default=None,
                    help="start from the audio decoder of this checkpoint (same audio encoder required)")
    ap.add_argument("--overwrite", action="store_true", help="replace the checkpoint already at -o")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda, cuda:N "
                    "(default: auto)")
    return ap


def checked_inputs(*paths: tuple[str, Path | None]) -> None:
    """Each (flag, path) names a readable checkpoint (exit 2 otherwise)."""
    from .checkpoints import CheckpointError, read_meta

    for flag, p in paths:
        if p is not None:
            try:
                read_meta(p)
            except CheckpointError as e:
                fail(f"{flag}: {e}")
