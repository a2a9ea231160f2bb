"""Procedural audio-video clips with captions, deterministic from a seed, no downloads.

Kinds:

* ``ambient``: 1-2 objects (ball, box, star, ring) of a named colour and size that bounce on a floor, flash
  or pulse a named number of times; each visual event (impact, flash / pulse onset) sounds exactly at that
  frame's time. Caption words determine the sound: floor material -> timbre (wooden knock, metallic clang,
  glassy clink, dull thud), size -> register (small high, big low), colour -> semitone; flashes beep and
  pulses thump. Unnamed size = medium, unnamed floor = wooden, so "a red ball bounces twice" is one sound.
* ``speech``: a frontal face whose mouth opening follows the loudness envelope of espeak-ng speech
  (English / Mandarin, 8 speakers; see `train.data.speech`).
* ``complex``: a (smaller) speaking face plus one object with its sounds; both are captioned.

Timing: video frame k shows time k / fps; an event at frame k starts its sound at sample round(k / fps * sr).
Captions are lower case, words separated by single spaces (`caption_vocabulary` lists them all).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from harmony_rt.sync import speech_envelope

from . import draw
from .sounds import BEEP, MATERIALS, SIZE_PITCH_WORD, THUMP, Timbre, event_pitch, place, render_event
from .speech import LANGUAGE_WORD, SENTENCES, SPEAKERS, Speaker, fit_sentence, require_espeak

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when clips change: invalidates on-disk caches
KINDS = ("ambient", "speech", "complex")
CANONICAL_PROMPT = "a red ball bounces twice"
CANONICAL_FRACTION = 0.15  # share of random ambient clips that show exactly the canonical prompt

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.16, 0.16), "orange": (0.96, 0.55, 0.12), "yellow": (0.94, 0.86, 0.16),
    "green": (0.16, 0.75, 0.27), "blue": (0.16, 0.35, 0.90), "purple": (0.59, 0.24, 0.82),
    "pink": (0.96, 0.47, 0.71),
}
SHAPES = ("ball", "box", "star", "ring")
SIZE_RADIUS = {"small": 0.09, "medium": 0.13, "big": 0.17}  # x min(H, W)
SIZE_WORDS = {"small": "small", "medium": "", "big": "big"}  # medium is never named
ACTIONS = ("bounces", "flashes", "pulses")
FLOORS = ("wooden", "metal", "glass", "stone")
DEFAULT_FLOOR = "wooden"  # what an unnamed floor is
COUNT_WORDS = {1: "once", 2: "twice", 3: "three times"}
AUDIO_COUNT_WORDS = {1: "a single", 2: "two", 3: "three"}
FACE_VERBS = ("says something", "speaks", "is talking")
GENDER_NOUN = {"male": "man", "female": "woman"}
_CONTACT = {"ball": 1.0, "box": 0.85, "ring": 1.0, "star": 0.97}  # centre-to-bottom, x radius
_DECAY = (1.0, 0.45, 0.15)  # visual afterglow of an event over frames k, k+1, k+2
_SKIES = (((0.72, 0.84, 0.96), (0.90, 0.95, 1.00)), ((0.93, 0.89, 0.78), (0.98, 0.96, 0.90)),
          ((0.82, 0.92, 0.84), (0.94, 0.98, 0.94)), ((0.89, 0.84, 0.93), (0.97, 0.94, 0.99)))
_HAIR = ((0.98, 0.86, 0.47), (0.78, 0.47, 0.24), (0.90, 0.90, 0.90), (0.60, 0.45, 0.30))
_SHIRT = ((0.35, 0.55, 0.85), (0.85, 0.45, 0.35), (0.45, 0.70, 0.45), (0.75, 0.75, 0.80))
_DARK = (0.08, 0.08, 0.10)  # pupils; with the mouth the only dark pixels (harmony_rt.sync.mouth_opening)
_MOUTH = (0.30, 0.05, 0.08)


@dataclass
class SynthConfig:
    height: int = 32
    width: int = 32
    fps: float = 8.0
    sample_rate: int = 16000
    seconds: float = 2.0

    @property
    def n_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))


@dataclass
class Clip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [W] in [-1, 1]: the mix = speech + sfx
    speech: np.ndarray  # float32 [W] speech stem (zeros when no speech)
    sfx: np.ndarray  # float32 [W] sound-effect stem (zeros when none)
    video_caption: str
    audio_caption: str
    transcript: str  # "" when no speech
    speaker: str | None  # key of train.data.speech.SPEAKERS
    kind: str  # "ambient" | "speech" | "complex"
    events: list[float] = field(default_factory=list)  # seconds of each sound event / visual impact
    language: str | None = None  # "en" | "zh"


@dataclass
class _Obj:
    shape: str
    colour: str
    size: str
    action: str
    count: int
    x: float  # fraction of width
    y: float = 0.4  # fraction of height (flash / pulse; bounces use the floor)
    vx: float = 0.0  # px per frame (bounces)
    frames: list[int] = field(default_factory=list)  # event frames

    def caption(self) -> str:
        words = [SIZE_WORDS[self.size], self.colour, self.shape, self.action, COUNT_WORDS[self.count]]
        return _a(" ".join(w for w in words if w))

    def timbre(self, floor: str) -> Timbre:
        return {"bounces": MATERIALS[floor], "flashes": BEEP, "pulses": THUMP}[self.action]

    def audio_caption(self, floor: str) -> str:
        tb = self.timbre(floor)
        noun = tb.noun + ("s" if self.count > 1 else "")
        words = [AUDIO_COUNT_WORDS[self.count], SIZE_PITCH_WORD[self.size], tb.adjective, noun]
        return " ".join(w for w in words if w)


def _a(phrase: str) -> str:
    """The phrase with its indefinite article: "a red ball", "an orange box"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass
