"""Media I/O with PyAV (mp4/h264/aac, images, any audio) and soundfile (wav); no system ffmpeg needed.

Readers turn every PyAV/soundfile failure into a one-line `MediaError` naming the file. Writers go through
`atomic_output`: the file appears complete under its final name or not at all.

Conventions: video frames are uint8 RGB [T, H, W, 3]; images uint8 RGB [H, W, 3]; audio float32 in [-1, 1],
[W] mono or [W, C] interleaved-by-row.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

try:  # where PyAV keeps its side data types (frames' display matrices): since PyAV 9
    from av.sidedata.sidedata import Type as _SideDataType
except ImportError:  # another layout: orientations are read from the rotation alone (mirrorings stay)
    _SideDataType = None

from .errors import DiskError, MediaError
from .errors import one_line as _one_line

log = logging.getLogger(__name__)

WAV_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
AAC_FALLBACK_RATE = 48000
# AAC decoders emit up to one frame of padding past the muxed duration; trim at most this much to it.
_MAX_CODEC_PADDING = 2048
HEAD_MARGIN_S = 1.0  # read_audio(max_seconds=): decoded past the point used, so resampler edges stay out of it
# A late start (read_video start_frame=, read_audio start=) seeks only to a point SEEK_MIN_S or more past the
# stream's start (nearer, decoding from the start costs little) and lands SEEK_MARGIN_S or more before what it needs.
SEEK_MIN_S = 3.0
SEEK_MARGIN_S = 1.0
# Demuxers whose seeks land on the keyframe at or before the time asked, with the timestamps a read from the start
# sees: mp4/mov (an index of every sample), Matroska (cues). Other files are decoded from their start.
_SEEKABLE_VIDEO = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
# Audio is sought only where that is sample-exact: timestamps that count samples (these demuxers) and a codec that
# decodes each packet without the ones before (PCM, FLAC). Not AAC: its noise substitution (PNS) draws on a random
# generator that runs through the whole stream, so after a seek those bands differ from a read from the start.
_SEEKABLE_AUDIO = {"mov,mp4,m4a,3gp,3g2,mj2", "wav", "flac"}
# 8-bit image pixel formats read_image converts with swscale (besides gray/rgb24/rgba, done by hand).
# gbrap: FFmpeg's decoding of a CMYK JPEG (converted to RGB by the decoder, alpha opaque).
_IMAGE_VIA_SWSCALE = {"ya8", "pal8", "monob", "monow", "yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p",
                      "yuv420p", "yuv422p", "yuv444p", "yuv440p", "yuva420p", "bgr24", "bgra", "argb", "abgr",
                      "gbrp", "gbrap"}
# 16 bits a sample (PNG, TIFF): swscale reduces them to 8 (the model's frames are 8-bit)
_IMAGE_16BIT = {f"{name}{end}" for name in ("rgb48", "rgba64", "bgr48", "bgra64", "gray16", "ya16", "gbrp16",
                                             "gbrap16") for end in ("be", "le")}
_ALPHA_FORMATS = {"rgba", "ya8", "yuva420p", "bgra", "argb", "abgr", "gbrap"} | {
    f for f in _IMAGE_16BIT if f.startswith(("rgba", "bgra", "ya", "gbrap"))}
_BT709, _LIMITED = 1, 1  # AVCOL_SPC_BT709 (= AVCOL_PRI_BT709 = AVCOL_TRC_BT709), AVCOL_RANGE_MPEG
# `_side_data`: held while a lookup that tolerates unnamed side data types is installed on PyAV's Type enum
_SIDE_DATA_TYPES_LOCK = threading.Lock()
# Exceptions PyAV / soundfile / numpy raise on bad files; converted to MediaError at the public boundary.
_LIB_ERRORS = (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError, TypeError, IndexError, sf.SoundFileError)


@contextlib.contextmanager
def _converting(path: Path, action: str) -> Iterator[None]:
    """Turn library exceptions into `MediaError("<action> <path>: <problem>")`; MediaError passes through."""
    try:
        yield
    except MediaError:
        raise
    except av.InvalidDataError as e:  # a file that opened (see _open) and then failed: damaged, cut short, ...
        raise MediaError(f"cannot {action} {path}: damaged or unsupported data ({_one_line(e.strerror or e)})") from e
    except _LIB_ERRORS as e:
        raise MediaError(f"cannot {action} {path}: {type(e).__name__}: {_one_line(e)}") from e


def _check_readable(path: os.PathLike | str) -> Path:
    p = Path(path)
    try:
        if not p.exists():
            raise MediaError(f"cannot read {p}: no such file")
        if p.is_dir():
            raise MediaError(f"cannot read {p}: is a directory")
        if not os.access(p, os.R_OK):
            raise MediaError(f"cannot read {p}: permission denied")
        if p.is_file() and p.stat().st_size == 0:  # regular files only: a pipe or device reports size 0
            raise MediaError(f"cannot read {p}: the file is empty")
    except OSError as e:  # a name too long, a loop of links: pathlib's checks raise what stat() says
        raise MediaError(f"cannot read {p}: {_one_line(e.strerror or e)}") from e
    return p


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise MediaError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _rate(value: object, name: str) -> Fraction:
    """A positive finite rate as a Fraction (29.97 -> 2997/100, 30000/1001 float -> 30000/1001)."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MediaError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(f) or f <= 0:
        raise MediaError(f"{name} must be a positive number, got {value!r}")
    return value if isinstance(value, Fraction) else Fraction(f).limit_denominator(10000)


def _seconds(value: object, name: str) -> float:
    """A finite number of seconds >= 0 as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise MediaError(f"{name} must be a number of seconds >= 0, got {value!r:.40}")
    return float(value)


def _fmt_rate(r: Fraction | float) -> str:
    return f"{float(r):.3f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------------------- writing


def _name_max(folder: Path) -> int:
    """Longest file name (bytes) `folder`'s filesystem allows; 255 where it cannot say."""
    try:
        n = os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # AttributeError: no os.pathconf (Windows)
        return 255
    return n if n > 0 else 255


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError, ValueError):  # cleanup must not hide the error that caused it
        tmp.unlink(missing_ok=True)


