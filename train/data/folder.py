"""Training clips from a folder of your own media: `python -m train.train --data DIR`.

DIR/clips.jsonl holds one JSON object per line, one training clip each:

    {"video": "talk01.mp4", "caption": "a woman speaks in a quiet room", "transcript": "hello there",
     "speaker": "anna", "start": 3.5}

- video (required): a video file, relative to DIR. Its first audio track is the clip's sound unless `audio`
  names another file.
- caption (required): what the clip shows; also what it sounds like unless `audio_caption` is given.
- transcript: the words spoken ("" or absent: no speech). speaker: clips that share it give each other voice
  references in the timbre stage. start: seconds into the files (default 0).
- silent: true for a clip without sound (a video with no audio track): it trains as silence; such a clip has
  no audio, stems or transcript.
- audio: the sound from another file. speech, sfx: the stems (both), for a Unison model: its two streams. A
  Unison clip without stems is taken as all sound effects when it has no transcript; with a transcript it
  needs them (speech and background cannot be told apart in a mix). With stems and no `audio`, the clip's
  sound (a Harmony model's one stream) is speech + sfx, not the video's own track; a Unison model trains on
  the stems alone (its reference voice is their sum), so `audio` beside stems is read but not used.

Each line is one clip of the run's --seconds from `start`. Frames are resampled to the model's fps and
stretched to its size as the runtime reads `--video`, or with the run's `--fit crop` resized with their aspect
kept and center-cropped (harmony_rt.media read_video's `fit`); sound is
mixed to mono and resampled to its rate (harmony_rt.media). Every clip is decoded into memory once; a file
several clips take their sound or frames from, where media cannot seek (AAC / mp3 / Opus sound; avi, MPEG-TS,
Matroska or variable-rate video at its own rate), is decoded once for them (in runs of 300 s of sound, 512 MB
of frames), each clip cut from that read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .synth import Clip

log = logging.getLogger(__name__)

INDEX = "clips.jsonl"
FILE_FIELDS = ("video", "audio", "speech", "sfx")
TEXT_FIELDS = ("caption", "audio_caption", "transcript", "speaker")
FIELDS = (*FILE_FIELDS, *TEXT_FIELDS, "start", "silent")
MAX_START = 1e7  # seconds (115 days): start * sample_rate stays a finite float (1e308 would not)


class DataError(ValueError):
    """A data folder no run can use; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class Entry:
    """One line of clips.jsonl, checked; file fields are absolute paths (None where not given)."""

    where: str  # "DIR/clips.jsonl:3", for messages
    video: Path
    caption: str
    audio_caption: str
    transcript: str
    speaker: str | None
    start: float
    audio: Path | None
    speech: Path | None
    sfx: Path | None
    silent: bool = False  # no sound: trains as silence