class _Scene:
    objs: list[_Obj]
    floor: str = DEFAULT_FLOOR
    floor_named: bool = False
    sky: int = 0


# ----------------------------------------------------------------------------------------------- sampling


def _gaps(fps: float) -> tuple[int, int]:
    """Minimum frames between two events of one object / of any two objects."""
    return max(3, int(round(0.3 * fps))), max(2, int(round(0.2 * fps)))


def _place_events(rng: np.random.Generator, objs: list[_Obj], n_frames: int, fps: float) -> None:
    """Assign distinct event frames in [2, T-2] to every object; lowers counts that cannot fit."""
    gap_same, gap_any = _gaps(fps)
    lo, hi = 2, max(n_frames - 2, 2)
    while True:
        for _ in range(200):
            taken: list[tuple[int, int]] = []  # (frame, object index)
            order = [i for i, o in enumerate(objs) for _ in range(o.count)]
            ok = True
            for i in (order[j] for j in rng.permutation(len(order))):
                cand = [f for f in range(lo, hi + 1)
                        if all(abs(f - g) >= (gap_same if j == i else gap_any) for g, j in taken)]
                if not cand:
                    ok = False
                    break
                taken.append((int(rng.choice(cand)), i))
            if ok:
                for i, o in enumerate(objs):
                    o.frames = sorted(f for f, j in taken if j == i)
                return
        big = max(objs, key=lambda o: o.count)
        if big.count == 1:
            raise ValueError(f"clip too short for {len(objs)} events ({n_frames} frames)")
        big.count -= 1


def _sample_obj(rng: np.random.Generator, x_range: tuple[float, float], actions=ACTIONS,
                action_p=(0.5, 0.25, 0.25)) -> _Obj:
    return _Obj(
        shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))),
        size=str(rng.choice(list(SIZE_RADIUS))), action=str(rng.choice(actions, p=action_p)),
        count=int(rng.integers(1, 4)), x=float(rng.uniform(*x_range)), y=float(rng.uniform(0.3, 0.45)),
        vx=float(rng.uniform(-0.006, 0.006)),
    )


def _sample_floor(rng: np.random.Generator, scene: _Scene) -> None:
    scene.floor = str(rng.choice(FLOORS))
    scene.floor_named = scene.floor != DEFAULT_FLOOR or bool(rng.random() < 0.5)
    scene.sky = int(rng.integers(len(_SKIES)))


def _ambient_scene(rng: np.random.Generator, cfg: SynthConfig) -> _Scene:
    if rng.random() < CANONICAL_FRACTION:
        return _canonical_scene(rng, cfg)
    scene = _Scene([])
    _sample_floor(rng, scene)
    if rng.random() < 0.6:
        scene.objs = [_sample_obj(rng, (0.3, 0.7))]
    else:
        left, right = (0.2, 0.33), (0.67, 0.8)
        scene.objs = [_sample_obj(rng, left), _sample_obj(rng, right)]
        if scene.objs[0].colour == scene.objs[1].colour and scene.objs[0].shape == scene.objs[1].shape:
            scene.objs[1].colour = next(c for c in COLOURS if c != scene.objs[0].colour)
    _place_events(rng, scene.objs, cfg.n_frames, cfg.fps)
    return scene