def _temp_for(path: Path) -> Path:
    """`.<stem>.<token><suffix>` beside `path`, after checking `path` can be written (MediaError if not)."""
    if "\x00" in str(path):  # the C writers would cut the name there and write another file
        raise MediaError(f"cannot write {str(path)!r}: the file name contains a NUL byte")
    parent = path.parent
    if not parent.is_dir():
        raise MediaError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MediaError(f"cannot write {path}: folder {parent} is not writable")
    name_max = _name_max(parent)
    if len(os.fsencode(path.name)) > name_max:
        raise MediaError(f"cannot write {path}: file name too long (over {name_max} bytes)")
    if path.is_dir():
        raise MediaError(f"cannot write {path}: is a directory")
    # The stem is cut (whole UTF-8 characters) so the temp name stays within name_max.
    token = secrets.token_hex(4)
    room = max(0, name_max - len(os.fsencode(f"..{token}{path.suffix}")))
    stem = os.fsencode(path.stem)[:room].decode("utf-8", "ignore")
    return parent / f".{stem}.{token}{path.suffix}"


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)
_FULL = 1 << 20  # bytes free below which a write that failed is put down to a full disk


def _for_targets(e: MediaError, tmps: list[Path], targets: list[Path]) -> MediaError:
    """A writer's error, naming the target instead of its temp file, as a DiskError where the disk was the
    cause (libsndfile says only "System error." when the disk is full)."""
    msg = str(e)
    for tmp, t in zip(tmps, targets):
        msg = msg.replace(str(tmp), str(t)).replace(tmp.name, t.name)
    if isinstance(e, DiskError) or (isinstance(e.__cause__, OSError) and e.__cause__.errno in _DISK_ERRNOS):
        return DiskError(msg)
    for folder in {t.parent for t in targets}:
        with contextlib.suppress(OSError):
            du = shutil.disk_usage(folder)  # a pseudo filesystem (/proc, /sys) has no space at all: not full
            if du.total and du.free < _FULL:
                return DiskError(f"{msg} (the disk is full: {du.free} bytes free)")
    return type(e)(msg)


@contextlib.contextmanager
def atomic_outputs(*paths: os.PathLike | str) -> Iterator[list[Path]]:
    """Yield a temp path next to each of `paths` (same suffix); once the block is done, fsync them all and
    `os.replace` each over its path: the files appear together (only a kill during the renames splits them).

    On any exception (KeyboardInterrupt included) the temp files are removed, `paths` are left as they were,
    and the exception propagates. Raises MediaError up front if a folder is missing or not writable, or a
    name is longer than the filesystem allows (a temp name is shortened to fit when its path's does).
    """
    targets = [Path(p) for p in paths]
    tmps: list[Path] = []
    # Not mkstemp: the writer creates each file itself, so it gets normal (umask) permissions, not 0600.
    try:
        for t in targets:
            tmps.append(_temp_for(t))
        yield tmps
        for t, tmp in zip(targets, tmps):
            if not tmp.exists():
                raise MediaError(f"cannot write {t}: the writer produced no file")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        for t, tmp in zip(targets, tmps):
            try:
                os.replace(tmp, t)
            except OSError as e:
                raise MediaError(f"cannot write {t}: {_one_line(e.strerror or e)}") from e
    except OSError as e:
        for tmp in tmps:
            _discard(tmp)
        msg = f"cannot write {', '.join(map(str, targets))}: {_one_line(e.strerror or e)}"
        raise (DiskError if e.errno in _DISK_ERRNOS else MediaError)(msg) from e
    except MediaError as e:  # a writer's: it names the temp file it was given, and may not say why
        for tmp in tmps:
            _discard(tmp)
        raise _for_targets(e, tmps, targets) from e
    except BaseException:
        for tmp in tmps:
            _discard(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str) -> Iterator[Path]:
    """`atomic_outputs` for one file: yield its temp path; on success it replaces `path`."""
    with atomic_outputs(path) as (tmp,):
        yield tmp


def _target(path: Path, atomic: bool):
    """The context a writer writes in: `atomic_output(path)`, or `path` itself."""
    return atomic_output(path) if atomic else contextlib.nullcontext(Path(path))


def _check_audio(audio: object, path: Path, max_channels: int | None = None) -> np.ndarray:
    """Validate float audio [W] or [W, C]; return float32 [W, C] clipped to [-1, 1]."""
    if not isinstance(audio, np.ndarray) or audio.dtype.kind != "f":
        what = audio.dtype if isinstance(audio, np.ndarray) else type(audio).__name__
        raise MediaError(f"cannot write {path}: audio must be a float array, got {what}")
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise MediaError(f"cannot write {path}: audio must be [W] or [W, C] with W, C > 0, "
                                   f"got shape {audio.shape}")
    if max_channels is not None and audio.shape[1] > max_channels:
        raise MediaError(f"cannot write {path}: at most {max_channels} audio channels, "
                                   f"got {audio.shape[1]}")
    if not np.isfinite(audio).all():
        raise MediaError(f"cannot write {path}: audio contains NaN or Inf")
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def write_wav(path: os.PathLike | str, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16",
              atomic: bool = True) -> None:
    """Write float audio [W] or [W, C] as WAV, clipped to [-1, 1], atomically (`atomic=False`: straight to
    `path`, for a caller that made it with `atomic_outputs`).

    `subtype` "PCM_16" (default: plays everywhere; reads back within one 16-bit step), "PCM_24", or
    "FLOAT" (32-bit float: bit-exact round trip through `read_audio`).
    """
    path = Path(path)
    sample_rate = _positive_int(sample_rate, "sample_rate")
    if subtype not in WAV_SUBTYPES:
        raise MediaError(f"cannot write {path}: subtype must be one of {WAV_SUBTYPES}, got {subtype!r}")
    data = _check_audio(audio, path)  # [W, C]
    with _target(path, atomic) as tmp, _converting(path, "write"):
        sf.write(str(tmp), data, sample_rate, subtype=subtype, format="WAV")


