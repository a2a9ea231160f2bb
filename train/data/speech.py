"""Speech from espeak-ng: speakers (voice variant + pitch + speed), EN / ZH sentence pools, an in-memory cache.

A speaker keeps its voice across languages (`en-us+f2` and `cmn+f2` with the same -p / -s), so a clip of
one language can serve as the timbre reference of another.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

ESPEAK_RATE = 22050
ESPEAK_VOICE = {"en": "en-us", "zh": "cmn"}
LANGUAGE_WORD = {"en": "english", "zh": "chinese"}
ZH_SPEED = 1.3  # espeak's Mandarin is slow at a given -s; speak it faster so short clips hold a phrase


@dataclass(frozen=True)
class Speaker:
    """A voice: espeak variant (m1..m7, f1..f5), pitch -p (0-99), speed -s (words per minute)."""

    id: str
    gender: str  # "male" | "female"
    variant: str
    pitch: int
    speed: int

    @property
    def adjectives(self) -> list[str]:
        """Audio-caption adjectives: tempo then register ("a slow deep male voice")."""
        words = []
        if self.speed < 155:
            words.append("slow")
        elif self.speed > 200:
            words.append("fast")
        if self.gender == "male" and self.pitch < 30:
            words.append("deep")
        elif self.gender == "female" and self.pitch >= 85:
            words.append("high-pitched")
        return words


SPEAKERS: dict[str, Speaker] = {s.id: s for s in (
    Speaker("spk0", "male", "m3", 10, 165),
    Speaker("spk1", "male", "m1", 40, 185),
    Speaker("spk2", "male", "m7", 30, 145),
    Speaker("spk3", "male", "m2", 65, 210),
    Speaker("spk4", "female", "f2", 65, 170),
    Speaker("spk5", "female", "f4", 88, 190),
    Speaker("spk6", "female", "f1", 75, 150),
    Speaker("spk7", "female", "f5", 95, 215),
)}

EN_SENTENCES: tuple[str, ...] = (
    "hello there", "good morning", "thank you", "see you soon", "how are you", "nice to meet you",
    "the sun is up", "i like green tea", "where is my cat", "let us go home", "it is raining", "come with me",
    "this is fun", "open the door", "the sky is blue", "what time is it", "i am hungry", "good night",
    "that was loud", "look at this", "we did it", "play it again", "be careful", "i can hear you",
    "the bird can sing", "stop right there", "listen to me", "yes of course", "no thank you", "see you tomorrow",
    # longer: these fit only clips of about three seconds and more
    "the little dog runs in the park", "please close the window before you go", "my brother plays the drums",
    "we will meet again next summer", "the train leaves at seven", "can you help me carry this box",
)
ZH_SENTENCES: tuple[str, ...] = (
    "你好", "谢谢", "再见", "早上好", "晚安", "我们走吧", "你好吗", "太好了", "没问题", "请进", "好久不见", "我饿了",
    "下雨了", "开门", "小心", "听我说", "真好玩", "明天见", "对不起", "不客气", "我知道", "你看", "很好", "加油",
    "天气很好", "我喜欢茶", "快来", "生日快乐", "你是谁", "我们赢了",
    # longer: these fit only clips of about three seconds and more
    "今天天气很好", "我们一起去公园吧", "这个苹果很好吃", "请把窗户关上", "火车七点出发", "我明天去上班",
)
SENTENCES = {"en": EN_SENTENCES, "zh": ZH_SENTENCES}


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> None:
    if not have_espeak():
        raise RuntimeError("espeak-ng is not installed (speech clips need it): apt-get install espeak-ng")


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono PCM WAV bytes (espeak --stdout; its size fields may be bogus) -> float32 [n], rate."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng returned no WAV data")
    rate = int.from_bytes(data[24:28], "little")
    i = data.find(b"data", 12)
    if i < 0:
        raise RuntimeError("espeak-ng WAV has no data chunk")
    pcm = data[i + 8:]
    pcm = pcm[: len(pcm) // 2 * 2]
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, rate


@lru_cache(maxsize=4096)
def _espeak_cached(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    require_espeak()
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text]
    res = subprocess.run(cmd, capture_output=True, check=False, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({' '.join(cmd[:-1])}): {res.stderr.decode(errors='replace')}")
    audio, rate = _parse_wav(res.stdout)
    if rate != ESPEAK_RATE:
        log.debug("espeak-ng rate %d (expected %d)", rate, ESPEAK_RATE)
    audio.flags.writeable = False
    return audio if rate == ESPEAK_RATE else resample(audio, rate, ESPEAK_RATE)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited FFT resampling [n] -> [round(n * sr_out / sr_in)] (fine for signals with silent ends)."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    n = len(x)
    m = int(round(n * sr_out / sr_in))
    spec = np.fft.rfft(x.astype(np.float64))
    k = m // 2 + 1
    out = np.zeros(k, complex)
    keep = min(k, len(spec))
    out[:keep] = spec[:keep]
    if m < n and m % 2 == 0:  # new Nyquist bin: keep it real
        out[-1] = out[-1].real
    return (np.fft.irfft(out, m) * (m / n)).astype(np.float32)


def trim(x: np.ndarray, sample_rate: int, rel: float = 0.02, pad: float = 0.01) -> np.ndarray:
    """Cut leading / trailing silence (below rel x peak), keeping pad seconds."""
    idx = np.nonzero(np.abs(x) > rel * (np.abs(x).max() + 1e-9))[0]
    if len(idx) == 0:
        return x[:0]
    p = int(pad * sample_rate)
    return x[max(idx[0] - p, 0): idx[-1] + p + 1]


def speak(text: str, speaker: Speaker, language: str, sample_rate: int, speed_scale: float = 1.0) -> np.ndarray:
    """Speech [n] float32 at sample_rate, silence trimmed, peak 1 (cached per text, voice, rate)."""
    return _speak_cached(text, speaker, language, sample_rate, round(float(speed_scale), 3))


@lru_cache(maxsize=4096)
def _speak_cached(text: str, speaker: Speaker, language: str, sample_rate: int, speed_scale: float) -> np.ndarray:
    voice = f"{ESPEAK_VOICE[language]}+{speaker.variant}"
    speed = int(round(speaker.speed * speed_scale * (ZH_SPEED if language == "zh" else 1.0)))
    raw = _espeak_cached(text, voice, speaker.pitch, min(max(speed, 80), 450))
    x = trim(resample(raw, ESPEAK_RATE, sample_rate), sample_rate)
    x = x / (np.abs(x).max() + 1e-9)
    x.flags.writeable = False
    return x


def fit_sentence(speaker: Speaker, language: str, sample_rate: int, max_seconds: float,
                 rng: np.random.Generator, avoid: frozenset = frozenset()) -> tuple[str, np.ndarray]:
    """A random pool sentence whose speech fits in max_seconds (speaking up to 1.4x faster if needed).

    Falls back to the shortest utterance, cut with a fade, when none fits (very short clips).
    """
    pool = [s for s in SENTENCES[language] if s not in avoid] or list(SENTENCES[language])
    order = rng.permutation(len(pool))
    limit = int(max_seconds * sample_rate)
    best = None
    for scale in (1.0, 1.2, 1.4):
        for i in order:
            audio = speak(pool[i], speaker, language, sample_rate, scale)
            if len(audio) <= limit:
                return pool[i], audio
            if best is None or len(audio) < len(best[1]):
                best = (pool[i], audio)
    text, audio = best
    log.warning("no %s sentence fits %.2fs for %s; cutting %r", language, max_seconds, speaker.id, text)
    audio = audio[:limit].copy()
    fade = min(len(audio), int(0.02 * sample_rate))
    audio[len(audio) - fade:] *= np.linspace(1.0, 0.0, fade)
    return text, audio