def _canonical_scene(rng: np.random.Generator, cfg: SynthConfig) -> _Scene:
    scene = _Scene([_Obj("ball", "red", "medium", "bounces", 2, float(rng.uniform(0.3, 0.7)),
                         vx=float(rng.uniform(-0.006, 0.006)))], DEFAULT_FLOOR, False, int(rng.integers(len(_SKIES))))
    _place_events(rng, scene.objs, cfg.n_frames, cfg.fps)
    return scene


def _captions(scene: _Scene) -> tuple[str, str]:
    video = " and ".join(o.caption() for o in scene.objs)
    if scene.floor_named and any(o.action == "bounces" for o in scene.objs):
        video += f" on a {scene.floor} floor"
    audio = " and ".join(o.audio_caption(scene.floor) for o in scene.objs)
    return video, audio


# ---------------------------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, cfg: SynthConfig, scene: _Scene, floor: bool = True) -> np.ndarray:
    """Sky / wall gradient with an optional textured floor: [H, W, 3] float32."""
    h, w = cfg.height, cfg.width
    xx, yy = draw.grid(h, w)
    top, bottom = (np.array(c, np.float32) for c in _SKIES[scene.sky])
    g = (yy / h)[..., None]
    img = (1 - g) * top + g * bottom
    if not floor:
        return img.astype(np.float32)
    fy = _floor_y(cfg)
    below = yy >= fy
    u = min(h, w)
    if scene.floor == "wooden":
        base = np.array((0.77, 0.59, 0.39), np.float32)
        plank = ((xx + 0.3 * u * (yy > fy + 0.1 * u)) % (0.22 * u)) < 0.8
        tex = base - 0.07 * plank[..., None] + 0.02 * np.sin(yy * 2.1 + xx * 0.3)[..., None]
    elif scene.floor == "metal":
        base = np.array((0.68, 0.70, 0.74), np.float32)
        tex = base + 0.12 * np.exp(-(((yy - fy) / (0.08 * u)) ** 2))[..., None]
    elif scene.floor == "glass":
        base = np.array((0.72, 0.88, 0.93), np.float32)
        tex = base + 0.07 * ((((xx + yy) / (0.15 * u)) % 1.0) < 0.25)[..., None]
    else:  # stone
        base = np.array((0.62, 0.60, 0.58), np.float32)
        tex = base + rng.uniform(-0.05, 0.05, (h, w, 1)).astype(np.float32)
    img = np.where(below[..., None], tex, img)
    edge = np.abs(yy - fy) < 0.5
    img[edge] *= 0.85
    return np.clip(img, 0, 1).astype(np.float32)


def _floor_y(cfg: SynthConfig) -> float:
    return 0.8 * cfg.height


def _afterglow(frames: list[int], n_frames: int) -> np.ndarray:
    """Per-frame event intensity [T]: 1 at an event frame, then _DECAY."""
    a = np.zeros(n_frames, np.float32)
    for f in frames:
        for d, v in enumerate(_DECAY):
            if f + d < n_frames:
                a[f + d] = max(a[f + d], v)
    return a


def _bounce_heights(hits: list[int], n_frames: int, hmax: float, r: float, fall: int) -> np.ndarray:
    """Height above the floor contact per frame [T] (px).

    The object hangs still at hmax, drops during the `fall` frames before the first impact, makes one arc
    between consecutive impacts and rests on the floor after the last one, so motion sits next to impacts.
    Arcs are h = A sin(pi s^2), s in [0, 1]: a slow rise and a fast drop. Motion energy saturates once a
    frame moves the object by its diameter 2r, so heights are capped such that the frame into an impact
    moves ~2r, the frame before it clearly less, and the frame out of it <= 0.6x: the motion-energy peak is
    the impact frame.
    """
    h = np.zeros(n_frames)
    k1 = hits[0]
    fall = max(1, min(fall, k1))
    hmax = min(hmax, 2 * r * fall ** 2 / (2 * fall - 1))  # the last falling frame moves 2r
    j = np.arange(k1 + 1)
    h[: k1 + 1] = hmax * (1 - (np.clip(j - (k1 - fall), 0, None) / fall) ** 2)
    before = h[k1 - 1] if k1 > 0 else hmax  # displacement into the impact
    for i, (a, b) in enumerate(zip(hits, hits[1:] + [None])):
        if b is None:
            h[a:] = 0.0  # the last impact is dead: the object rests on the floor
            break
        n = b - a
        s = (np.arange(a, b + 1) - a) / n
        shape = np.sin(np.pi * s ** 2)
        amp = min(hmax * 0.8 ** (i + 1),  # restitution
                  0.6 * min(before, 2 * r) / shape[1],  # out of the impact: <= 0.6x into it
                  1.3 * r / max(shape[-2] - shape[-3], 1e-6))  # second-last frame before the next: < 2r
        h[a: b + 1] = amp * shape
        before = h[b - 1]
    return h


