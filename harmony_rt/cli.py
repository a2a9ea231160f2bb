"""`harmony-rt` command line: export, build, generate, info, bench.

Errors the user can fix print one line and exit 2; no traceback unless --debug.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from .backends import MAX_THREADS
from .errors import HarmonyError

log = logging.getLogger("harmony_rt")


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


class _OutputError(HarmonyError):
    """Standard output could not be written (a full disk, an I/O error): exit 1, not a usage error."""


def _say(text: str = "") -> None:
    """click.echo to stdout; a failed write says so in one line instead of an internal error."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): click.echo would drop the text silently
        raise _OutputError("cannot write to standard output: it is closed")
    try:
        click.echo(text)
    except BrokenPipeError:  # the reader went away: handled quietly by handle_errors
        raise
    except OSError as e:
        raise _OutputError(f"cannot write to standard output: {e.strerror or e}") from None


def _flag_names(msg: str) -> str:
    """'s_v must be ...' (the library's argument name) -> '--s-v must be ...' when it is the command's option."""
    ctx = click.get_current_context(silent=True)
    first, sep, rest = msg.partition(" ")
    for p in ctx.command.params if ctx else ():
        if isinstance(p, click.Option) and p.name == first and sep:
            return f"{max(p.opts, key=len)} {rest}"
    return msg


class _Terminated(SystemExit):
    """SIGTERM / SIGHUP as an exception, so temp files and folders are cleaned up as on Ctrl-C."""


def _on_signal(signum, frame):
    for s in _SIGNALS:  # a second signal must not interrupt the clean-up this one starts
        signal.signal(s, signal.SIG_IGN)
    click.echo(f"error: terminated ({signal.Signals(signum).name})", err=True)
    raise _Terminated(128 + signum)