def _tag_bt709(cc: av.video.codeccontext.VideoCodecContext) -> None:
    """Tag the stream BT.709, limited range: untagged video is shown with the BT.601 or the BT.709 matrix
    depending on the player (and its size), shifting the colours in one or the other."""
    cc.colorspace, cc.color_range = _BT709, _LIMITED
    cc.color_primaries, cc.color_trc = _BT709, _BT709


def _rgb_to_bt709(img: np.ndarray) -> av.VideoFrame:
    """uint8 RGB [H, W, 3] -> a yuv420p frame converted with the BT.709 matrix (as `_tag_bt709` says)."""
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    return vf.reformat(format="yuv420p", dst_colorspace=_BT709, dst_color_range=_LIMITED)


def write_mp4(path: os.PathLike | str, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
              sample_rate: int | None = None, crf: int = 18, atomic: bool = True) -> None:
    """Write RGB frames [T, H, W, 3] uint8 as H.264 (libx264, yuv420p, BT.709 limited range, tagged so) mp4,
    with optional AAC audio, atomically (`atomic=False`: straight to `path`, for a caller that made it with
    `atomic_outputs`).

    `fps` may be fractional (kept as a Fraction time base); `crf` is x264's quality (lower is better, 0..51).
    Odd H or W is padded to even by repeating the last row/column. `audio` float [W] or [W, C] (C <= 2) at
    `sample_rate`, clipped to [-1, 1]; rates AAC lacks are resampled to 48 kHz. Streams are interleaved in
    time and both encoders are flushed. AAC starts ~2 frames (2048 samples) less accurate than the rest.
    `path` must end in .mp4 (any case).
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise MediaError(f"cannot write {path}: an mp4 file's name must end in .mp4")
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
            or frames.shape[-1] != 3 or 0 in frames.shape:
        what = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise MediaError(f"cannot write {path}: frames must be uint8 [T, H, W, 3] with T, H, W > 0, "
                                   f"got {what}")
    rate = _rate(fps, "fps")
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise MediaError(f"cannot write {path}: crf must be an integer in 0..51, got {crf!r}")
    t, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        log.warning("%s: padding %dx%d frames to %dx%d (yuv420p needs even sizes)", path, w, h, w + pad_w, h + pad_h)
    data = None
    sr = sr_out = 0
    if audio is not None:
        if sample_rate is None:
            raise MediaError(f"cannot write {path}: audio given without sample_rate")
        sr = _positive_int(sample_rate, "sample_rate")
        data = _check_audio(audio, path, max_channels=2).T.copy()  # [C, W] planar for fltp
        with _converting(path, "write"):
            aac_rates = av.codec.Codec("aac", "w").audio_rates
        sr_out = sr if not aac_rates or sr in aac_rates else AAC_FALLBACK_RATE
        if sr_out != sr:
            log.info("%s: AAC has no %d Hz; resampling audio to %d Hz", path, sr, sr_out)

    # The movie time scale is the audio rate so the edit lists (which trim AAC's priming) are sample-exact;
    # at the default 1000 the audio could end up to 1 ms short.
    options = {"movflags": "+faststart", **({"movie_timescale": str(sr_out)} if sr_out else {})}
    with _target(path, atomic) as tmp, _converting(path, "write"):
        with av.open(_url(tmp), mode="w", format="mp4", options=options) as container:
            vs = container.add_stream("libx264", rate=rate, options={"crf": str(int(crf)), "preset": "medium"})
            vs.width, vs.height, vs.pix_fmt = w + pad_w, h + pad_h, "yuv420p"
            vs.codec_context.time_base = 1 / rate
            _tag_bt709(vs.codec_context)
            as_ = None
            if data is not None:
                layout = "mono" if data.shape[0] == 1 else "stereo"
                as_ = container.add_stream("aac", rate=sr_out, layout=layout)
            a_done = 0  # audio samples sent so far

            def send_audio(upto: int) -> None:
                nonlocal a_done
                upto = min(upto, data.shape[1])
                if upto <= a_done:
                    return
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, a_done:upto]), format="fltp",
                                                layout=as_.layout.name)
                af.sample_rate, af.pts, af.time_base = sr, a_done, Fraction(1, sr)
                container.mux(as_.encode(af))  # PyAV resamples to the encoder's rate and frame size
                a_done = upto

            for i in range(t):
                img = frames[i]
                if pad_h or pad_w:
                    img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                vf = _rgb_to_bt709(img)
                vf.pts, vf.time_base = i, 1 / rate
                container.mux(vs.encode(vf))
                if as_ is not None:
                    send_audio(round((i + 1) * sr / rate))
            if as_ is not None:
                send_audio(data.shape[1])
                container.mux(as_.encode(None))  # flushes PyAV's internal resampler and the encoder
            container.mux(vs.encode(None))
    log.debug("wrote %s: %d frames %dx%d @ %s fps%s", path, t, w, h, _fmt_rate(rate),
              f", audio {data.shape[1] / sr:.3f} s" if data is not None else "")


# ---------------------------------------------------------------------------------------------- reading


def _url(path: Path) -> str:
    """`path` as FFmpeg must be given it: absolute, so a name with a colon ("take:2.mp4") is not taken for a
    protocol ("take:")."""
    return os.fspath(Path(path).absolute())


def _open(path: Path) -> av.container.InputContainer:
    with _converting(path, "read"):
        try:
            return av.open(_url(path), mode="r")
        except av.InvalidDataError as e:  # FFmpeg: "[Errno 1094995529] Invalid data found when processing input"
            raise MediaError(f"cannot read {path}: not a media file FFmpeg can open "
                             f"({_one_line(e.strerror or e)})") from e


def _chain(first, rest: Iterator) -> Iterator:
    """`first`, then the items of `rest`."""
    yield first
    yield from rest


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, first: av.frame.Frame, ticks: int,
          landed_ok) -> tuple[Iterator, av.frame.Frame | None]:
    """Seek `stream` to the keyframe at or before `ticks` (its time base) -> (its frames from there, the first of
    them). Where the frame it lands on fails `landed_ok` (past the point needed, no timestamp) or the seek fails,
    back to the stream's start: (every frame, None). `first`: the stream's first frame, decoded before."""
    try:
        container.seek(ticks, stream=stream, backward=True)
        frames = container.decode(stream)
        landed = next(frames, None)
        if landed is not None and landed_ok(landed):
            return _chain(landed, frames), landed
        log.debug("%s: a seek to %s landed at %s: decoding from the start", container.name, ticks,
                  None if landed is None else landed.pts)
    except av.FFmpegError as e:
        log.debug("%s: cannot seek (%s): decoding from the start", container.name, e)
    container.seek(first.pts, stream=stream, backward=True)
    frames = container.decode(stream)
    again = next(frames, None)
    if again is None or again.pts != first.pts:
        raise ValueError("decoding from the start again after a seek gave other frames")
    return _chain(again, frames), None


def _audio_to_float(frame: av.AudioFrame) -> np.ndarray:
    """Decoded audio frame -> float32 [C, n] without resampling (same scaling as libsndfile/swresample)."""
    fmt = frame.format
    arr = frame.to_ndarray()
    c = frame.layout.nb_channels or 1
    if not fmt.is_planar:
        arr = arr.reshape(-1, c).T  # packed [1, n*C] -> [C, n]
    name = fmt.name.rstrip("p")
    if name in ("flt", "dbl"):
        return arr.astype(np.float32, copy=False)
    if name == "u8":
        return (arr.astype(np.float32) - 128.0) / 128.0
    if name in ("s16", "s32", "s64"):
        return (arr.astype(np.float64) / float(2 ** (8 * fmt.bytes - 1))).astype(np.float32)
    raise ValueError(f"unsupported audio sample format {fmt.name}")


def read_audio(path: os.PathLike | str, sample_rate: int, max_seconds: float | None = None,
               notes: list[str] | None = None, start: float = 0.0) -> np.ndarray:
    """Decode the first audio stream of any PyAV-readable file -> float32 [W] mono at `sample_rate`.

    Channels are averaged. At the file's own rate the decoded samples are returned unresampled (bit-exact
    for float wav, int/32768 for 16-bit PCM). Otherwise PyAV's AudioResampler (fltp) converts, and the
    length is set to round(W_in * sample_rate / rate_in). Codec padding past the muxed duration (AAC in
    mp4) is trimmed. `max_seconds`: stop decoding HEAD_MARGIN_S past that point, for callers that use only
    the head of a possibly long file; the first `max_seconds` returned are those a full read gives.
    `start`: the sound from `start` seconds on: exactly a full read's samples from round(start * sample_rate)
    (none where that is past the end); `max_seconds` then counts from `start`. Decoding begins HEAD_MARGIN_S
    before it, at a sample on the output's grid (the resampler's edge and phase are then a full read's), by
    seeking where that is sample-exact (PCM / FLAC in wav, flac, mp4 or mov: `_late_audio`); other files are
    decoded from their start, the samples before that point dropped (neither kept nor resampled).
    What was changed (channels mixed, rate converted) is logged and, when `notes` is given, appended to it.
    """
    p = _check_readable(path)
    sample_rate = _positive_int(sample_rate, "sample_rate")
    start = _seconds(start, "start")
    container = _open(p)
    changed: list[str] = []
    with container, _converting(p, "read audio from"):
        if not container.streams.audio:
            raise MediaError(f"cannot read audio from {p}: no audio stream")
        stream = container.streams.audio[0]
        src_rate = stream.codec_context.sample_rate or stream.sample_rate
        # pos: the index, among all the stream's samples, of the next frame's first; cut: the first one kept
        frames, pos, cut = (_late_audio(container, stream, start, sample_rate, src_rate) if start else
                            (container.decode(stream), 0, 0))
        stop = None if max_seconds is None else start + max_seconds + HEAD_MARGIN_S  # seconds
        chunks: list[np.ndarray] = []
        channels = 1
        for frame in frames:
            if frame.samples:
                src_rate = frame.sample_rate or src_rate
                if pos + frame.samples > cut:
                    x = _audio_to_float(frame)  # [C, n]
                    channels = max(channels, len(x))
                    mono = x[0] if len(x) == 1 else x.mean(axis=0, dtype=np.float32)  # [n]
                    chunks.append(mono[max(0, cut - pos):])
                pos += frame.samples
                if stop is not None and src_rate and pos >= stop * src_rate:
                    break
        mono = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)  # [W_in - cut]: from sample `cut` on
        if pos == 0:
            raise MediaError(f"cannot read audio from {p}: no audio samples (zero-length)")
        if not src_rate:
            raise MediaError(f"cannot read audio from {p}: unknown sample rate")
        if stream.duration and stream.time_base:
            muxed = round(stream.duration * stream.time_base * src_rate)
            if 0 < muxed < pos <= muxed + _MAX_CODEC_PADDING:
                mono = mono[:max(0, muxed - cut)]
        if channels > 1:
            changed.append(f"mixed {channels} channels to mono")
        if src_rate == sample_rate:
            out = np.ascontiguousarray(mono, dtype=np.float32)
        else:
            out = _resample(mono, src_rate, sample_rate)
            changed.append(f"resampled {src_rate} Hz -> {sample_rate} Hz")
        if start:  # the output from sample `cut` on (a whole number of output samples: cut is on its grid)
            out = out[round(start * sample_rate) - cut * sample_rate // src_rate:]
    log.debug("read %s: %d samples @ %d Hz -> %d @ %d Hz", p, mono.size, src_rate, out.size, sample_rate)
    for n in changed:
        log.info("%s: %s", p, n)
    if notes is not None:
        notes += changed
    return out


def _grid_cut(start: float, src_rate: int, sample_rate: int) -> int:
    """The source sample a read from `start` seconds keeps from: HEAD_MARGIN_S before it (the resampler's edge
    stays out of what is returned), on a sample that falls on the output's grid (a multiple of
    src_rate / gcd(src_rate, sample_rate): the resampler's phase is then a full read's); 0 near the start."""
    step = src_rate // math.gcd(src_rate, sample_rate)
    return max(0, math.floor((start - HEAD_MARGIN_S) * src_rate / step)) * step


def _late_audio(container: av.container.InputContainer, stream: av.audio.stream.AudioStream, start: float,
                sample_rate: int, src_rate: int) -> tuple[Iterator[av.AudioFrame], int, int]:
    """(frames, pos, cut) for read_audio(start=): the stream's decoded frames, the index among all its samples
    (as a read from the start counts them) of the first frame's first sample, and the sample to keep from
    (`_grid_cut`). Sought to the packet at or before `cut` where that is sample-exact (see _SEEKABLE_AUDIO) and
    `cut` is SEEK_MIN_S or more in, else from the start (pos 0). Files without timestamps: from the start."""
    frames = container.decode(stream)
    first = next(frames, None)
    if first is None:
        return iter(()), 0, 0
    src_rate = first.sample_rate or src_rate
    cut = _grid_cut(start, src_rate, sample_rate) if src_rate else 0
    tb = stream.time_base
    if not _exact_audio_seek(container, stream) or cut < SEEK_MIN_S * src_rate or first.pts is None or not tb:
        return _chain(first, frames), 0, cut
    a0 = Fraction(first.pts) * tb  # a full read's sample 0

    def index(f: av.AudioFrame) -> int | None:  # of f's first sample, where its timestamp names one
        at = None if f.pts is None else (Fraction(f.pts) * tb - a0) * src_rate
        return int(at) if at is not None and at.denominator == 1 and 0 <= at <= cut else None

    frames, landed = _seek(container, stream, first, math.floor((a0 + Fraction(cut, src_rate)) / tb),
                           lambda f: f.sample_rate == src_rate and index(f) is not None)
    return frames, (0 if landed is None else index(landed)), cut


def _exact_audio_seek(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> bool:
    """Whether a seek in `stream` lands sample-exactly (see _SEEKABLE_AUDIO): PCM / FLAC in wav, flac, mp4, mov."""
    codec = stream.codec_context.name
    return container.format.name in _SEEKABLE_AUDIO and (codec.startswith("pcm_") or codec == "flac")


def audio_seekable(path: os.PathLike | str) -> bool:
    """Whether read_audio(path, start=) seeks near `start` (PCM / FLAC in wav, flac, mp4 or mov) rather than
    decoding the sound from the file's beginning (AAC, mp3, Opus, ...: see read_audio); False without sound."""
    p = _check_readable(path)
    with _open(p) as c, _converting(p, "read"):
        return bool(c.streams.audio) and _exact_audio_seek(c, c.streams.audio[0])