def _draw_objects(cfg: SynthConfig, scene: _Scene) -> list[tuple]:
    """Per object, per frame draw commands: (shape, colour, cx, cy, r, sx, sy, glow, glow_xy)."""
    t, u = cfg.n_frames, min(cfg.height, cfg.width)
    fy = _floor_y(cfg)
    sky = np.array(_SKIES[scene.sky][0], np.float32)
    out = []
    for o in scene.objs:
        r = SIZE_RADIUS[o.size] * u
        col = np.array(COLOURS[o.colour], np.float32)
        a = _afterglow(o.frames, t)
        cmds = []
        if o.action == "bounces":
            hmax = max(fy - _CONTACT[o.shape] * r - 0.08 * cfg.height - r, 2.0)
            fall = max(3, int(round(0.4 * cfg.fps)))
            hs = _bounce_heights(o.frames, t, hmax, r, fall)
            start = max(o.frames[0] - fall, 0)
            for k in range(t):
                drift = o.vx * u * (np.clip(k, start, o.frames[-1]) - start)  # only while in the air
                cx = np.clip(o.x * cfg.width + drift, r + 1, cfg.width - r - 1)
                cy = fy - _CONTACT[o.shape] * r - hs[k]
                c = col + 0.5 * a[k] * (1 - col)  # the object lights up on impact
                cmds.append((o.shape, c, cx, cy, r, 1.0, 1.0, a[k], (cx, fy, max(2.2 * r, 0.2 * u))))
        else:
            cx, cy = o.x * cfg.width, o.y * cfg.height
            for k in range(t):
                if o.action == "flashes":
                    faded = 0.45 * col + 0.55 * sky  # off; on (at the event frame) = the named colour
                    c = faded + a[k] * (col - faded)
                    cmds.append((o.shape, c, cx, cy, r, 1.0, 1.0, a[k], (cx, cy, 1.7 * r)))
                else:  # pulses
                    s = 1.0 + 0.45 * a[k]
                    cmds.append((o.shape, col, cx, cy, r, s, s, 0.0, None))
        out.append(cmds)
    return out


def _render_cmd(img: np.ndarray, cmd: tuple, floor_glow: bool) -> None:
    shape, col, cx, cy, r, sx, sy, glow, gxy = cmd
    if glow > 0 and gxy is not None:
        gx, gy, gr = gxy
        ry = 0.32 * gr if floor_glow else gr
        draw.paint_sdf(img, lambda xx, yy: draw.sdf_ellipse(xx, yy, gx, gy, gr, ry), gx, gy, gr,
                       (1.0, 1.0, 0.95), 0.9 * glow)
    draw.paint_sdf(img, lambda xx, yy: draw.shape_sdf(shape, xx, yy, cx, cy, r, sx, sy), cx, cy,
                   1.25 * r * max(sx, sy), col)


@dataclass
class _Face:
    cx: float
    cy: float
    rx: float
    ry: float
    colour: str
    gender: str
    hair: int
    shirt: int


def _ellipse(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, colour) -> None:
    draw.paint_sdf(img, lambda xx, yy: draw.sdf_ellipse(xx, yy, cx, cy, rx, ry), cx, cy, max(rx, ry), colour)