_SIGNALS = [s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP")) if s is not None]  # no HUP: Windows


@contextlib.contextmanager
def _terminate_cleanly():
    """While the command runs, SIGTERM (kill, timeout, docker stop) and SIGHUP raise `_Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a signal the process was started ignoring (nohup, trap '' HUP) stays ignored
    old = {s: signal.signal(s, _on_signal) for s in _SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class _Group(click.Group):
    """Usage errors (a bad option value, a missing argument) as one `error: ...` line and exit 2, like ours."""

    def main(self, *args, **kw):
        if kw.pop("standalone_mode", True) is False:  # embedded: click's own contract (return, raise)
            with _terminate_cleanly():
                return super().main(*args, standalone_mode=False, **kw)
        try:
            with _terminate_cleanly():
                rv = super().main(*args, standalone_mode=False, **kw)
        except _NO_ARGS_IS_HELP as e:  # a bare `harmony-rt`: the help, as click shows it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            hint = f" (see {e.ctx.command_path} --help)" if e.ctx else ""
            _fail(e.format_message().replace("\n", " ").rstrip(".") + hint, e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            _fail("interrupted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _interrupted(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `e`."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def handle_errors(fn):
    """Map HarmonyError to exit 2 and anything unexpected to exit 1, each as one line."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*a, **kw)
        except _OutputError as e:
            _fail(str(e), 1)
        except HarmonyError as e:
            if debug:
                raise
            _fail(_flag_names(str(e).replace("\n", " ")), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:  # the reader went away (`harmony-rt info | head`): stop quietly, as on SIGPIPE
            if debug:
                raise
            try:  # no second error when the interpreter flushes stdout at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (embedded, tests)
                pass
            sys.exit(141)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # last resort: still one line, never a traceback
            if debug:
                raise
            if _interrupted(e):  # a Ctrl-C inside an import turns into the importer's ImportError
                _fail("interrupted", 130)
            if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # pathlib's checks raise it
                _fail(f"{e.filename or 'a path'}: file name too long")
            _fail(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(rerun with --debug)", 1)

    return wrapper


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="harmony-rt")
def main(debug: bool, verbose: int):
    """harmony-rt: joint audio-video generation without PyTorch at inference time."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _shown(text: Path | str) -> str:
    """A path or note for one line of output: a newline or tab in it as \\n, \\t."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(text))


def _check_output(path: Path) -> None:
    if path.suffix.lower() != ".mp4":
        raise HarmonyError(f"output must be an .mp4 file, got {path}")
    _check_folder(f"cannot write {path}", path)


def _check_folder(what: str, out: Path) -> None:
    """The folder `out` goes in exists or can be made (as `mkdir -p`): harmony_rt.bundle.writable_parent."""
    from .bundle import writable_parent

    p, problem = writable_parent(out)
    if isinstance(problem, NotADirectoryError):
        raise HarmonyError(f"{what}: {p} is not a folder")
    if problem is not None:
        raise HarmonyError(f"{what}: folder {p} is not writable ({problem.strerror or problem})")


def _check_targets(output: Path, stems: Path | None, n: int, kw: dict) -> None:
    """Every file the run will write: a writable name, no folder in the way, none of the inputs."""
    from .pipeline import clip_files, output_paths

    first = kw.get("sample") or 0
    targets = [f for p, sd in output_paths(output, range(first, first + n), stems) for f in clip_files(p, True, sd)]
    inputs = {k: Path(v) for k, v in kw.items() if k in ("audio", "video", "image", "ref_audio") and v is not None}
    for t in targets:
        try:
            str(t).encode("utf-8")
        except UnicodeEncodeError:
            raise HarmonyError(f"cannot write {t!s}: the name is not valid UTF-8") from None
        if t.is_dir():
            raise HarmonyError(f"cannot write {t}: it is a folder")
        for k, src in inputs.items():
            if t.absolute() == src.absolute() or (t.exists() and src.exists() and os.path.samefile(t, src)):
                raise HarmonyError(f"cannot write {t}: it is the --{k.replace('_', '-')} input")
    if stems is not None and stems.absolute() in {p.absolute() for p in targets}:
        raise HarmonyError(f"--stems {stems}: it is an output file, not a folder")
    seen: dict[Path, Path] = {}
    for t in targets:  # e.g. -o speech.mp4 --stems . : the wav beside the mp4 is also a stem
        if (a := t.absolute()) in seen:
            raise HarmonyError(f"cannot write {t} twice: choose another -o or --stems")
        seen[a] = t


def _check_stems(stems: Path, kw: dict) -> None:
    """--stems names a folder that exists or can be made (every existing ancestor a writable folder)."""
    if kw.get("audio") is not None:
        raise HarmonyError("--stems: with --audio the sound is given, not generated; there are no stems")
    _check_folder(f"--stems {stems}", stems / "mix.wav")  # a stem file: the folder is made for it


@main.command()
@click.argument("prompt")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=Path("out.mp4"), show_default=True,
              help="Output .mp4 (a .wav is written beside it; missing folders are made).")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Bundle folder (default: the shipped demo).")
@click.option("--speech", default="",
              help="Transcript to speak (English or Chinese; at most the bundle's limit, as `harmony-rt info` "
                   "shows it).")
@click.option("--video-caption", default=None, help="Caption for the picture (default: PROMPT).")
@click.option("--audio-caption", default=None, help="Caption for the sound (default: PROMPT).")
@click.option("--seconds", type=float, default=None,
              help="Clip length, rounded to whole latent frames (default and maximum: the bundle's; "
                   "`harmony-rt info`).")
@click.option("--steps", type=int, default=None, help="ODE steps (default: the bundle's).")
@click.option("--guidance", default=None,
              help="sync | cfg | sync+cfg | none (default: the bundle's; sync for the demo).")
@click.option("--s-v", type=float, default=None, help="SyncCFG video scale (sync, sync+cfg; default: the bundle's).")
@click.option("--s-a", type=float, default=None, help="SyncCFG audio scale (sync, sync+cfg; default: the bundle's).")
@click.option("--cfg-scale", type=float, default=None, help="Text CFG scale (cfg, sync+cfg; default: the bundle's).")
@click.option("--scheduler", default=None, help="euler | unipc (default: the bundle's).")
@click.option("--step-cache", type=float, default=None,
              help="Skip denoiser calls where the velocity changes slowly (0-1; e.g. 0.1; off by default; euler only). "
                   "Faster, at a measured quality cost (bench/RESULTS.md).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-samples", type=int, default=1, show_default=True,
              help="Variations in one batched run; N > 1 writes OUT_0.mp4 ... (and STEMS/0/ ...).")
@click.option("--sample", type=int, default=0, show_default=True,
              help="Index of the first sample: the same --seed with --sample I remakes sample I of a "
                   "--num-samples run (OUT_I.mp4) alone; with --num-samples N, samples I..I+N-1 (OUT_I.mp4 ...).")
@click.option("--audio", "audio", type=click.Path(path_type=Path), default=None, help="A2V: driving audio.")
@click.option("--video", "video", type=click.Path(path_type=Path), default=None, help="V2A: driving video.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="I2AV: first frame.")
@click.option("--fit", type=click.Choice(("stretch", "crop")), default="stretch", show_default=True,
              help="How --video / --image frames of another aspect than the model's are resized: stretch (aspect "
                   "not kept) or crop (aspect kept, center-cropped).")
@click.option("--start", type=float, default=0.0, show_default=True,
              help="Seconds into the --audio / --video file where the driving part begins.")
@click.option("--ref-audio", type=click.Path(path_type=Path), default=None,
              help="Voice to clone (0.5-10 s, or up to the bundle's max_ref_seconds where that is longer; "
                   "only its first max_ref_seconds are used).")
@click.option("--stems", type=click.Path(path_type=Path), default=None,
              help="Folder for speech/sfx/mix stems (Unison).")
@click.option("--backend", default="auto", show_default=True,
              help="auto | ort | tensorrt (auto: TensorRT when engines are built for the bundle, else ORT).")
@click.option("--precision", default=None,
              help="Graph variant: fp16 | int8 | int8-dynamic | fp8 (ORT), fp16 | fp8 (TensorRT); components "
                   "without it run fp32 (default: the main graphs). On a CPU only int8 is faster than fp32; fp16 "
                   "and fp8 are for GPUs (ORT's CPU kernels run them slower).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle files used (faster first load).")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
              help="CPU threads for ONNX Runtime (default: ORT's choice, one per core). On a machine busy with "
                   "other work, fewer threads can be faster.")
@click.option("--quiet", is_flag=True,
              help="No progress (a bar on a terminal; where stderr is not a terminal, a line every 10 s).")
@handle_errors
def generate(prompt, output, bundle, stems, backend, precision, no_verify, threads, quiet, num_samples, **kw):
    """Generate a video with synchronized audio from PROMPT."""
    from tqdm import tqdm

    from .pipeline import Pipeline, output_paths, save_all

    _check_output(output)
    precision = precision.strip().lower() if precision is not None else None  # as export reads it: FP16 = fp16
    if stems is not None:
        _check_stems(stems, kw)
    _check_targets(output, stems, num_samples, kw)
    pipe = Pipeline.from_bundle(bundle, verify=not no_verify, backend=backend, precision=precision, threads=threads)
    if stems is not None and pipe.geometry.S < 2:
        raise HarmonyError(f"--stems needs a Unison bundle (speech and sound streams); {pipe.bundle.path} has one "
                           "audio stream")
    early = pipe.text_notes(prompt, kw["speech"], kw["video_caption"], kw["audio_caption"])
    bar = None
    lines = _StepLines() if not quiet and sys.stderr is not None and not _is_terminal(sys.stderr) else None

    def progress(done, total):  # the bar starts at (0, total), once the inputs were validated and encoded
        nonlocal bar
        if bar is None:
            for note in early:  # said as the run starts (a typo can be stopped), not after it
                click.echo(f"note: {_shown(note)}", err=True)
            # None: tqdm's own test, no bar where stderr is not a terminal (a log file gets no \r-redrawn lines)
            bar = tqdm(total=total, disable=True if quiet or sys.stderr is None else None, unit="step",
                       file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if lines is not None:
            lines(done, total)

    try:
        results = pipe.generate_batch(prompt, num_samples=num_samples, progress=progress, **kw)
    finally:
        if bar is not None:
            bar.close()
    save_all(results, output, stems_dir=stems)  # all files or none
    for note in dict.fromkeys(n for res in results for n in res.notes if n not in early):  # each once
        click.echo(f"note: {_shown(note)}", err=True)
    for res, (path, stem_dir) in zip(results, output_paths(output, [r.sample for r in results], stems)):
        also = f" and stems in {_shown(stem_dir)}" if stem_dir is not None else ""
        _say(f"wrote {_shown(path)} and {_shown(path.with_suffix('.wav'))}{also} ({res.seconds:.2f} s, "
             f"{res.frames.shape[2]}x{res.frames.shape[1]} @ {res.fps:g} fps, audio {res.sample_rate} Hz"
             f"{f', seed {res.seed} sample {res.sample}' if res.sample or len(results) > 1 else ''})")


def _numbers(entry: dict, *keys: str) -> bool:
    """Whether every key of a manifest entry holds a number (hand-made manifests may lack them)."""
    return all(isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool) for k in keys)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _StepLines:
    """Progress where stderr is a log, not a terminal: a plain line at most every `every` seconds
    ("step 12/40, 31 s, about 72 s left"), none for runs shorter than that."""

    every = 10.0  # seconds

    def __init__(self):
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every or not 0 < done < total:  # the last step: the "wrote" line follows
            return
        self.last = now
        spent = now - self.start
        click.echo(f"step {done}/{total}, {spent:.0f} s, about {spent / done * (total - done):.0f} s left",
                   err=True)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="Bundle folder to write: new, empty, or an old bundle (replaced whole; a folder holding "
                   "anything else is refused).")