def first_times(path: os.PathLike | str) -> tuple[Fraction | None, Fraction | None]:
    """(video, audio): the seconds (exact) of the first decoded video frame and audio sample of `path`, from
    their timestamps (None: no such stream, or no timestamp). read_video counts time from the first, read_audio from
    the second: where they differ the file's streams start apart (a recorder that starts its sound later)."""
    p = _check_readable(path)

    def first(kind: str) -> Fraction | None:  # a container each: decoding one stream skips the other's packets
        with _open(p) as c, _converting(p, "read"):
            if not getattr(c.streams, kind):
                return None
            f = next(c.decode(**{kind: 0}), None)
            return None if f is None or f.pts is None or not f.time_base else f.pts * Fraction(f.time_base)

    return first("video"), first("audio")


def _resample(mono: np.ndarray, src_rate: int, dst_rate: int, chunk: int = 1 << 16) -> np.ndarray:
    """float32 [W] at src_rate -> float32 [round(W * dst / src)] at dst_rate with PyAV's AudioResampler."""
    rs = av.AudioResampler(format="fltp", layout="mono", rate=dst_rate)
    outs: list[np.ndarray] = []
    for start in range(0, mono.size, chunk):
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, start:start + chunk]),
                                       format="fltp", layout="mono")
        f.sample_rate, f.pts, f.time_base = src_rate, start, Fraction(1, src_rate)
        outs.extend(o.to_ndarray()[0] for o in rs.resample(f))
    outs.extend(o.to_ndarray()[0] for o in rs.resample(None))
    out = np.concatenate(outs) if outs else np.zeros(0, np.float32)
    n = round(mono.size * dst_rate / src_rate)
    if out.size < n:
        out = np.pad(out, (0, n - out.size))
    return np.ascontiguousarray(out[:n], dtype=np.float32)


