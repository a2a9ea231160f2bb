"""Audio-visual synchrony metric (numpy only), reported like Sync-C / Sync-D.

One visual and one audio signal per video frame are compared by normalized (Pearson) cross-correlation over
lags -max_offset..max_offset frames:

* ``offset``: the best lag in frames, positive = audio late (the audio event comes after its frame);
  ``abs(offset)`` is the Sync-D-like number (lower is better);
* ``confidence``: peak minus median of the correlation curve (Sync-C-like, higher is better, at most 2).

Signals, by kind:

* ``ambient``: :func:`motion_energy` (mean absolute frame difference) vs :func:`onset_envelope`
  (positive flux of short-time RMS);
* ``speech``: frame-to-frame changes of :func:`mouth_opening` (dark pixels of the lower face) vs changes of
  :func:`speech_envelope` (RMS around each frame's time). Changes, not levels: the levels mostly say
  "speech present", which time-shifted audio from the same clip matches almost as well.

Timing convention: video frame ``k`` shows time ``k / fps``; an audio event at that time belongs to frame k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("ambient", "speech")
# mouth_opening: luma at or below DARK_LO counts fully as "dark", at or above DARK_HI not at all.
DARK_LO, DARK_HI = 40.0, 80.0
ONSET_SUBFRAMES = 4  # onset_envelope resolution: sub-windows per video frame


@dataclass
class SyncResult:
    confidence: float  # peak - median of correlations (Sync-C-like)
    offset: int  # lag of the peak in frames, positive = audio late (|offset| is Sync-D-like)
    correlations: np.ndarray  # [2 * max_offset + 1], lags -max_offset..max_offset

    @property
    def lags(self) -> np.ndarray:
        m = (len(self.correlations) - 1) // 2
        return np.arange(-m, m + 1)


@dataclass
class ControlResult:
    """The metric on mismatched audio: a null distribution to beat."""

    confidences: np.ndarray  # [n]
    offsets: np.ndarray  # [n]

    @property
    def mean(self) -> float:
        return float(np.mean(self.confidences))

    @property
    def std(self) -> float:
        return float(np.std(self.confidences))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    return frames


def _mono(audio: np.ndarray) -> np.ndarray:
    """[W] or stems [S, W] (summed to the mix) -> float64 [W]."""
    a = np.asarray(audio, np.float64)
    if a.ndim == 2:
        a = a.sum(0)
    if a.ndim != 1:
        raise ValueError(f"audio must be [W] or [S, W], got {np.shape(audio)}")
    return a


def _n_frames(audio: np.ndarray, sample_rate: float, fps: float, n_frames: int | None) -> int:
    return int(n_frames) if n_frames is not None else int(round(len(audio) * fps / sample_rate))


def _window_energy(audio: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mean square of audio over [starts, ends) sample windows (zero outside the signal)."""
    cs = np.concatenate([[0.0], np.cumsum(audio * audio)])
    n = len(audio)
    s, e = np.clip(starts, 0, n), np.clip(ends, 0, n)
    return (cs[e] - cs[s]) / np.maximum(ends - starts, 1)


def motion_energy(frames: np.ndarray) -> np.ndarray:
    """Mean absolute frame difference, in [0, 1]: [T, H, W, 3] uint8 -> [T] float32 (first = 0)."""
    f = _check_frames(frames).astype(np.float32)
    out = np.zeros(len(f), np.float32)
    if len(f) > 1:
        out[1:] = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3)) / 255.0
    return out