def _draw_head(img: np.ndarray, face: _Face) -> None:
    """Shoulders, hair (long for women), head ellipse and eyes (white + dark pupil); no mouth."""
    cx, cy, rx, ry = face.cx, face.cy, face.rx, face.ry
    _ellipse(img, cx, cy + 1.55 * ry, 1.5 * rx, 0.75 * ry, _SHIRT[face.shirt])
    if face.gender == "female":
        _ellipse(img, cx, cy + 0.12 * ry, 1.22 * rx, 1.12 * ry, _HAIR[face.hair])
    else:
        _ellipse(img, cx, cy - 0.2 * ry, 1.06 * rx, 0.9 * ry, _HAIR[face.hair])
    _ellipse(img, cx, cy, rx, ry, COLOURS[face.colour])
    pr = max(0.11 * rx, 0.8)
    for side in (-1, 1):
        ex, ey = cx + side * 0.38 * rx, cy - 0.18 * ry
        _ellipse(img, ex, ey, 1.7 * pr, 1.7 * pr, (1.0, 1.0, 1.0))
        _ellipse(img, ex, ey, pr, pr, _DARK)


def _draw_mouth(img: np.ndarray, face: _Face, opening: float) -> None:
    """Dark mouth ellipse, opened by `opening` in [0, 1] (with the pupils, the only dark pixels)."""
    mw = 0.32 * face.rx * (1 - 0.15 * opening)
    mh = 0.045 * face.ry + 0.26 * face.ry * opening
    _ellipse(img, face.cx, face.cy + 0.45 * face.ry, mw, mh, _MOUTH)


def _sample_face(rng: np.random.Generator, cfg: SynthConfig, speaker: Speaker, side: str | None) -> _Face:
    u = min(cfg.height, cfg.width)
    if side is None:  # speech: large, centred
        cx = cfg.width * (0.5 + rng.uniform(-0.04, 0.04))
        cy = cfg.height * (0.46 + rng.uniform(-0.03, 0.03))
        rx, ry = 0.30 * u, 0.36 * u
    else:  # complex: smaller, on one side
        cx = cfg.width * ((0.27 if side == "left" else 0.73) + rng.uniform(-0.02, 0.02))
        cy = cfg.height * (0.42 + rng.uniform(-0.02, 0.02))
        rx, ry = 0.20 * u, 0.25 * u
    return _Face(cx, cy, rx, ry, str(rng.choice(list(COLOURS))), speaker.gender, int(rng.integers(len(_HAIR))),
                 int(rng.integers(len(_SHIRT))))


# ------------------------------------------------------------------------------------------------- audio


def _render_sfx(rng: np.random.Generator, cfg: SynthConfig, scene: _Scene, gain: tuple[float, float]) -> np.ndarray:
    sfx = (0.001 * rng.standard_normal(cfg.n_samples)).astype(np.float32)  # faint room tone
    for o in scene.objs:
        tb = o.timbre(scene.floor)
        sound = render_event(tb, event_pitch(tb, o.size, o.colour), cfg.sample_rate, rng, cfg.seconds)
        for f in o.frames:
            place(sfx, sound, int(round(f / cfg.fps * cfg.sample_rate)), float(rng.uniform(*gain)))
    return sfx


def _speech_track(rng: np.random.Generator, cfg: SynthConfig, speaker: Speaker, language: str,
                  avoid: frozenset) -> tuple[str, np.ndarray]:
    """(transcript, speech stem [W]): one pool sentence placed at a random time inside the clip."""
    margin = min(0.12, 0.1 * cfg.seconds)
    text, utt = fit_sentence(speaker, language, cfg.sample_rate, cfg.seconds - 2 * margin, rng, avoid)
    track = np.zeros(cfg.n_samples, np.float32)
    lo = int(margin * cfg.sample_rate)
    hi = max(cfg.n_samples - int(margin * cfg.sample_rate) - len(utt), lo)
    place(track, utt, int(rng.integers(lo, hi + 1)), float(rng.uniform(0.6, 0.8)))
    return text, track


def _mouth_curve(speech: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Mouth opening per frame [T] in [0, 1]: the speech loudness envelope, normalized to its peak."""
    env = speech_envelope(speech, cfg.sample_rate, cfg.fps, cfg.n_frames)
    peak = float(env.max())
    if peak <= 0:
        return np.zeros_like(env)
    return np.clip((env / peak - 0.05) / 0.95, 0.0, 1.0)


def _mix(speech: np.ndarray, sfx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale both stems so the mix peaks <= 0.95; returns (mix, speech, sfx) with mix == speech + sfx."""
    peak = float(np.abs(speech + sfx).max())
    if peak > 0.95:
        speech, sfx = speech * (0.95 / peak), sfx * (0.95 / peak)
    speech, sfx = speech.astype(np.float32), sfx.astype(np.float32)
    return speech + sfx, speech, sfx


# ---------------------------------------------------------------------------------------------- clips


def _rng(seed: int, kind: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, KINDS.index(kind)]))