def _entry(folder: Path, where: str, d) -> Entry:
    if not isinstance(d, dict):
        raise DataError(f"{where}: a line must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
    for k in ("video", "caption"):
        v = d.get(k)
        if not v or (isinstance(v, str) and not v.strip()):  # a caption of spaces would train as none
            raise DataError(f"{where}: needs {k!r}")
    for k in (*FILE_FIELDS, *TEXT_FIELDS):
        if k in d and d[k] is not None and not isinstance(d[k], str):
            raise DataError(f"{where}: {k} must be a string, got {d[k]!r:.40}")
    if bool(d.get("speech")) != bool(d.get("sfx")):
        raise DataError(f"{where}: give both stems (speech and sfx) or neither")
    silent = d.get("silent", False)
    if not isinstance(silent, bool):
        raise DataError(f"{where}: silent must be true or false, got {silent!r:.40}")
    if silent and (clash := [k for k in ("audio", "speech", "sfx", "transcript") if d.get(k)]):
        raise DataError(f"{where}: a silent clip has no {clash[0]}")
    start = d.get("start", 0)
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start <= MAX_START:  # NaN fails too
        raise DataError(f"{where}: start must be a number of seconds >= 0 (at most {MAX_START:g}), got {start!r:.40}")
    files = {}
    for k in FILE_FIELDS:
        if d.get(k):
            p = folder / d[k]
            if not p.is_file():
                where_to = "" if Path(d[k]).is_absolute() else f" in {folder}"
                raise DataError(f"{where}: {k} {d[k]}: " + ("a folder, not a file" if p.is_dir() else
                                                            f"no such file{where_to}"))
            files[k] = p
        else:
            files[k] = None
    return Entry(where, video=files["video"], caption=d["caption"],
                 audio_caption=d.get("audio_caption") or d["caption"], transcript=d.get("transcript") or "",
                 speaker=d.get("speaker") or None, start=float(start),
                 audio=files["audio"], speech=files["speech"], sfx=files["sfx"], silent=silent)


def read_index(folder: str | Path, streams: int = 1) -> list[Entry]:
    """The checked entries of folder/clips.jsonl (DataError naming the first problem). Blank lines are
    skipped. `streams`: 2 for a Unison model (stems needed where there is speech)."""
    folder = Path(folder)
    index = folder / INDEX
    if folder.is_file():
        raise DataError(f"{folder}: a file; give the folder that holds {INDEX}")
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    if not index.is_file():
        raise DataError(f"{folder}: no {INDEX} in it (one JSON line per clip: video, caption, ...)")
    try:
        # a BOM (Windows editors) is skipped; lines end at \n only (JSON Lines; a CR before it is JSON whitespace):
        # str.splitlines also splits at U+2028, U+0085, \f ..., which json.dumps(ensure_ascii=False) leaves in strings
        lines = index.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError as e:
        utf16 = index.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise DataError(f"{index}: " + ("saved as UTF-16; save it as UTF-8" if utf16 else
                                         f"not UTF-8 text ({e}); save it as UTF-8")) from None
    except OSError as e:
        raise DataError(f"{index}: cannot read it ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{index}:{n}"
        try:
            d = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not JSON ({e}); each clip is one JSON object on one line") from None
        e = _entry(folder, where, d)
        if streams == 2 and e.transcript and e.speech is None:
            raise DataError(f"{where}: a Unison model needs the speech and sfx stems of a clip with a transcript")
        out.append(e)
    if not out:
        raise DataError(f"{index}: no clips in it")
    return out


def _length(x: np.ndarray, n: int, what: str, e: Entry, rate: float, seconds: float, ends) -> np.ndarray:
    """x[:n], `x` read (at `rate` a second) from the clip's start; DataError where it is shorter. `ends()`: where
    the stream ends (seconds on the clip's clock; None: unknown), for the message when nothing is left."""
    if len(x) < n:
        if not len(x):
            end = ends()
            raise DataError(f"{e.where}: start {e.start:g} s is past the end of {what}"
                            + (f" ({max(0.0, end):.2f} s long)" if end is not None else ""))
        raise DataError(f"{e.where}: {what} has {len(x) / rate:.2f} s from start {e.start:g} s; a clip needs "
                        f"{seconds:g} s (--seconds)")
    return x[:n]


def _duration(path: Path, kind: str) -> float | None:
    """Seconds of the first `kind` ("video" / "audio") stream of `path`, as its container says (None: unknown)."""
    from harmony_rt.media import probe

    info = probe(path)[kind]
    return None if info is None else info["duration"]


def _no_sound(path: Path) -> bool:
    """`path` opens and has no audio stream."""
    from harmony_rt.errors import MediaError
    from harmony_rt.media import probe

    try:
        return probe(path)["audio"] is None
    except MediaError:
        return False


def _audio_lead(path: Path) -> float:
    """Seconds the first decoded audio sample of `path` comes after its first decoded video frame (negative:
    before; harmony_rt.media.first_times); 0 where the file lacks either stream or timestamps. read_video counts
    time from the first video frame and read_audio from the first audio sample, so a file whose streams start
    apart (a recorder that starts the sound later, a cut made without re-encoding) needs it."""
    from harmony_rt.media import first_times

    v, a = first_times(path)
    return 0.0 if v is None or a is None else float(a - v)


@dataclass
class Shared:
    """What load_clips read for one entry together with other entries' clips from the same files."""

    # file -> (the clip's start in its sound, s; its samples [<= n] from max(0, start))
    sound: dict[Path, tuple[float, np.ndarray]] = field(default_factory=dict)
    frames: np.ndarray | None = None  # [<= n_frames, H, W, 3] from the clip's first frame


def _first_frame(e: Entry, fps: float) -> int:
    """The index of the clip's first frame on the file's frame grid (its sound starts where that is shown)."""
    return int(round(e.start * fps))


def _sound_files(e: Entry) -> tuple[Path, ...]:
    """The files load_clip reads `e`'s sound from: the stems, and the mix (`audio`, else the video's own track)
    where there are no stems or `audio` is given; none for a silent clip."""
    if e.silent:
        return ()
    stems = (e.speech, e.sfx) if e.speech is not None else ()
    return (*stems, e.audio or e.video) if e.audio or e.speech is None else stems


def _uses(entries: list[Entry], files) -> dict[Path, list[int]]:
    """file -> the entries reading from it (`files(e)`; an entry twice for stems of one file), where 2 or more."""
    uses: dict[Path, list[int]] = {}
    for i, e in enumerate(entries):
        for p in files(e):
            uses.setdefault(p, []).append(i)
    return {p: ii for p, ii in uses.items() if len(ii) > 1}


def _sound_once(entries: list[Entry], fps: float, sample_rate: int, seconds: float, shared: list[Shared]) -> None:
    """Per entry, the sound load_clip would read from each file that two or more of the entries' sounds come from
    and that read_audio does not seek (harmony_rt.media.audio_seekable: AAC, mp3, Opus are decoded from their
    start for every clip): such a file is decoded once per SHARED_WINDOW_S of its clips' sound (read_audio(start=)
    of the run: exactly a full read's samples from there) and each clip's samples are cut from it, what
    read_audio(start=) of the clip gives. A file that fails here is left to load_clip (its message names the
    entry)."""
    from harmony_rt.errors import MediaError
    from harmony_rt.media import audio_seekable, read_audio

    n = int(round(seconds * sample_rate))
    for p, ii in _uses(entries, _sound_files).items():
        try:
            if audio_seekable(p):
                continue
            lead = _audio_lead(p) if any(entries[i].video == p for i in ii) else 0.0
            # as load_clip: the clip's first frame on the fps grid, less the lead where p is the video's own track
            ats = {i: _first_frame(entries[i], fps) / fps - (lead if p == entries[i].video else 0.0) for i in ii}
            pos = {i: max(0.0, at) for i, at in ats.items()}  # where its samples start in the sound
            for run in _runs(pos, seconds, SHARED_WINDOW_S):
                a = pos[run[0]]
                w = read_audio(p, sample_rate, max_seconds=pos[run[-1]] - a + seconds, start=a)  # [W]
                for i in run:
                    w0 = int(round(pos[i] * sample_rate)) - int(round(a * sample_rate))
                    shared[i].sound[p] = (ats[i], w[w0:w0 + n].copy())  # a copy: `w` is freed before the next run
        except MediaError as err:
            log.debug("%s: sound read per clip (%s)", p, err)
            for i in ii:
                shared[i].sound.pop(p, None)
            continue
        log.debug("%s: sound decoded once for %d clips", p, len(ii))


def _frames_once(entries: list[Entry], height: int, width: int, fps: float, seconds: float, fit: str,
                 shared: list[Shared]) -> None:
    """Per entry, its frames where two or more entries take them from a video read_video does not seek
    (harmony_rt.media.video_seekable: avi, MPEG-TS, Matroska or VFR video at its own rate ... are decoded from their
    start for every clip): such a file is decoded once per run of clips holding SHARED_FRAMES_BYTES of frames at
    most (read_video(start_frame=) of the run: exactly a full read's frames from there), each clip's frames cut
    from it. A file that fails here is left to load_clip."""
    from harmony_rt.errors import MediaError
    from harmony_rt.media import read_video, video_seekable

    n = int(round(seconds * fps))
    for p, ii in _uses(entries, lambda e: (e.video,)).items():
        try:
            if video_seekable(p, fps):
                continue
            pos = {i: _first_frame(entries[i], fps) for i in ii}
            for run in _runs(pos, n, max(n, SHARED_FRAMES_BYTES // (height * width * 3))):
                a = pos[run[0]]
                frames, _ = read_video(p, fps, height, width, max_frames=pos[run[-1]] - a + n, start_frame=a, fit=fit)
                for i in run:
                    shared[i].frames = frames[pos[i] - a:pos[i] - a + n].copy()  # [<= n, H, W, 3]
        except MediaError as err:
            log.debug("%s: frames read per clip (%s)", p, err)
            for i in ii:
                shared[i].frames = None
            continue
        log.debug("%s: video decoded once for %d clips", p, len(ii))


SHARED_WINDOW_S = 300.0  # _sound_once: seconds of one file's sound held at a time (~10 MB a minute at 48 kHz)
SHARED_FRAMES_BYTES = 1 << 29  # _frames_once: bytes of one file's frames held at a time (at the model's size)


def _runs(pos: dict, length: float, limit: float) -> list[list]:
    """The keys of `pos` (entries at positions pos[i], each `length` long) in order of position, cut into runs
    spanning `limit` at most (a run of one where one alone is longer)."""
    runs: list[list] = []
    for i in sorted(pos, key=pos.get):
        if runs and pos[i] + length - pos[runs[-1][0]] <= limit:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def load_clip(e: Entry, height: int, width: int, fps: float, sample_rate: int, seconds: float,
              fit: str = "stretch", shared: Shared | None = None) -> Clip:
    """Decode one entry into a Clip of `seconds` at the model's geometry (frames resized as read_video's `fit`:
    "stretch" to the model's size, or "crop": aspect kept, center-cropped). `shared`: its frames and the sound of
    some of its files, read already with other clips' (load_clips)."""
    from harmony_rt.errors import MediaError
    from harmony_rt.media import read_audio, read_video

    n_frames, n_samples = int(round(seconds * fps)), int(round(seconds * sample_rate))
    f0 = _first_frame(e, fps)
    t0 = f0 / fps  # the clip starts on the frame grid: the sound starts where its first frame is shown
    try:
        # read from the clip's start (a full read's frames and samples from there): a clip late in a long file
        # is not decoded from the file's beginning where the file can be sought (harmony_rt.media)
        if shared is not None and shared.frames is not None:
            frames = shared.frames  # cut from one read of the file for several clips (load_clips)
        else:
            frames, _ = read_video(e.video, fps, height, width, max_frames=n_frames, start_frame=f0, fit=fit)
        frames = _length(frames, n_frames, e.video.name, e, fps, seconds,
                         lambda: _duration(e.video, "video"))

        def sound(p: Path) -> np.ndarray:
            if shared is not None and p in shared.sound:
                at, w = shared.sound[p]  # cut from one read of the file for several clips (load_clips)
            else:
                at = t0 - (_audio_lead(p) if p == e.video else 0.0)  # seconds into the decoded sound
                w = read_audio(p, sample_rate, max_seconds=seconds, start=max(0.0, at))
            w0 = int(round(at * sample_rate))
            if w0 < 0:  # the sound starts after the picture: silence until it does
                w = np.concatenate([np.zeros(-w0, np.float32), w])

            def ends() -> float | None:  # the sound's end on the picture's clock
                d = _duration(p, "audio")
                return None if d is None else d + (t0 - at)

            return _length(w, n_samples, f"the sound of {p.name}", e, sample_rate, seconds, ends)

        speech = sfx = None
        if e.speech is not None:
            speech, sfx = sound(e.speech), sound(e.sfx)
        if e.silent:
            audio = np.zeros(n_samples, np.float32)
        else:
            audio = sound(e.audio or e.video) if e.audio or speech is None else speech + sfx
    except MediaError as err:
        hint = ""
        if not (e.silent or e.audio or e.speech) and _no_sound(e.video):
            hint = '; give its sound as "audio", or "silent": true to train it as silence'
        raise DataError(f"{e.where}: {err}{hint}") from None
    if speech is None:  # one stream: speech when there is a transcript, else sound effects
        silent = np.zeros_like(audio)
        speech, sfx = (audio, silent) if e.transcript else (silent, audio)
    return Clip(frames=frames, audio=audio.astype(np.float32), speech=speech.astype(np.float32),
                sfx=sfx.astype(np.float32), video_caption=e.caption, audio_caption=e.audio_caption,
                transcript=e.transcript, speaker=e.speaker, kind="speech" if e.transcript else "ambient")


def load_clips(folder: str | Path, height: int, width: int, fps: float, sample_rate: int, seconds: float,
               streams: int = 1, fit: str = "stretch") -> list[Clip]:
    """Every clip of the folder (read_index, then load_clip each), in the index's order; a file several clips
    take their sound or frames from and that media cannot seek is decoded once for them (_sound_once,
    _frames_once)."""
    entries = read_index(folder, streams)
    shared = [Shared() for _ in entries]
    _frames_once(entries, height, width, fps, seconds, fit, shared)
    _sound_once(entries, fps, sample_rate, seconds, shared)
    clips = []
    for i, e in enumerate(entries):
        clips.append(load_clip(e, height, width, fps, sample_rate, seconds, fit, shared[i]))
        shared[i] = None  # its frames and sound live on in the clip alone
    log.info("%s: %d clips of %g s", folder, len(clips), seconds)
    return clips


def fingerprint(folder: str | Path, entries: list[Entry]) -> str:
    """sha256 of clips.jsonl and of each file it names (path relative to the folder, size, modification time):
    what a resumed run compares its folder with."""
    h = hashlib.sha256((Path(folder) / INDEX).read_bytes())
    for e in entries:
        for p in (e.video, e.audio, e.speech, e.sfx):
            if p is not None:
                st = p.stat()
                h.update(f"{os.path.relpath(p, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def vocabulary(entries: list[Entry]) -> tuple[list[str], str]:
    """(caption words, transcript characters) of the entries, as the tokenizers split them: their own normalizer
    (NFKC, lower case) and pre-tokenizer (caption: words and punctuation runs; transcript: characters). Python's
    str.lower differs from it (a final capital sigma: ς in Python, σ in the tokenizer's lower case)."""
    from ..tokenizers import caption_tokenizer, speech_tokenizer

    cap, sp = caption_tokenizer([]), speech_tokenizer("")

    def pieces(tok, text: str) -> list[str]:
        return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]

    words: set[str] = set()
    chars: set[str] = set()
    for e in entries:
        for text in (e.caption, e.audio_caption):
            words.update(pieces(cap, text))
        chars.update(pieces(sp, e.transcript))
    return sorted(words), "".join(sorted(chars))


__all__ = ["INDEX", "DataError", "Entry", "fingerprint", "load_clip", "load_clips", "read_index", "vocabulary"]