def onset_envelope(audio: np.ndarray, sample_rate: float, fps: float, n_frames: int | None = None) -> np.ndarray:
    """Onset strength per video frame: [W] -> [T] float32.

    Short-time RMS on ONSET_SUBFRAMES sub-windows per frame; the positive RMS increases (flux) are summed per
    frame. Frame k collects the sub-windows starting in [(k - 1/S) / fps, (k + 1 - 1/S) / fps), i.e. one
    sub-window of tolerance for sounds that start slightly before their frame.
    """
    a = _mono(audio)
    t = _n_frames(a, sample_rate, fps, n_frames)
    s = ONSET_SUBFRAMES
    sub = sample_rate / fps / s
    j = np.arange(-2, t * s)  # sub-window indices; -2, -1 lie before the signal
    edges = np.round(np.append(j, j[-1] + 1) * sub).astype(np.int64)
    rms = np.sqrt(_window_energy(a, edges[:-1], edges[1:]))  # [len(j)]
    flux = np.maximum(np.diff(rms), 0.0)  # flux of sub-windows j = -1 .. t*s-1
    # frame k <- sub-windows k*s-1 .. k*s+s-2 (flux index = window index + 1)
    return flux[: t * s].reshape(t, s).sum(1).astype(np.float32)


def speech_envelope(audio: np.ndarray, sample_rate: float, fps: float, n_frames: int | None = None) -> np.ndarray:
    """Loudness per video frame: RMS over [(k - 0.5) / fps, (k + 0.5) / fps): [W] -> [T] float32."""
    a = _mono(audio)
    t = _n_frames(a, sample_rate, fps, n_frames)
    hop = sample_rate / fps
    k = np.arange(t)
    starts = np.round((k - 0.5) * hop).astype(np.int64)
    ends = np.round((k + 0.5) * hop).astype(np.int64)
    return np.sqrt(_window_energy(a, starts, ends)).astype(np.float32)


def darkness(frames: np.ndarray) -> np.ndarray:
    """Soft dark-pixel mask [T, H, W] in [0, 1] from Rec.601 luma (1 at luma <= DARK_LO, 0 at >= DARK_HI)."""
    luma = _check_frames(frames).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip((DARK_HI - luma) / (DARK_HI - DARK_LO), 0.0, 1.0)


def mouth_opening(frames: np.ndarray) -> np.ndarray:
    """Mouth opening per frame from pixels: [T, H, W, 3] -> [T] float32 (dark area, fraction of the frame).

    Assumes the synthetic face of `train.data.synth`: the only dark pixels (luma < ~80) in a frame are the
    eyes and the mouth, the eyes above the mouth. The eyes are the topmost band of rows that is dark on
    average over time; the mouth is every dark pixel below that band. If only one dark band exists (eyes
    and mouth merged, or no eyes), the whole frame's dark area is used: the eyes then add a constant, which
    the correlation ignores. Frames without dark pixels give zeros.
    """
    d = darkness(frames)  # [T, H, W]
    t, h, w = d.shape
    prof = d.mean(0).sum(1)  # [H] mean dark mass per row
    if prof.max() <= 1e-6:
        return np.zeros(t, np.float32)
    rows = prof > 0.2 * prof.max()
    top = int(np.argmax(rows))
    end = top
    while end < h and rows[end]:
        end += 1
    below = d[:, end:, :]
    if not rows[end:].any():  # a single dark band
        below = d
    return (below.sum((1, 2)) / (h * w)).astype(np.float32)


def _signals(frames, audio, sample_rate, fps, kind) -> tuple[np.ndarray, np.ndarray]:
    frames = _check_frames(frames)
    t = len(frames)
    if kind == "ambient":
        return motion_energy(frames), onset_envelope(audio, sample_rate, fps, t)
    if kind == "speech":
        m, e = mouth_opening(frames), speech_envelope(audio, sample_rate, fps, t)
        return np.diff(m, prepend=m[:1]), np.diff(e, prepend=e[:1])
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 1e-12 else 0.0


def lag_correlations(visual: np.ndarray, audio_sig: np.ndarray, max_offset: int) -> np.ndarray:
    """Pearson r of (visual[t], audio_sig[t + lag]) over the overlap, lags -max_offset..max_offset: [2m+1]."""
    v = np.asarray(visual, np.float64)
    a = np.asarray(audio_sig, np.float64)
    t = min(len(v), len(a))
    out = np.zeros(2 * max_offset + 1)
    for i, lag in enumerate(range(-max_offset, max_offset + 1)):
        lo, hi = max(0, -lag), t - max(0, lag)
        if hi - lo >= 3:
            out[i] = _pearson(v[lo:hi], a[lo + lag: hi + lag])
    return out