def _stream_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _resize(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """Frame -> uint8 RGB [height, width, 3]: AREA when shrinking both axes, else BICUBIC, in one pass.

    swscale refuses one pass that shrinks one axis a lot while enlarging the other (1x5000 -> 64x64); then
    two: the shrinking axis with AREA, then the other with BICUBIC.
    """
    shrink = width <= frame.width and height <= frame.height
    try:
        return frame.reformat(width, height, format="rgb24",
                              interpolation="AREA" if shrink else "BICUBIC").to_ndarray()
    except av.ArgumentError:
        mid = (width, frame.height) if width < frame.width else (frame.width, height)
        frame = frame.reformat(*mid, format="rgb24", interpolation="AREA")
        return frame.reformat(width, height, interpolation="BICUBIC").to_ndarray()


def _side_data(frame: av.VideoFrame):
    """`frame.side_data`, also where FFmpeg attached a type this PyAV has no name for: PyAV 18 with FFmpeg 8
    raises ValueError ("31 is not a valid Type", AV_FRAME_DATA_EXIF, on every JPEG/PNG with EXIF) while
    listing them; then unnamed types are listed as pseudo-members of `Type` for the length of the call."""
    try:
        return frame.side_data
    except ValueError:
        pass

    def unnamed(cls, value):
        member = object.__new__(cls)
        member._name_, member._value_ = f"UNKNOWN_{value}", value
        return member

    with _SIDE_DATA_TYPES_LOCK:
        _SideDataType._missing_ = classmethod(unnamed)
        try:
            return frame.side_data
        finally:
            del _SideDataType._missing_


def _orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(k, mirrored) from `frame`'s display matrix (a photo's EXIF orientation, a phone video's rotation):
    it is shown upright by mirroring top to bottom when `mirrored` (the matrix's determinant is negative:
    EXIF orientations 2, 4, 5, 7), then turning k (0-3) quarter turns counter-clockwise."""
    k = round(getattr(frame, "rotation", 0) / 90) % 4
    if _SideDataType is None:
        return k, False
    try:
        matrix = next((np.frombuffer(bytes(sd), np.int32) for sd in _side_data(frame)
                       if sd.type is _SideDataType.DISPLAYMATRIX), None)
    except (ValueError, TypeError, AttributeError) as e:  # a PyAV without the side data: rotation only
        log.debug("display matrix unreadable (%s): a mirroring stays", e)
        matrix = None
    a, b, c, d = (0, 0, 0, 0) if matrix is None or matrix.size < 9 else (int(v) for v in matrix[[0, 1, 3, 4]])
    return k, a * d - b * c < 0


def _upright(rgb: np.ndarray, k: int, mirrored: bool) -> np.ndarray:
    """Stored pixels [h, w, ...] -> as shown, by `_orientation`'s (k, mirrored)."""
    return np.rot90(rgb[::-1] if mirrored else rgb, k)


def _shown_size(frame: av.VideoFrame) -> tuple[int, int, int, bool]:
    """(width, height, quarter turns, mirrored) of `frame` as shown upright."""
    k, mirrored = _orientation(frame)
    return (frame.height, frame.width, k, mirrored) if k % 2 else (frame.width, frame.height, k, mirrored)


FITS = ("stretch", "crop")  # read_video(fit=): resize to the size asked, or cover it (aspect kept) and center-crop


def _cover(shown: tuple[int, int, int, bool], height: int, width: int, fit: str = "crop") -> tuple[int, int]:
    """(h, w) the upright frame is resized to: for "crop", scaled (aspect kept) to the smallest size covering
    (height, width); for "stretch", (height, width) itself."""
    if fit != "crop":
        return height, width
    w, h = shown[:2]
    s = max(width / w, height / h)
    return max(height, round(h * s)), max(width, round(w * s))


def _size_notes(shown: tuple[int, int, int, bool], height: int, width: int, fit: str = "stretch") -> list[str]:
    """What `_to_rgb` changed: the turn and mirroring (its display matrix), the resize (and crop)."""
    w, h, k, mirrored = shown
    if mirrored:  # said as a left-right mirroring first: flipping top-bottom then turning k = that, turning k + 2
        cw = (4 - (k + 2) % 4) % 4 * 90
        notes = ["mirrored left to right" + (f" and rotated {cw} degrees clockwise" if cw else "")
                 + ", as its orientation metadata says"]
    else:
        notes = [f"rotated {(4 - k) * 90} degrees clockwise, as its orientation metadata says"] if k else []
    ch, cw = _cover(shown, height, width, fit)
    if (ch, cw) != (height, width):
        return notes + [f"resized {w}x{h} -> {cw}x{ch} (aspect kept), center-cropped to {width}x{height}"]
    return notes + ([f"resized {w}x{h} -> {width}x{height}"] if (w, h) != (width, height) else [])


def _to_rgb(frame: av.VideoFrame, height: int, width: int, shown: tuple[int, int, int, bool],
            fit: str = "stretch") -> np.ndarray:
    """Decoded frame -> uint8 [height, width, 3], turned upright and unmirrored as `shown` (`_shown_size` of the
    stream's first frame: its display matrix, read once) says; no resize when the size already matches.
    fit "crop": resized with its aspect kept to cover (height, width), then its center cut out."""
    k, mirrored = shown[2:]
    ch, cw = _cover(shown, height, width, fit)  # upright size after resizing
    h, w = (cw, ch) if k % 2 else (ch, cw)  # the size before turning
    rgb = frame.to_ndarray(format="rgb24") if (frame.width, frame.height) == (w, h) else _resize(frame, h, w)
    rgb = _upright(rgb, k, mirrored) if k or mirrored else rgb
    return np.ascontiguousarray(_center(rgb, height, width))


def _center(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centered [height, width] part of rgb [h, w, 3] (h >= height, w >= width); rgb itself when equal."""
    y0, x0 = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    return rgb[y0:y0 + height, x0:x0 + width]


def _check_fit(fit: object) -> None:
    if not isinstance(fit, str) or fit not in FITS:
        raise MediaError(f"fit must be one of {', '.join(FITS)}, got {fit!r:.40}")


def read_video(path: os.PathLike | str, fps: float, height: int, width: int,
               max_frames: int | None = None, start_frame: int = 0,
               fit: str = "stretch") -> tuple[np.ndarray, list[str]]:
    """Decode the first video stream -> (uint8 [T, height, width, 3] RGB, notes on what was changed).

    Time resampling picks, for each output time k / fps (from the first frame), the source frame nearest
    by timestamp; the output covers the source duration. When the source rate equals `fps` every frame is
    kept as decoded. Frames are turned upright and unmirrored as the stream's display matrix says (a phone's
    portrait video), then resized (stretched, aspect not kept) to (height, width), or with `fit="crop"` resized
    with their aspect kept to cover it and center-cropped (a portrait clip for a square model). At most
    `max_frames` frames are returned. `start_frame`: the output from that frame on: exactly a full read's
    frames [start_frame:] (none where that is past the end), the grid still counted from the file's first
    frame. Where it is SEEK_MIN_S or more in, the file is sought to the keyframe SEEK_MARGIN_S or more before
    it (mp4/mov, Matroska; at the source's own rate only where the index lists every frame at one spacing:
    `_frame_spacing`); else decoded from its start, the frames before it not converted.
    """
    p = _check_readable(path)
    rate = _rate(fps, "fps")
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    if max_frames is not None:
        max_frames = _positive_int(max_frames, "max_frames")
    if isinstance(start_frame, bool) or not isinstance(start_frame, (int, np.integer)) or start_frame < 0:
        raise MediaError(f"start_frame must be an integer >= 0, got {start_frame!r:.40}")
    start_frame = int(start_frame)
    _check_fit(fit)
    container = _open(p)
    notes: list[str] = []
    with container, _converting(p, "read video from"):
        if not container.streams.video:
            raise MediaError(f"cannot read video from {p}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_rate, passthrough = _source_rate(stream, rate)
        # passthrough numbers frames as decoded: after a seek, by timestamp, where the spacing is one throughout
        spacing = _frame_spacing(stream) if passthrough and start_frame else None
        frames, first_pts = container.decode(stream), None
        if start_frame and (spacing or not passthrough):  # the start's time: its frame's, or its grid point's
            at = start_frame * spacing * stream.time_base if spacing else Fraction(start_frame) / rate
            frames, first_pts = _late_video(container, stream, at)
        limit = None if max_frames is None else max_frames + 1  # one extra tells us whether we trimmed
        out: list[np.ndarray] = []
        src_size = None
        if passthrough:
            i = -1  # the frame's index in a read from the start
            for frame in frames:
                src_size = src_size or _shown_size(frame)
                sought = first_pts is not None and frame.pts is not None
                i = round(Fraction(frame.pts - first_pts, spacing)) if sought else i + 1
                if i < start_frame:
                    continue
                if limit is not None and len(out) >= limit:
                    break
                out.append(_to_rgb(frame, height, width, src_size, fit))
        else:
            t0 = None if first_pts is None else first_pts * stream.time_base
            out, src_size = _select_by_time(frames, stream, rate, src_rate, height, width, limit, start_frame, t0,
                                            fit)
        if src_size is None:
            raise MediaError(f"cannot read video from {p}: no decodable frames")
        if not out:  # start_frame past the end
            return np.zeros((0, height, width, 3), np.uint8), notes
        if not passthrough:
            notes.append(f"resampled {_fmt_rate(src_rate) if src_rate else 'unknown'} fps -> {_fmt_rate(rate)} fps")
        notes += _size_notes(src_size, height, width, fit)
        if max_frames is not None and len(out) > max_frames:
            out = out[:max_frames]
            secs = _stream_seconds(container, stream)
            total = (stream.frames if passthrough and stream.frames else
                     round(secs * rate) if secs else None)
            total = total - start_frame if total else None  # the frames from start_frame on
            note = f"trimmed {total} -> {max_frames} frames" if total and total > max_frames else \
                f"trimmed to {max_frames} frames"
            notes.append(note + (f" from frame {start_frame}" if start_frame else ""))
    for n in notes:
        log.info("%s: %s", p, n)
    return np.stack(out), notes


def _source_rate(stream: av.video.stream.VideoStream, rate: Fraction) -> tuple[Fraction | None, bool]:
    """(the stream's frame rate or None, whether it is `rate`: read_video then keeps every frame as decoded)."""
    src = stream.average_rate or stream.guessed_rate or stream.base_rate
    src = Fraction(src) if src else None
    return src, src is not None and abs(src - rate) <= rate * Fraction(1, 10000)


def video_seekable(path: os.PathLike | str, fps: float) -> bool:
    """Whether read_video(path, fps, ..., start_frame=) seeks near start_frame (mp4 / mov / Matroska; at the
    source's own rate only where its index lists every frame at one spacing) rather than decoding the video
    from the file's beginning (avi, MPEG-TS; at its own rate Matroska, whose index lists keyframes only, and
    variable-rate video ...: see read_video)."""
    p = _check_readable(path)
    rate = _rate(fps, "fps")
    with _open(p) as c, _converting(p, "read video from"):
        if not c.streams.video or c.format.name not in _SEEKABLE_VIDEO:
            return False
        stream = c.streams.video[0]
        return not _source_rate(stream, rate)[1] or _frame_spacing(stream) is not None


def _frame_spacing(stream: av.video.stream.VideoStream) -> int | None:
    """The spacing (time base ticks) of a stream whose container index lists every frame at one spacing (a
    constant-rate mp4): its frame i is then at the first one's time + i spacings. None otherwise (Matroska's
    index lists only keyframes) and where PyAV does not show the index (Stream.index_entries, in recent PyAVs)."""
    entries = getattr(stream, "index_entries", None)
    if entries is None or len(entries) < 2 or len(entries) != stream.frames:
        return None
    ts = [e.timestamp for e in entries]  # [N] decoding times
    d = ts[1] - ts[0]
    return d if d > 0 and all(b - a == d for a, b in zip(ts, ts[1:])) else None


def _late_video(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                at: Fraction) -> tuple[Iterator[av.VideoFrame], int | None]:
    """(frames, first_pts) for read_video(start_frame=), `at` seconds after the first frame: the stream's frames
    from the keyframe SEEK_MARGIN_S or more before `at` (the nearest-timestamp choice at `at` sees the frame
    before it, and an open GOP's leading frames stay out of it) and the first frame's pts, that the output's grid
    is counted from; or, where `at` is under SEEK_MIN_S, the file is not one of _SEEKABLE_VIDEO, or its frames
    have no timestamps, every frame and None."""
    frames = container.decode(stream)
    tb = stream.time_base
    if at < SEEK_MIN_S or not tb or container.format.name not in _SEEKABLE_VIDEO:
        return frames, None
    first = next(frames, None)
    if first is None or first.pts is None:
        return (frames if first is None else _chain(first, frames)), None
    ticks = first.pts + math.floor((at - SEEK_MARGIN_S) / tb)
    latest = first.pts + math.floor((at - SEEK_MARGIN_S / 2) / tb)  # a keyframe shown after it is decoded
    frames, landed = _seek(container, stream, first, ticks, lambda f: f.pts is not None and f.pts <= latest)
    return frames, (None if landed is None else first.pts)


def _select_by_time(frames: Iterator[av.VideoFrame], stream: av.video.stream.VideoStream, rate: Fraction,
                    src_rate: Fraction | None, height: int, width: int, limit: int | None, k0: int = 0,
                    t0: Fraction | None = None,
                    fit: str = "stretch") -> tuple[list[np.ndarray], tuple[int, int, int, bool] | None]:
    """Nearest-timestamp selection onto the grid k / rate, from k = k0; times count from t0 (by default the first
    frame's). Streams: holds one decoded frame at a time."""
    tb = stream.time_base
    out: list[np.ndarray] = []
    prev, prev_t = None, None
    k = k0
    src_size = None

    def emit_while(cond) -> bool:  # emit `prev` for each target time satisfying cond; False once `limit` hit
        nonlocal k
        rgb = None
        while cond(Fraction(k) / rate):
            if limit is not None and len(out) >= limit:
                return False
            rgb = _to_rgb(prev, height, width, src_size, fit) if rgb is None else rgb
            out.append(rgb)
            k += 1
        return True

    for frame in frames:
        src_size = src_size or _shown_size(frame)
        if frame.pts is not None and tb:
            t = Fraction(frame.pts) * tb
        else:
            t = (prev_t + t0 if prev_t is not None else 0) + (1 / src_rate if src_rate else 1 / rate)
        if t0 is None:
            t0 = t
        t -= t0
        if prev is not None:
            if t <= prev_t:
                continue  # out-of-order or duplicate timestamp: keep the earlier frame
            mid = (prev_t + t) / 2
            if not emit_while(lambda tk: tk < mid):
                return out, src_size
        prev, prev_t = frame, t
    if prev is not None:
        end = prev_t + (1 / src_rate if src_rate else 1 / rate)
        emit_while(lambda tk: tk < end)
    return out, src_size


def read_image(path: os.PathLike | str, height: int, width: int, notes: list[str] | None = None,
               fit: str = "stretch") -> np.ndarray:
    """Read a png/jpg/... (first frame) -> uint8 [height, width, 3] RGB.

    Accepted: 8-bit gray, gray+alpha, 1-bit, RGB, RGBA, palette (expanded by swscale), 8-bit YUV (JPEG),
    planar RGB (CMYK JPEG, which FFmpeg's decoder turns into RGB), and the 16-bit forms of gray / RGB / RGBA
    (reduced to 8 bits by swscale, noted). Alpha is dropped (colour channels kept as stored, not composited).
    Anything else (float, 10 / 12-bit YUV) raises MediaError naming the pixel format.
    Turned upright as its EXIF orientation says (rotations and mirrorings: all 8 orientations), then resized
    as read_video's `fit` says: stretched to (height, width), or ("crop") resized with its aspect kept to cover
    it and center-cropped. What was changed is logged and, when `notes` is given, appended to it.
    """
    changed: list[str] = []
    p = _check_readable(path)
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    _check_fit(fit)
    container = _open(p)
    with container, _converting(p, "read image"):
        if not container.streams.video:
            raise MediaError(f"cannot read image {p}: no image data")
        frame = next(container.decode(video=0), None)
        if frame is None:
            raise MediaError(f"cannot read image {p}: no decodable image")
        fmt = frame.format.name
        if fmt == "gray":
            rgb = np.repeat(frame.to_ndarray()[:, :, None], 3, axis=2)  # [h, w, 3]
        elif fmt in ("rgb24", "rgba"):
            rgb = frame.to_ndarray()[:, :, :3]
        elif fmt in _IMAGE_VIA_SWSCALE or fmt in _IMAGE_16BIT:
            rgb = frame.to_ndarray(format="rgb24")
            if fmt in _IMAGE_16BIT:
                changed.append(f"reduced 16-bit samples to 8 bits ({fmt})")
        else:
            raise MediaError(f"cannot read image {p}: unsupported pixel format {fmt} "
                                       f"(need 8 or 16-bit gray, RGB, RGBA, palette or JPEG)")
        if fmt in _ALPHA_FORMATS and frame.to_ndarray(format="rgba")[:, :, 3].min() < 255:
            changed.append(f"dropped the alpha channel ({fmt})")  # only where it hides something: GIFs decode as bgra
        shown = _shown_size(frame)
        rgb = _upright(rgb, *shown[2:])  # upright and unmirrored: a photo's EXIF orientation
        ch, cw = _cover(shown, height, width, fit)  # size after resizing
        if rgb.shape[:2] != (ch, cw):
            rgb = _resize(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"), ch, cw)
        rgb = _center(rgb, height, width)
        changed += _size_notes(shown, height, width, fit)
    for n in changed:
        log.info("%s: %s", p, n)
    if notes is not None:
        notes += changed
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def probe(path: os.PathLike | str) -> dict:
    """Describe a media file: {"video": {frames, fps, width, height, duration, codec} | None,
    "audio": {sample_rate, duration, codec, channels} | None}; durations in seconds (float)."""
    p = _check_readable(path)
    container = _open(p)
    info: dict = {"video": None, "audio": None}
    with container, _converting(p, "probe"):
        if container.streams.video:
            vs = container.streams.video[0]
            frames = vs.frames
            if not frames:  # container has no count: count packets (no decoding)
                frames = sum(1 for pk in container.demux(vs) if pk.size)
            fps = vs.average_rate or vs.guessed_rate
            info["video"] = {"frames": int(frames), "fps": float(fps) if fps else None,
                             "width": vs.codec_context.width, "height": vs.codec_context.height,
                             "duration": _stream_seconds(container, vs), "codec": vs.codec_context.codec.canonical_name}
        if container.streams.audio:
            st = container.streams.audio[0]
            info["audio"] = {"sample_rate": st.codec_context.sample_rate or st.sample_rate,
                             "duration": _stream_seconds(container, st), "codec": st.codec_context.codec.canonical_name,
                             "channels": st.codec_context.channels}
    return info