def _ambient_clip(rng: np.random.Generator, cfg: SynthConfig, scene: _Scene) -> Clip:
    bg = _background(rng, cfg, scene)
    cmds = _draw_objects(cfg, scene)
    frames = np.empty((cfg.n_frames, cfg.height, cfg.width, 3), np.uint8)
    for k in range(cfg.n_frames):
        img = bg.copy()
        for o, oc in zip(scene.objs, cmds):
            _render_cmd(img, oc[k], o.action == "bounces")
        frames[k] = draw.to_uint8(img)
    sfx = _render_sfx(rng, cfg, scene, (0.35, 0.55))
    mix, speech, sfx = _mix(np.zeros_like(sfx), sfx)
    video, audio = _captions(scene)
    events = sorted(f / cfg.fps for o in scene.objs for f in o.frames)
    return Clip(frames, mix, speech, sfx, video, audio, "", None, "ambient", events, None)


def _speech_clip(rng: np.random.Generator, cfg: SynthConfig, kind: str, speaker: str | None,
                 language: str | None, avoid: frozenset = frozenset()) -> Clip:
    require_espeak()
    spk = SPEAKERS[speaker] if speaker is not None else SPEAKERS[str(rng.choice(list(SPEAKERS)))]
    lang = language if language is not None else str(rng.choice(["en", "zh"]))
    if lang not in SENTENCES:
        raise ValueError(f"language must be 'en' or 'zh', got {lang!r}")
    scene = _Scene([])
    _sample_floor(rng, scene)
    side = None if kind == "speech" else str(rng.choice(["left", "right"]))
    face = _sample_face(rng, cfg, spk, side)
    verb = str(rng.choice(FACE_VERBS))
    if kind == "complex":
        x_range = (0.62, 0.8) if side == "left" else (0.2, 0.38)
        scene.objs = [_sample_obj(rng, x_range, action_p=(0.7, 0.15, 0.15))]
        _place_events(rng, scene.objs, cfg.n_frames, cfg.fps)
    text, speech = _speech_track(rng, cfg, spk, lang, avoid)
    sfx = (_render_sfx(rng, cfg, scene, (0.25, 0.4)) if kind == "complex"
           else np.zeros(cfg.n_samples, np.float32))
    mix, speech, sfx = _mix(speech, sfx)

    opening = _mouth_curve(speech, cfg)
    base = _background(rng, cfg, scene, floor=kind == "complex")
    _draw_head(base, face)
    cmds = _draw_objects(cfg, scene)
    frames = np.empty((cfg.n_frames, cfg.height, cfg.width, 3), np.uint8)
    for k in range(cfg.n_frames):
        img = base.copy()
        _draw_mouth(img, face, float(opening[k]))
        for o, oc in zip(scene.objs, cmds):
            _render_cmd(img, oc[k], o.action == "bounces")
        frames[k] = draw.to_uint8(img)

    video = f"a {GENDER_NOUN[spk.gender]} with {_a(face.colour)} face {verb}"
    audio = _a(" ".join([*spk.adjectives, spk.gender, "voice", "speaking", LANGUAGE_WORD[lang]]))
    events: list[float] = []
    if kind == "complex":
        ov, oa = _captions(scene)
        video, audio = f"{video} while {ov}", f"{audio} and {oa}"
        events = sorted(f / cfg.fps for o in scene.objs for f in o.frames)
    return Clip(frames, mix, speech, sfx, video, audio, text, spk.id, kind, events, lang)


def make_clip(seed: int, kind: str, cfg: SynthConfig | None = None, *, speaker: str | None = None,
              language: str | None = None) -> Clip:
    """One clip, a pure function of (seed, kind, cfg[, speaker, language]).

    speaker / language pin the voice and language of speech / complex clips (ignored for ambient).
    Raises RuntimeError if espeak-ng is missing and the kind needs speech.
    """
    cfg = cfg or SynthConfig()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if speaker is not None and speaker not in SPEAKERS:
        raise ValueError(f"unknown speaker {speaker!r}; known: {sorted(SPEAKERS)}")
    rng = _rng(seed, kind)
    if kind == "ambient":
        return _ambient_clip(rng, cfg, _ambient_scene(rng, cfg))
    return _speech_clip(rng, cfg, kind, speaker, language)