def score_signals(visual: np.ndarray, audio_sig: np.ndarray, max_offset: int = 3) -> SyncResult:
    """SyncResult of two per-frame signals (ties in the peak go to the smallest |lag|)."""
    c = lag_correlations(visual, audio_sig, max_offset)
    lags = np.arange(-max_offset, max_offset + 1)
    best = max(range(len(c)), key=lambda i: (round(c[i], 12), -abs(lags[i])))
    return SyncResult(float(c[best] - np.median(c)), int(lags[best]), c.astype(np.float32))


def sync_score(frames: np.ndarray, audio: np.ndarray, sample_rate: float, fps: float, kind: str = "ambient",
               max_offset: int = 3) -> SyncResult:
    """Sync-C / Sync-D-like score of a clip: frames [T, H, W, 3] uint8, audio [W] (or stems [S, W])."""
    v, a = _signals(frames, audio, sample_rate, fps, kind)
    return score_signals(v, a, max_offset)


def detect_events(signal: np.ndarray, rel: float = 0.35, floor: float = 0.0) -> np.ndarray:
    """Frames of the events in a per-frame signal [T]: local maxima at or above max(rel * peak, floor).

    A plateau counts once (its first frame). Use with :func:`motion_energy` (visual impacts) and
    :func:`onset_envelope` (audio onsets); `floor` keeps a near-silent or near-still clip from having events.
    """
    x = np.asarray(signal, np.float64)
    if x.ndim != 1:
        raise ValueError(f"signal must be 1-D, got shape {x.shape}")
    if len(x) == 0 or x.max() <= 0:
        return np.zeros(0, np.int64)
    thr = max(rel * float(x.max()), floor)
    prev = np.concatenate([[-np.inf], x[:-1]])
    nxt = np.concatenate([x[1:], [-np.inf]])
    return np.flatnonzero((x >= thr) & (x > prev) & (x >= nxt)).astype(np.int64)


def match_events(a: np.ndarray, b: np.ndarray, tol: int = 1) -> int:
    """How many events of `a` have an unused event of `b` within +-tol frames (greedy, in time order)."""
    free = sorted(int(f) for f in b)
    n = 0
    for f in sorted(int(f) for f in a):
        hit = next((g for g in free if abs(g - f) <= tol), None)
        if hit is not None:
            free.remove(hit)
            n += 1
    return n


def shuffled_control(frames: np.ndarray, audio: np.ndarray, sample_rate: float, fps: float, kind: str,
                     rng: np.random.Generator, n: int = 20, max_offset: int = 3,
                     mode: str = "shift") -> ControlResult:
    """The same metric against mismatched audio, n times.

    mode "shift": audio circularly shifted by a random amount between max_offset + 1 and T - max_offset - 1
    frames (so the true alignment is never within the searched lags); mode "shuffle": audio cut into
    one-frame segments that are randomly permuted.
    """
    frames = _check_frames(frames)
    a = _mono(audio)
    t = len(frames)
    hop = sample_rate / fps
    v, _ = _signals(frames, a, sample_rate, fps, kind)
    conf, offs = np.zeros(n), np.zeros(n, np.int64)
    for i in range(n):
        if mode == "shift":
            lo, hi = (max_offset + 1) * hop, (t - max_offset - 1) * hop
            if hi <= lo:
                lo, hi = hop, max((t - 1) * hop, hop + 1)
            b = np.roll(a, int(rng.uniform(lo, hi)))
        elif mode == "shuffle":
            edges = np.round(np.arange(t + 1) * hop).astype(np.int64)
            edges[-1] = max(edges[-1], len(a))
            segs = [a[edges[k]:edges[k + 1]] for k in range(t)]
            b = np.concatenate([segs[k] for k in rng.permutation(t)])
        else:
            raise ValueError(f"mode must be 'shift' or 'shuffle', got {mode!r}")
        _, ab = _signals(frames, b, sample_rate, fps, kind)
        r = score_signals(v, ab, max_offset)
        conf[i], offs[i] = r.confidence, r.offset
    return ControlResult(conf, offs)