@click.option("--precision", default="fp32", show_default=True,
              help="Comma list of fp32, fp16, int8 (writes int8 static and int8-dynamic), int8-dynamic, fp8; "
                   "fp32 is always the main graph, the others become variants. From a BUNDLE: the variants "
                   "to keep.")
@click.option("--custom-op", is_flag=True,
              help="Also write the denoiser with RoPEAlignedAttention plugin nodes (variant fp32-plugin; with "
                   "--precision fp16 also fp16-plugin), which harmony-rt build uses by default. From a BUNDLE: "
                   "keep those of the kept precisions.")
@handle_errors
def export(checkpoint, output, precision, custom_op):
    """Export a training CHECKPOINT to a bundle (ONNX graphs + manifest), checked against PyTorch; or copy a
    BUNDLE with only the --precision variants (e.g. int8 for a CPU deployment; no torch needed)."""
    if not Path(checkpoint).is_dir():
        raise HarmonyError(f"checkpoint or bundle folder not found: {checkpoint}")
    if (Path(checkpoint) / "manifest.json").is_file():
        from .publish import copy_bundle

        logging.getLogger("harmony_rt.publish").setLevel(logging.INFO)
        copy_bundle(checkpoint, output, precision, plugin=custom_op)
        _say(f"wrote bundle {_shown(output)}")
        return
    if not (Path(checkpoint) / "model.safetensors").is_file():  # said before asking for torch
        raise HarmonyError(f"{checkpoint}: neither a bundle (no manifest.json: an interrupted export?) nor a "
                           "training checkpoint (no model.safetensors)")
    try:
        from export.bundle_writer import export_bundle
    except ImportError as e:
        raise HarmonyError(f"export needs the training extra ({e.name} missing): "
                           "pip install '.[train]' in the repository") from None
    logging.getLogger("export").setLevel(logging.INFO)
    export_bundle(checkpoint, output, precisions=precision, custom_op=custom_op)
    _say(f"wrote bundle {_shown(output)}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@handle_errors
def info(bundle):
    """Show a bundle's model, geometry, components and parity (default: the shipped one); checks every file's sha256."""
    from .bundle import Bundle, default_bundle_path

    b = Bundle.load(bundle or default_bundle_path()).verify_all()
    m = b.manifest
    _say(f"bundle   {_shown(b.path)}\nvariant  {b.variant}\nformat   {m['format_version']}")
    _say("geometry " + json.dumps(m["geometry"]))
    _say("sampling " + json.dumps({k: v for k, v in m["sampling"].items() if k != "time"}))
    g = b.geometry
    from .text import TextTokenizer

    room = [TextTokenizer(b.file_path(f"tokenizer_{k}"), n, k).room  # the model's length less [BOS]
            for k, n in (("text", g.max_text_tokens), ("speech", g.max_speech_chars))]
    _say(f"limits   clip <= {g.max_latent_frames * g.video_t_stride / g.fps:g} s, prompt <= {room[0]} "
         f"tokens, transcript <= {room[1]} characters, reference voice: first "
         f"{m['sampling'].get('max_ref_seconds', 3.0):g} s used")
    def megabytes(entry: dict) -> float:  # the graph and its external data (.onnx.data)
        files = [entry["file"], *(x["file"] for x in entry.get("external_data", []))]
        return sum((b.path / f).stat().st_size for f in files) / 1e6

    _say("components (size with external data; parity: max abs error vs PyTorch; variants: max abs / relative "
         "error vs fp32)")
    for name, c in m["components"].items():
        _say(f"  {name:15s} {c['precision']:12s} {megabytes(c):7.2f} MB  "
             f"parity {c.get('parity_max_abs_err', float('nan')):.1e}")
        for prec, v in (c.get("variants") or {}).items():
            err = (f"error {v['max_abs_err']:.1e} / {v['max_rel_err']:.1e}" if _numbers(v, "max_abs_err", "max_rel_err")
                   else "(variant)")
            _say(f"  {'':15s} {prec:12s} {megabytes(v):7.2f} MB  {err}{'  TensorRT plugin' if v.get('plugin') else ''}")
    entries = [e for c in m["components"].values() for e in (c, *(c.get("variants") or {}).values())]
    n = len(entries) + sum(len(e.get("external_data", [])) for e in entries) + len(m.get("files", {}))
    _say(f"verified sha256 of all {n} files")

@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", default="fp16", show_default=True, help="fp16 | fp8 (the graph carries the types).")
@click.option("--max-frames", type=int, default=None, help="Largest video latent frame count to build for.")
@click.option("--max-batch", type=int, default=None, help="Largest batch (guidance branches x samples).")
@click.option("--force", is_flag=True, help="Rebuild even when the engines are up to date.")
@click.option("--plugin/--no-plugin", default=True, show_default=True,
              help="Build from the bundle's plugin graphs (fused RoPEAlignedAttention, export --custom-op) where "
                   "it has them at the precision; --no-plugin: the decomposed graphs.")
@click.option("--dry-run", is_flag=True, help="Only show the graph each engine would be built from (no TensorRT).")
@handle_errors
def build(bundle, precision, max_frames, max_batch, force, plugin, dry_run):
    """Build TensorRT engines for BUNDLE (needs an NVIDIA GPU, TensorRT >= 10.15 (written against 11, not yet
    run on a GPU) and the engines extra: pip install '.[engines]')."""
    import importlib.util

    try:
        from engines.build import build_engines, plan_engines
    except ImportError as e:
        raise HarmonyError(f"engine building needs the repository's engines package ({e.name} missing)") from None
    if importlib.util.find_spec("onnx") is None:
        raise HarmonyError("engine building reads the graphs with onnx, not installed: "
                           "pip install '.[engines]' in the repository")
    precision = precision.strip().lower()
    if dry_run:
        from .bundle import Bundle

        for plan in plan_engines(Bundle.load(bundle), precision, max_frames, max_batch, plugin_graphs=plugin):
            _say(plan.describe())
        return
    for path in build_engines(bundle, precision, max_frames=max_frames, max_batch=max_batch, force=force,
                              plugin_graphs=plugin):
        _say(f"engine {path}")


from .bench import bench_command  # noqa: E402  (harmony_rt/bench.py)

bench_command.callback = handle_errors(bench_command.callback)  # one-line errors, as the other commands
main.add_command(bench_command, "bench")

if __name__ == "__main__":
    main(prog_name="harmony-rt")