def canonical_clip(cfg: SynthConfig | None = None, seed: int = 0) -> Clip:
    """A clip of CANONICAL_PROMPT ("a red ball bounces twice"); seed varies position and timing."""
    cfg = cfg or SynthConfig()
    rng = _rng(seed, "ambient")
    return _ambient_clip(rng, cfg, _canonical_scene(rng, cfg))


def speaker_clips(speaker: str, n: int, seed: int, cfg: SynthConfig | None = None, kind: str = "speech",
                  language: str | None = None) -> list[Clip]:
    """n clips of one speaker with different transcripts where the pools allow (stage-2 references)."""
    cfg = cfg or SynthConfig()
    if kind not in ("speech", "complex"):
        raise ValueError("speaker_clips needs kind 'speech' or 'complex'")
    if speaker not in SPEAKERS:
        raise ValueError(f"unknown speaker {speaker!r}; known: {sorted(SPEAKERS)}")
    out: list[Clip] = []
    for i in range(n):
        rng = _rng(_clip_seed(seed, i, list(SPEAKERS).index(speaker)), kind)
        avoid = frozenset(c.transcript for c in out)
        out.append(_speech_clip(rng, cfg, kind, speaker, language, avoid))
    return out


def _clip_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, *map(int, keys)]).generate_state(1)[0])


def make_dataset(n: int, seed: int, cfg: SynthConfig | None = None,
                 kinds: tuple[str, ...] = KINDS) -> list[Clip]:
    """n clips; clip i has kind kinds[i % len(kinds)] and a seed derived from (seed, i)."""
    cfg = cfg or SynthConfig()
    return [make_clip(_clip_seed(seed, i), kinds[i % len(kinds)], cfg) for i in range(n)]


# ---------------------------------------------------------------------------------------------- cache

_META_FIELDS = ("video_caption", "audio_caption", "transcript", "speaker", "kind", "events", "language")


def cached_dataset(cache_dir: str | Path, n: int, seed: int, cfg: SynthConfig | None = None,
                   kinds: tuple[str, ...] = KINDS) -> list[Clip]:
    """make_dataset, stored once as one .npz (no pickle) under cache_dir, keyed by every argument."""
    cfg = cfg or SynthConfig()
    key = json.dumps({"n": n, "seed": seed, "cfg": asdict(cfg), "kinds": list(kinds), "v": GENERATOR_VERSION},
                     sort_keys=True)
    path = Path(cache_dir) / f"synth-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            return [Clip(z["frames"][i], z["audio"][i], z["speech"][i], z["sfx"][i], **meta[i]) for i in range(n)]
    clips = make_dataset(n, seed, cfg, kinds)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps([{f: getattr(c, f) for f in _META_FIELDS} for c in clips], ensure_ascii=False).encode()
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, frames=np.stack([c.frames for c in clips]), audio=np.stack([c.audio for c in clips]),
        speech=np.stack([c.speech for c in clips]), sfx=np.stack([c.sfx for c in clips]),
        meta=np.frombuffer(meta, np.uint8),
    )
    tmp.replace(path)
    log.info("cached %d synthetic clips at %s", n, path)
    return clips


# ------------------------------------------------------------------------------------------ vocabularies


def caption_vocabulary() -> list[str]:
    """Every word the caption generators can emit (video and audio captions), sorted."""
    words = {"a", "an", "and", "while", "on", "floor", "with", "face", "voice", "speaking", "male", "female"}
    words |= set(GENDER_NOUN.values()) | set(COLOURS) | set(SHAPES) | set(ACTIONS) | set(FLOORS)
    for phrase in (*FACE_VERBS, *COUNT_WORDS.values(), *AUDIO_COUNT_WORDS.values(), *SIZE_WORDS.values(),
                   *SIZE_PITCH_WORD.values(), *LANGUAGE_WORD.values()):
        words |= set(phrase.split())
    for tb in (*MATERIALS.values(), BEEP, THUMP):
        words |= {tb.adjective, tb.noun, tb.noun + "s"}
    for spk in SPEAKERS.values():
        words |= set(spk.adjectives)
    return sorted(words)


def transcript_charset() -> str:
    """Every character of the EN and ZH transcript pools, sorted."""
    return "".join(sorted({ch for pool in SENTENCES.values() for s in pool for ch in s}))
