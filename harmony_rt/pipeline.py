"""The public API: `Pipeline.from_bundle(path).generate(prompt, ...)` -> frames + audio, torch-free.

    encode captions / transcript / reference once -> ODE loop (scheduler per stream, guidance batch)
    -> decode video and audio -> GenerationResult (save() writes mp4 + wav atomically)

A pipeline is safe to share between threads: sessions are shared, every call keeps its own state.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import math
import numbers
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import media
from .backends import MAX_THREADS, Backend, make_backend
from .bundle import Bundle, default_bundle_path
from .errors import BundleError, Cancelled, HarmonyError, MediaError
from .guidance import MODES, GuidanceScales, GuidedDenoiser, branches, check_split
from .schedulers import SCHEDULERS, make_scheduler
from .splitstore import SplitStore
from .stepcache import StepCache
from .text import TextTokenizer
from .tiling import Tiling, decode_tiled

log = logging.getLogger(__name__)

Progress = Callable[[int, int], "bool | None"]  # (steps done, total) -> False to cancel


@dataclass
class GenerationResult:
    """One generated clip. frames uint8 [T, H, W, 3]; audio float32 [W] (the mix); stems by name (Unison)."""

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    seed: int
    stems: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sample: int = 0  # its noise is seeded by (seed, sample): generate(..., seed=seed, sample=sample) remakes it

    @property
    def seconds(self) -> float:
        return self.frames.shape[0] / self.fps

    def save(self, path: str | Path, wav: bool = True, stems_dir: str | Path | None = None) -> Path:
        """Write `path` (.mp4, h264 + aac), with `wav` the audio beside it as .wav, with `stems_dir` the
        Unison stems there; the files appear together (see `save_all`)."""
        save_all([self], path, wav=wav, stems_dir=stems_dir)
        return Path(path)

    def writes(self, path: Path, wav: bool, stems_dir: Path | None) -> list[tuple[Path, Callable[[Path], None]]]:
        """(target, writer of that file's bytes at a given temp path) for each file `save` makes."""
        if stems_dir is not None and not self.stems:
            raise HarmonyError(f"stems_dir {stems_dir}: this clip has no stems to write (a Unison bundle generates "
                               f"them; not from a one-stream bundle, nor when the audio was given)")
        writers = [lambda p: media.write_mp4(p, self.frames, self.fps, self.audio, self.sample_rate, atomic=False)]
        if wav:
            writers.append(lambda p: media.write_wav(p, self.audio, self.sample_rate, atomic=False))
        if stems_dir is not None:
            writers += [lambda p, x=x: media.write_wav(p, x, self.sample_rate, subtype="FLOAT", atomic=False)
                        for x in (*(self.stems[k] for k in STEM_NAMES), self.audio)]
        return list(zip(clip_files(path, wav, stems_dir), writers, strict=True))


def output_paths(path: str | Path, samples: Sequence[int], stems_dir: str | Path | None = None,
                 ) -> list[tuple[Path, Path | None]]:
    """(mp4, stems folder) of the clips of `samples` (their sample numbers), as `save_all` writes them: `path` and
    `stems_dir` themselves for one clip, else OUT_<sample>.mp4 and STEMS/<sample> (OUT_0.mp4, OUT_1.mp4, ... for
    samples 0, 1, ...), so runs of a seed split by `sample` do not overwrite each other."""
    path, stems = Path(path), None if stems_dir is None else Path(stems_dir)
    if len(samples) == 1:
        return [(path, stems)]
    repeated = [i for i, n in Counter(samples).items() if n > 1]
    if repeated:
        raise HarmonyError(f"cannot write {path}: two clips are sample {repeated[0]}; their files would have one name")
    return [(path.with_name(f"{path.stem}_{i}{path.suffix}"), None if stems is None else stems / str(i))
            for i in samples]



def clip_files(path: Path, wav: bool, stems_dir: Path | None) -> list[Path]:
    """The files one clip is saved as: `path`, with `wav` the .wav beside it, with `stems_dir` its stems."""
    files = [path, path.with_suffix(".wav")] if wav else [path]
    if stems_dir is not None:
        files += [stems_dir / f"{name}.wav" for name in (*STEM_NAMES, "mix")]
    return files


def save_all(results: list[GenerationResult], path: str | Path, wav: bool = True,
             stems_dir: str | Path | None = None) -> list[Path]:
    """Write every clip of a batch (`output_paths`; stems under STEMS/i/ for several clips).

    All or nothing (media.atomic_outputs): each file is written to a temp name beside its target, and only
    once all were written are they renamed into place, so an error or an interrupt leaves no half of a pair
    or batch (a SIGKILL can leave `.<name>.<random>.<ext>` temp files). Missing folders of `path` and
    `stems_dir` are made (and removed again if the write fails), as `mkdir -p`.
    """
    if not results:  # a caller's empty batch wrote nothing and said nothing
        raise HarmonyError(f"no clips to save to {path}")
    if Path(path).suffix.lower() != ".mp4":  # checked here too, so the message names `path`, not a temp name
        raise MediaError(f"cannot write {path}: a clip is saved as an mp4 (a name ending in .mp4, the .wav beside "
                         f"it); its sound alone: harmony_rt.media.write_wav(path, clip.audio, clip.sample_rate)")
    jobs = [job for res, (p, sd) in zip(results, output_paths(path, [r.sample for r in results], stems_dir))
            for job in res.writes(p, wav, sd)]
    folders = list(dict.fromkeys(target.parent for target, _ in jobs))
    made: list[Path] = []  # folders this call makes (-o's, stems'), deepest first: removed again if it fails
    try:
        for d in folders:
            made[:0] = [p for p in (d, *d.parents) if not p.exists()]
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MediaError(f"cannot make folder {d}: {e.strerror or e}") from e
        with media.atomic_outputs(*(target for target, _ in jobs)) as tmps:
            for (_, write), tmp in zip(jobs, tmps):
                write(tmp)
    except BaseException:
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()  # only if still empty
        raise
    return [target for target, _ in jobs]


def _check_number(name: str, value, lo: float, hi: float, integer: bool = False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not lo <= value <= hi:
        kind, bounds = ("an integer", f"[{int(lo)}, {int(hi)}]") if integer else ("a number", f"[{lo:g}, {hi:g}]")
        raise HarmonyError(f"{name} must be {kind} in {bounds}, got {value!r}")
    return int(value) if integer else float(value)


def _check_sample(sample, B: int) -> int:
    """The first sample's number: samples sample .. sample + B - 1 must each be one `generate(sample=i)`
    takes (a batch's last sample could not be remade alone)."""
    first = _check_number("sample", sample, 0, MAX_SAMPLE, integer=True)
    if first + B - 1 > MAX_SAMPLE:
        raise HarmonyError(f"sample + num_samples - 1 must be at most {MAX_SAMPLE} (the last sample's number), got "
                           f"{first} + {B} - 1")
    return first


def _check_text(name: str, value) -> str:
    if not isinstance(value, str):
        raise HarmonyError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable command-line bytes arrive as lone surrogates
        raise HarmonyError(f"{name} is not valid UTF-8 text") from None
    return value


REF_SECONDS = (0.5, 10.0)  # reference voice lengths accepted (the encoder sees the first max_ref_seconds;
# a bundle whose max_ref_seconds is longer than 10 s accepts references up to that length)


STEM_NAMES = ("speech", "sfx")  # Unison's audio streams; saved with "mix" (the sum) as <name>.wav
REF_SILENT_PEAK = 1e-3  # -60 dBFS: a voice reference quieter than this holds no voice
PEAK_SLACK = 1e-3  # float rounding past full scale in an array waveform is accepted
FILE_TYPES = (str, os.PathLike)  # a media input given as a file (Path, os.DirEntry, ...), not an array
MAX_SAMPLE = 2**31 - 1  # sample numbers seed the noise with (seed, sample)


def _audio_input(name: str, x, sample_rate: int, max_seconds: float, notes: list[str] | None = None,
                 start: float = 0.0) -> np.ndarray:
    """A path (read and resampled from `start` s; a long file only as far as `max_seconds` past it) or a float
    waveform array [W] at the bundle's rate (taken from `start` s) -> float32 [W]. A float file past full scale
    is scaled down to it; that and the file's resampling and mixing to mono are noted in `notes`. An array past
    full scale is refused (its caller chose the scale)."""
    is_file = isinstance(x, FILE_TYPES)
    if is_file:
        read: list[str] = []
        wav = media.read_audio(x, sample_rate, max_seconds=max_seconds, notes=read, start=start)
        if notes is not None:
            notes += [f"{name} {x}: {n}" for n in read]
    elif not isinstance(x, np.ndarray) or x.ndim != 1 or x.dtype.kind != "f":
        what = f"array of shape {x.shape} and dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise HarmonyError(f"{name} must be a file path or a mono float waveform [samples], got {what}")
    else:
        wav = x[int(round(start * sample_rate)):]
    if not np.isfinite(wav).all():  # a float wav file can hold them too
        raise HarmonyError(f"{name} {x} contains NaN or infinite samples" if is_file
                           else f"{name} contains NaN or infinite samples")
    peak = float(np.abs(wav).max(initial=0.0))
    if peak > 1.0 + PEAK_SLACK:
        if not is_file:  # e.g. int16 sample values cast to float: the encoders expect [-1, 1]
            raise HarmonyError(f"{name} must hold samples in [-1, 1], got a peak of {peak:.4g} (int16 values? "
                               f"divide by 32768)")
        note = f"{name} {x} peaks at {peak:.3g}, past full scale: scaled down to peak 1"  # clipped, it would distort
        if notes is not None:  # said once: as a note (the CLI prints them), else as a warning
            notes.append(note)
        else:
            log.warning("%s", note)
        wav = wav / np.float32(peak)
    return wav.astype(np.float32, copy=not is_file)  # an array: a copy of its own, the caller's left as it was


def _caption_texts(prompt: str, video_caption: str | None, audio_caption: str | None) -> list[str]:
    """[video caption, audio caption]: each the prompt where not given."""
    return [c if c is not None else prompt for c in (video_caption, audio_caption)]


def _latent_frames(seconds: float, g) -> int:
    """Video latent frames of a clip `seconds` long (at least one)."""
    return max(1, int(round(seconds * g.fps / g.video_t_stride)))


def _rows(x: np.ndarray, B: int) -> np.ndarray:
    """[1, ...] -> [B, ...]: one conditioning row for every sample."""
    return np.repeat(x, B, axis=0)


def _frames_input(name: str, x, shape: tuple) -> np.ndarray:
    """uint8 frames whose trailing dims are `shape` (H, W, 3)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[-3:] != shape or x.ndim not in (3, 4):
        what = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise HarmonyError(f"{name} must be a uint8 RGB array [..., {shape[0]}, {shape[1]}, 3], got {what}")
    if x.size == 0:
        raise HarmonyError(f"{name} has no frames")
    return x


@dataclass
class _Settings:
    """The validated sampling settings of one generate_batch call."""

    mode: str  # guidance mode
    scheduler: str
    steps: int
    seed: int
    B: int  # samples
    first: int  # the first sample's index: sample b is seeded by (seed, first + b)
    scales: GuidanceScales
    step_cache: float | None = None  # threshold, None: every step calls the denoiser
    notes: list[str] = field(default_factory=list)


@dataclass
class _Clip:
    """The clip's length and the given media fitted to it."""

    seconds: float
    F: int  # latent frames
    T: int  # audio latent frames
    FP: int  # pixel frames
    W: int  # audio samples the latent covers
    audio: np.ndarray | None  # A2V: float32 [max(W, seconds * rate)]
    frames: np.ndarray | None  # V2A: uint8 [FP, H, W, 3]
    image: np.ndarray | None  # I2AV: uint8 [H, W, 3]
    notes: list[str]


@dataclass
class _Held:
    """Latents of the given media and the SyncCFG anchors, B rows each."""

    audio: np.ndarray | None  # [B, S, T, C_a] held clean (A2V)
    video: np.ndarray | None  # [B, C_v, F, h, w] held clean (V2A)
    image: np.ndarray | None  # [B, C_v, F, h, w] of the image repeated (I2AV: its first frame is used)
    null_v: np.ndarray  # [B, C_v, F, h, w] still video
    null_a: np.ndarray  # [B, S, T, C_a] silence


class Pipeline:
    """Text (+ optional audio / video / image / reference voice) -> synchronized video and audio."""

    def __init__(self, bundle: Bundle, backend: str | Backend = "auto", split: str = "auto",
                 threads: int | None = None, precision: str | None = None):
        """backend: auto | ort | tensorrt, or a backend made for this bundle (e.g. `OrtBackend(bundle,
        spinning=False)`; then `threads` and `precision` must be left unset, they are the backend's).
        precision: the graph variant to run (fp16, int8, int8-dynamic, fp8 on ORT; fp16 / fp8 engines on
        TensorRT); components without it run their main (fp32) graph. None: the main graphs."""
        check_split(split)  # here, not at the first generate
        self.bundle = bundle
        self.geometry = g = bundle.geometry
        if threads is not None:
            threads = _check_number("threads", threads, 1, MAX_THREADS, integer=True)
        if precision is not None and not (isinstance(precision, str) and precision.strip()):
            raise HarmonyError(f"precision must be a variant's name such as int8 (None: the main graphs), got "
                               f"{precision!r:.40}")
        if isinstance(backend, str):
            self.backend = make_backend(backend, bundle, threads=threads, precision=precision)
        else:
            if threads is not None or precision is not None:
                raise HarmonyError("threads and precision are set on the backend itself when one is passed")
            theirs = getattr(backend, "bundle", bundle)
            if not callable(getattr(backend, "run", None)) or getattr(theirs, "manifest", None) != bundle.manifest:
                raise HarmonyError("backend must be auto, ort, tensorrt or a backend made for this bundle")
            self.backend, precision = backend, getattr(backend, "precision", None)
        self.precision = precision
        model = bundle.manifest.get("model_config") or {}  # export writes it; vocabularies checked where known
        self.text_tok = TextTokenizer(bundle.file_path("tokenizer_text"), g.max_text_tokens, "caption",
                                      vocab=model.get("text_vocab"))
        self.speech_tok = TextTokenizer(bundle.file_path("tokenizer_speech"), g.max_speech_chars, "transcript",
                                        "characters", vocab=model.get("speech_vocab"))
        self.split = split
        self._guided: dict[tuple, GuidedDenoiser] = {}  # (mode, held) -> its denoiser, split decisions inside
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, path: str | Path | None = None, verify: bool = True, **kw) -> "Pipeline":
        """Load a bundle folder (default: the one shipped with the package). `verify` checks sha256s."""
        if not isinstance(verify, bool):  # "no" would verify
            raise HarmonyError(f"verify must be True or False, got {verify!r:.40}")
        return cls(Bundle.load(path if path is not None else default_bundle_path(), verify=verify), **kw)

    # ------------------------------------------------------------------ encoders

    def _run(self, component: str, **feeds) -> dict[str, np.ndarray]:
        return self.backend.run(component, feeds)

    def text_notes(self, prompt: str, speech: str = "", video_caption: str | None = None,
                   audio_caption: str | None = None) -> list[str]:
        """The notes a generation's texts give (words the tokenizers lack), found without running a model: for
        a caller that shows them before a long run (the generation's own notes hold them too)."""
        notes: list[str] = []
        self.text_tok.encode([_check_text("prompt", prompt), *_caption_texts(prompt, video_caption, audio_caption)],
                             notes)
        self.speech_tok.encode([_check_text("speech", speech)], notes)
        return notes

    def _captions(self, texts: list[str], notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.text_tok.encode(texts, notes)
        return self._run("text_encoder", text_ids=ids, text_mask=mask)["text_emb"], mask

    def _speech(self, texts: list[str], notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.speech_tok.encode(texts, notes)
        return self._run("speech_encoder", speech_ids=ids, speech_mask=mask)["speech_emb"], mask

    def encode_audio(self, wav: np.ndarray) -> np.ndarray:
        """waveform float32 [W] -> latent [1, W // hop, C_a]."""
        hop = self.geometry.audio_hop
        w = wav[: (len(wav) // hop) * hop][None].astype(np.float32)
        return self._run("audio_encoder", waveform=w)["audio_latent"]

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [FP, H, W, 3] -> video latent [1, C_v, F, H_lat, W_lat]."""
        x = frames.astype(np.float32).transpose(3, 0, 1, 2)[None] / 127.5 - 1.0
        return self._run("video_encoder", frames=x)["video_latent"]

    def _split_context(self) -> dict:
        """What a guidance split decision depends on besides mode and shapes (harmony_rt.splitstore)."""
        import onnxruntime

        from . import __version__

        comp = self.bundle.manifest["components"]["denoiser"]
        return {
            "denoiser": comp.get("sha256"), "precision": self.precision, "harmony_rt": __version__,
            "backend": getattr(self.backend, "name", type(self.backend).__name__),
            "providers": getattr(self.backend, "providers", None), "threads": getattr(self.backend, "threads", None),
            "spinning": getattr(self.backend, "spinning", None), "onnxruntime": onnxruntime.__version__,
        }

    def _guided_for(self, mode: str, scales: GuidanceScales, held: str | None = None) -> GuidedDenoiser:
        """The guided denoiser of `mode` with `scales`: a shallow copy of the one kept per (mode, held), so
        every scale shares its split measurements, decisions and lock (kept per scale, a server taking the
        scales from its users grew one denoiser, and one split measurement, per value asked for)."""
        key = (mode, held)
        with self._lock:
            if key not in self._guided:
                backend = self.backend  # not `self`: a pipeline holding itself is freed only by the cycle collector
                call = lambda feeds: backend.run("denoiser", feeds)  # noqa: E731
                store = SplitStore.default(self._split_context()) if self.split == "auto" else None
                self._guided[key] = GuidedDenoiser(call, mode, split=self.split, store=store, held=held)
            guided = copy.copy(self._guided[key])
        guided.scales = scales
        return guided

    # ------------------------------------------------------------------ generate

    def generate(self, prompt: str, **kw) -> GenerationResult:
        """One clip; see `generate_batch` for the arguments (and for several samples in one run)."""
        n = kw.pop("num_samples", 1)
        if isinstance(n, bool) or n != 1:  # 1 taken: callers forward one set of arguments to either
            raise HarmonyError("generate makes one clip: use generate_batch(prompt, num_samples=N) for several")
        unknown = [k for k in kw if k not in inspect.signature(self.generate_batch).parameters]
        if unknown:  # Python would name generate_batch, which the caller never called
            raise TypeError(f"generate() got an unexpected keyword argument {unknown[0]!r}")
        return self.generate_batch(prompt, num_samples=1, **kw)[0]

    def generate_batch(
        self,
        prompt: str,
        *,
        speech: str = "",
        video_caption: str | None = None,
        audio_caption: str | None = None,
        seconds: float | None = None,
        steps: int | None = None,
        guidance: str | None = None,
        s_v: float | None = None,
        s_a: float | None = None,
        cfg_scale: float | None = None,
        scheduler: str | None = None,
        step_cache: float | None = None,
        seed: int = 0,
        num_samples: int = 1,
        sample: int = 0,
        audio: str | Path | np.ndarray | None = None,
        video: str | Path | np.ndarray | None = None,
        image: str | Path | np.ndarray | None = None,
        ref_audio: str | Path | np.ndarray | None = None,
        fit: str = "stretch",
        start: float = 0.0,
        progress: Progress | None = None,
    ) -> list[GenerationResult]:
        """Generate `num_samples` clips in one batched run.

        prompt fills both captions unless `video_caption` / `audio_caption` are given; `speech` is the
        transcript (any script). Tasks: `audio` (A2V: audio held clean, video generated; on a Unison bundle
        held as the speech stream when `speech` is given, else as the sfx one), `video` (V2A),
        `image` (I2AV: first latent frame held), `ref_audio` (voice clone, 0.5-10 s, or up to the
        bundle's max_ref_seconds where longer; its first max_ref_seconds are used). `fit`: how a `video` /
        `image` file of another aspect than the model's is resized: "stretch" (aspect not kept) or "crop"
        (aspect kept, center-cropped); arrays must already have the model's size. `start`: seconds into the
        `audio` / `video` (a file, or an array at the bundle's rate / fps) where the driving part begins (a clip
        from the middle of a recording; the video from its frame nearest to it). Sample i uses seed
        (seed, sample + i): outputs do not depend on num_samples, and `generate(..., sample=i)` remakes sample
        i of a batch alone (its result's `sample`). `progress(done, total)` is called with done = 0 once the
        inputs are encoded, then after every ODE step; returning False cancels.
        `step_cache` (0-1, None: off): reuse the velocities on steps where they change slowly
        (harmony_rt.stepcache; Euler only), a note says how many steps called the denoiser.
        """
        prompt, speech = _check_text("prompt", prompt), _check_text("speech", speech)
        for name, cap in (("video_caption", video_caption), ("audio_caption", audio_caption)):
            if cap is not None:
                _check_text(name, cap)
        if progress is not None and not callable(progress):
            raise HarmonyError("progress must be a callable (done, total) -> bool | None")
        if not isinstance(self.tiling, Tiling):
            raise HarmonyError(f"tiling must be a harmony_rt.tiling.Tiling, got {type(self.tiling).__name__}")
        run = self._settings(guidance, scheduler, steps, seed, num_samples, s_v, s_a, cfg_scale, step_cache, sample)
        clip = self._clip(seconds, audio, video, image, fit, start)
        cond, uncond = self._conditions(prompt, speech, video_caption, audio_caption, ref_audio, run.B, clip.notes,
                                        audio_given=clip.audio is not None)
        held = self._held(clip, run.B, speech)
        z_v, z_a = self._sample(run, clip, held, cond, uncond, progress)
        return self._results(run, clip, z_v, z_a)

    # ------------------------------------------------------------------ generate: its stages

    def _settings(self, guidance, scheduler, steps, seed, num_samples, s_v, s_a, cfg_scale, step_cache,
                  sample) -> _Settings:
        """The sampling settings, each the argument or the bundle's default, validated."""
        sp = self.bundle.sampling
        mode = guidance if guidance is not None else sp.get("guidance", "sync")
        if mode not in MODES:
            raise HarmonyError(f"unknown guidance mode {mode!r}; choose one of {', '.join(MODES)}")
        sched = scheduler if scheduler is not None else sp.get("scheduler", "euler")
        if sched not in SCHEDULERS:
            raise HarmonyError(f"unknown scheduler {sched!r}; choose one of {', '.join(SCHEDULERS)}")
        if step_cache is not None:
            step_cache = _check_number("step_cache", step_cache, 0, 1)
            if sched != "euler":
                raise HarmonyError(f"step_cache works with the euler scheduler only (its multistep history would "
                                   f"mix reused velocities), got {sched!r}")
        # a scale acts where its branch runs: s_v on the mute anchor, s_a on the static one, cfg_scale on uncond
        scales = (("s_v", s_v, "mute"), ("s_a", s_a, "static"), ("cfg_scale", cfg_scale, "uncond"))
        unused = [n for n, v, branch in scales if v is not None and branch not in branches(mode)]
        return _Settings(
            notes=[f"{' and '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect with guidance {mode!r}"]
            if unused else [],
            mode=mode,
            scheduler=sched,
            steps=_check_number("steps", steps if steps is not None else sp["steps"], 1, 1000, integer=True),
            seed=_check_number("seed", seed, 0, 2**63 - 1, integer=True),
            B=(B := _check_number("num_samples", num_samples, 1, 64, integer=True)),
            first=_check_sample(sample, B),
            scales=GuidanceScales(
                s_v=_check_number("s_v", s_v if s_v is not None else sp["s_v"], 0, 100),
                s_a=_check_number("s_a", s_a if s_a is not None else sp["s_a"], 0, 100),
                cfg=_check_number("cfg_scale", cfg_scale if cfg_scale is not None else sp["cfg_scale"], 0, 100),
            ),
            step_cache=step_cache,
        )

    def _clip(self, seconds, audio, video, image, fit="stretch", start=0.0) -> _Clip:
        """The clip's length (argument, given media, or the bundle default) and the given media fitted to it
        (files' frames resized as `fit` says: media.FITS)."""
        g, sp = self.geometry, self.bundle.sampling
        if not isinstance(fit, str) or fit not in media.FITS:
            raise HarmonyError(f"unknown fit {fit!r:.40}; choose one of {', '.join(media.FITS)}")
        if sum(x is not None for x in (audio, video)) > 1:
            raise HarmonyError("give at most one of audio (A2V) and video (V2A)")
        if video is not None and image is not None:  # the given video holds every frame, the first included
            raise HarmonyError("give at most one of video (V2A) and image (I2AV)")
        notes: list[str] = []
        if fit != "stretch" and not any(isinstance(x, FILE_TYPES) for x in (video, image)):
            notes.append(f"fit {fit!r} has no effect without a video or image file")
        start = _check_number("start", start, 0, 1e7)
        if start and audio is None and video is None:
            notes.append(f"start {start:g} s has no effect without a driving audio or video")

        def length(dur: float) -> str:  # of the driving media (from `start`), for the message when it is too short
            return f"has {dur:.3g} s from start {start:g} s" if start else f"is {dur:.3g} s long"

        min_s, max_s = g.video_t_stride / g.fps, g.max_latent_frames * g.video_t_stride / g.fps
        default_s = sp.get("seconds", max_s)
        asked = seconds is not None
        if seconds is not None:  # checked before any media is read (it bounds how much is)
            seconds = _check_number("seconds", seconds, min_s, max_s)
        given_audio = given_frames = img = None
        if audio is not None:
            given_audio = _audio_input("audio", audio, g.sample_rate, max_s, notes, start)
            if given_audio.size == 0:
                raise HarmonyError(f"start {start:g} s is past the end of the driving audio" if start
                                   else "the driving audio is empty")
            dur = len(given_audio) / g.sample_rate
            if seconds is None and dur < min_s:
                raise HarmonyError(f"the driving audio {length(dur)}; the model needs at least {min_s:g} s")
            seconds = seconds if seconds is not None else min(max_s, dur)
        if video is not None:
            if not isinstance(video, FILE_TYPES):
                given_frames = _frames_input("video", video, (g.height, g.width, 3))
                if given_frames.ndim != 4:
                    raise HarmonyError(f"video must be frames [T, H, W, 3], got shape {given_frames.shape}")
                given_frames = given_frames[round(start * g.fps):]  # frames at the model's fps
            else:
                want = g.max_latent_frames if seconds is None else _latent_frames(seconds, g)
                given_frames, vnotes = media.read_video(video, g.fps, g.height, g.width, want * g.video_t_stride,
                                                         start_frame=round(start * g.fps), fit=fit)
                notes += vnotes
            if start and not len(given_frames):
                raise HarmonyError(f"start {start:g} s is past the end of the driving video")
            dur = given_frames.shape[0] / g.fps  # as a file
            if seconds is None and dur < min_s:
                raise HarmonyError(f"the driving video {length(dur)} ({given_frames.shape[0]} frame(s) at the model's "
                                   f"{g.fps:g} fps); the model needs at least {min_s:g} s")
            seconds = seconds if seconds is not None else min(max_s, dur)
        if seconds is None:
            seconds = default_s
        seconds = _check_number("seconds", seconds, min_s, max_s)  # as derived from the media or the default
        F = _latent_frames(seconds, g)
        T = g.audio_frames_for(F)
        FP, W = F * g.video_t_stride, T * g.audio_hop
        on_grid = FP / g.fps  # what the frames hold: the picture, the sound and the wav all take this length
        if given_audio is None and abs(on_grid - seconds) * g.sample_rate >= 1:
            notes.append(f"clip length {seconds:g} s -> {on_grid:g} s ({FP} frames at {g.fps:g} fps)")
        seconds = on_grid
        default_grid = _latent_frames(min(default_s, max_s), g) * g.video_t_stride / g.fps
        if not asked and seconds < default_grid:  # shorter than a clip asked of nothing, for its driving media's sake
            driving = ("audio" if given_audio is not None else "video") + (f" from {start:g} s" if start else "")
            notes.append(f"the clip is {seconds:.3g} s, as the driving {driving} is short (the bundle's clips: "
                         f"{default_grid:g} s)")
        if given_audio is not None:  # the clip's length in samples (at least the latent's)
            n_out, n_in = max(W, int(round(seconds * g.sample_rate))), len(given_audio)
            if n_in > n_out + g.sample_rate // 100:  # 10 ms either way: resampling's rounding is no news
                notes.append(f"used {'the first ' if not start else ''}{seconds:g} s of the audio"
                             f"{f' from {start:g} s' if start else ''} ({FP} frames at {g.fps:g} fps)")
            elif n_in < n_out - g.sample_rate // 100:
                notes.append(f"padded the audio with {(n_out - n_in) / g.sample_rate:.3g} s of silence to the "
                             f"clip's {seconds:g} s")
            given_audio = np.pad(given_audio, (0, max(0, n_out - n_in)))[:n_out].astype(np.float32)
        if given_frames is not None:
            if given_frames.shape[0] < FP:
                pad = np.repeat(given_frames[-1:], FP - given_frames.shape[0], axis=0)
                notes.append(f"padded {given_frames.shape[0]} -> {FP} frames by repeating the last one")
                given_frames = np.concatenate([given_frames, pad])
            elif given_frames.shape[0] > FP:
                notes.append(f"trimmed {given_frames.shape[0]} -> {FP} frames"
                             + (f" from frame {round(start * g.fps)}" if start else ""))
                given_frames = given_frames[:FP]
        if image is not None:
            if isinstance(image, FILE_TYPES):
                img = media.read_image(image, g.height, g.width, notes, fit=fit)
            else:
                img = _frames_input("image", image, (g.height, g.width, 3))
                if img.ndim != 3:
                    raise HarmonyError(f"image must be [H, W, 3], got shape {img.shape}")
        return _Clip(seconds, F, T, FP, W, given_audio, given_frames, img, notes)

    def _conditions(self, prompt, speech, video_caption, audio_caption, ref_audio, B,
                    notes: list[str] | None = None, audio_given: bool = False) -> tuple[dict, dict]:
        """Caption / transcript / reference encodings, once per generation: (cond, uncond), B rows each; words
        the tokenizers lack, what was done to the reference file and a reference with nothing to voice go to
        `notes`; a silent reference is refused."""
        g, sp = self.geometry, self.bundle.sampling
        vcap, acap = _caption_texts(prompt, video_caption, audio_caption)
        caps, cap_mask = self._captions([vcap, acap, ""], notes)  # [3, L, D]: video caption, audio caption, empty
        sp_emb, sp_mask = self._speech([speech, ""], notes)  # [2, L, D]: transcript, empty
        ref, ref_mask = np.zeros((1, 1, g.C_a), np.float32), np.zeros((1, 1), np.float32)
        if ref_audio is not None:
            max_ref = float(sp.get("max_ref_seconds", 3.0))  # the longest reference the model was trained on
            lo, hi = REF_SECONDS[0], max(REF_SECONDS[1], max_ref)  # a model trained on longer ones takes them
            wav = _audio_input("ref_audio", ref_audio, g.sample_rate, hi, notes)  # a file: read to hi + 1 s at most
            dur = len(wav) / g.sample_rate
            if not lo <= dur <= hi:
                cut = isinstance(ref_audio, FILE_TYPES) and dur >= hi + media.HEAD_MARGIN_S
                got = f"more than {hi:g} s" if cut else f"{dur:.2f} s"  # a file is read to hi + 1 s at most
                raise HarmonyError(f"reference audio must be {lo:g}-{hi:g} s long (this model uses its first "
                                   f"{max_ref:g} s), got {got}")
            if notes is not None and dur > max_ref + 1.0 / g.sample_rate:  # as A2V says what it used of the audio
                notes.append(f"ref_audio: used the first {max_ref:g} s of the reference "
                             f"({'more than ' + format(hi, 'g') if dur >= hi else format(dur, '.3g')} s given)")
            wav = wav[: int(max_ref * g.sample_rate)]
            peak = float(np.abs(wav).max(initial=0.0))
            if peak < REF_SILENT_PEAK:  # a muted take or the wrong channel: it would clone silence
                level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "all zeros"
                raise HarmonyError(f"reference audio is silent in the part this model uses (its first {max_ref:g} "
                                   f"s peak at {level}): give a recording of the voice to clone")
            if notes is not None and audio_given:
                notes.append("ref_audio has no effect on the sound with audio given (A2V): the given audio is kept")
            elif notes is not None and not speech.strip():
                notes.append("ref_audio sets the voice of the transcript, and no speech is given: there are no "
                             "words for it to voice")
            ref = self.encode_audio(wav)  # [1, T_ref, C_a]
            ref_mask = np.ones(ref.shape[:2], np.float32)
        rows = functools.partial(_rows, B=B)
        cond = dict(
            text_emb=rows(caps[0:1]), text_mask=rows(cap_mask[0:1]),
            audio_text_emb=rows(caps[1:2]), audio_text_mask=rows(cap_mask[1:2]),
            speech_emb=rows(sp_emb[0:1]), speech_mask=rows(sp_mask[0:1]),
            ref_latent=rows(ref), ref_mask=rows(ref_mask),
        )
        uncond = dict(
            cond, text_emb=rows(caps[2:3]), text_mask=rows(cap_mask[2:3]), audio_text_emb=rows(caps[2:3]),
            audio_text_mask=rows(cap_mask[2:3]), speech_emb=rows(sp_emb[1:2]), speech_mask=rows(sp_mask[1:2]),
        )
        return cond, uncond

    def _held(self, clip: _Clip, B: int, speech: str = "") -> _Held:
        """Latents of the given media (held clean or, for the image, on its noising path) and the SyncCFG
        anchors: silence, and a still video of the first frame (mid-grey when none is given).

        A2V on a Unison bundle: the mix is the sum of the streams' waveforms, each stream the latent of its
        stem. The given mix is held whole in one stream -- speech when there is a transcript, else sfx -- and
        the other holds silence, as in a training clip without that source. (The mix's latent divided by S is
        no stem's latent: the encoder is not linear and silence's latent is not zero.)"""
        g, S = self.geometry, self.geometry.S
        rows = functools.partial(_rows, B=B)
        silence = self.encode_audio(np.zeros(clip.W, np.float32))[:, None]  # [1, 1, T, C_a]
        if silence.shape[2] != clip.T:  # the graph's length vs the manifest's: found before the ODE loop runs
            raise BundleError(f"{self.bundle.path}: audio_encoder gives {silence.shape[2]} latent frames for "
                              f"{clip.W} samples, geometry.audio_hop {g.audio_hop} says {clip.T}")
        null_a = rows(np.repeat(silence, S, axis=1))  # [B, S, T, C_a]
        still = np.full((g.height, g.width, 3), 127, np.uint8)
        audio = video = image = None
        if clip.audio is not None:
            mix = self.encode_audio(clip.audio[: clip.W])[:, None]  # [1, 1, T, C_a]
            k = 0 if speech.strip() or S == 1 else 1  # the stream that holds it: STEM_NAMES[k]
            audio = rows(np.concatenate([mix if s == k else silence for s in range(S)], axis=1))
            if S == 2:
                clip.notes.append(f"the given audio is held as the {STEM_NAMES[k]} stream, silence as the "
                                  f"{STEM_NAMES[1 - k]} one ({'a' if k == 0 else 'no'} transcript given)")
        if clip.frames is not None:
            video = rows(self.encode_frames(clip.frames))  # [B, C_v, F, H_lat, W_lat]
            still = clip.frames[0]
        if clip.image is not None:
            image = rows(self.encode_frames(np.repeat(clip.image[None], clip.FP, axis=0)))
            still = clip.image
        null_v = rows(self.encode_frames(np.repeat(still[None], clip.FP, axis=0)))
        return _Held(audio, video, image, null_v, null_a)

    def _sample(self, run: _Settings, clip: _Clip, held: _Held,
                cond, uncond, progress) -> tuple[np.ndarray, np.ndarray]:
        """The ODE loop from noise (sample i seeded by (seed, run.first + i)) to latents: z_v [B, C_v, F, h, w],
        z_a [B, S, T, C_a]."""
        B, seed, ids = run.B, run.seed, range(run.first, run.first + run.B)
        noise_v = np.stack([np.random.default_rng([seed, i]).standard_normal(held.null_v.shape[1:], np.float32)
                            for i in ids])
        noise_a = np.stack([np.random.default_rng([seed, i, 1]).standard_normal(held.null_a.shape[1:], np.float32)
                            for i in ids])
        z_v = held.video if held.video is not None else noise_v.copy()  # I2AV writes into z_v; noise_v stays
        z_a = held.audio if held.audio is not None else noise_a
        shift = self.bundle.sampling["shift"]
        sched_v, sched_a = make_scheduler(run.scheduler, shift), make_scheduler(run.scheduler, shift)
        sched_v.set_timesteps(run.steps)
        sched_a.set_timesteps(run.steps)
        given = "audio" if held.audio is not None else "video" if held.video is not None else None  # A2V / V2A
        guided = self._guided_for(run.mode, run.scales, given)
        cache = StepCache(run.steps, run.step_cache) if run.step_cache else None
        if progress is not None and _cancels(progress(0, run.steps)):  # inputs ready: an app may stop here
            raise Cancelled(f"cancelled before the first of {run.steps} steps")
        for i in range(run.steps):
            t = float(sched_v.sigmas[i])
            t_v = np.full(B, 0.0 if held.video is not None else t, np.float32)
            t_a = np.full(B, 0.0 if held.audio is not None else t, np.float32)
            if held.image is not None:  # I2AV: the first latent frame sits on the clean image's noising path
                z_v[:, :, :1] = (1 - t) * held.image[:, :, :1] + t * noise_v[:, :, :1]
            if cache is not None and cache.skip(i):
                v_v, v_a = cache.last
            else:
                v_v, v_a = guided(z_v, z_a, t_v, t_a, cond, uncond, held.null_v, held.null_a)
                if cache is not None:
                    cache.observe(i, v_v, v_a)
            if held.video is None:
                z_v = sched_v.step(v_v, sched_v.timesteps[i], z_v)
            if held.audio is None:
                z_a = sched_a.step(v_a, sched_a.timesteps[i], z_a)
            if progress is not None and _cancels(progress(i + 1, run.steps)):
                raise Cancelled(f"cancelled after {i + 1} of {run.steps} steps")
        if held.image is not None:
            z_v[:, :, :1] = held.image[:, :, :1]
        if cache is not None:
            clip.notes.append(f"step cache {run.step_cache:g}: {cache.computed} of {run.steps} steps "
                              "called the denoiser")
        return z_v, z_a

    def _results(self, run: _Settings, clip: _Clip, z_v: np.ndarray, z_a: np.ndarray) -> list[GenerationResult]:
        """Decode the latents (given media are returned as given) into one GenerationResult per sample."""
        g, S, B, T = self.geometry, self.geometry.S, run.B, clip.T
        frames = self._decode_video(z_v) if clip.frames is None else np.repeat(clip.frames[None], B, axis=0)
        wav = self._decode_audio(z_a.reshape(B * S, T, -1)).reshape(B, S, -1)  # [B, S, W]
        n_samples = int(round(clip.seconds * g.sample_rate))
        results = []
        for b in range(B):
            stems = {}
            if clip.audio is not None:
                mix = clip.audio.copy()
            else:
                mix = np.clip(wav[b].sum(0), -1.0, 1.0)
                if S == 2:
                    stems = dict(zip(STEM_NAMES, (wav[b, 0], wav[b, 1])))
            mix = np.pad(mix, (0, max(0, n_samples - len(mix))))[:n_samples]
            stems = {k: np.pad(v, (0, max(0, n_samples - len(v))))[:n_samples] for k, v in stems.items()}
            results.append(GenerationResult(np.ascontiguousarray(frames[b]), mix.astype(np.float32), g.fps,
                                            g.sample_rate, run.seed, stems, run.notes + clip.notes,
                                            sample=run.first + b))
        return results

    # Decoder tiles (harmony_rt.tiling): clips longer than a tile decode in overlapping temporal tiles, so
    # decoding memory stays that of one tile. Set per pipeline: `pipe.tiling = Tiling(TileSize(8, 2), ...)`.
    tiling: Tiling = Tiling()

    def _decode_video(self, z_v: np.ndarray) -> np.ndarray:
        """[B, C_v, F, H, W] -> uint8 [B, FP, H, W, 3], in temporal tiles."""

        def to_uint8(x):  # [B, 3, fp, H, W] in [-1, 1] -> [B, fp, H, W, 3]
            _check_finite(x, "video_decoder")
            return np.clip(np.rint((x.transpose(0, 2, 3, 4, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)

        return decode_tiled(
            lambda z: self._run("video_decoder", video_latent=z)["frames"], z_v.astype(np.float32), self.tiling.video,
            axis=2, out_axis=2, stride=self.geometry.video_t_stride, finish=to_uint8, finish_axis=1,
            what="video_decoder",
        )

    def _decode_audio(self, z_a: np.ndarray) -> np.ndarray:
        """[N, T, C_a] -> waveform float32 [N, T * audio_hop], in temporal tiles."""
        return decode_tiled(
            lambda z: self._run("audio_decoder", audio_latent=z)["waveform"], z_a.astype(np.float32), self.tiling.audio,
            axis=1, out_axis=1, stride=self.geometry.audio_hop, finish=lambda x: _check_finite(x, "audio_decoder"),
            what="audio_decoder",
        )


def _cancels(answer) -> bool:
    """Whether a progress callback's answer cancels: False, numpy's False included (None / True go on)."""
    return isinstance(answer, (bool, np.bool_)) and not answer


def _check_finite(x: np.ndarray, what: str) -> np.ndarray:
    """Refuse decoder output with NaN / Inf (from non-finite inputs, e.g. NaN samples in a driving audio array)."""
    if not np.isfinite(x).all():
        raise HarmonyError(f"{what} produced NaN or Inf: the inputs (or the bundle's graphs) hold non-finite values")
    return x
